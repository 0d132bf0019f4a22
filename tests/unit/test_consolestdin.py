"""
The console on standard input (C{--stdin}) when standard output is not read:
commands wait instead of their replies piling up.
"""

from __future__ import annotations

from consolefakes import makeOperations
from twisted.internet.testing import StringTransport

from vtwisted.console import CommandInterpreter
from vtwisted.consolestdin import StdinConsole


def connected() -> tuple[StdinConsole, StringTransport]:
    console = StdinConsole(CommandInterpreter(makeOperations()[0]), prompt=False)
    transport = StringTransport()
    console.makeConnection(transport)
    return console, transport


def test_consoleIsTheProducerOfItsOutput() -> None:
    """Standard output can pause the console: it registers itself, streaming."""
    console, transport = connected()
    assert transport.producer is console and transport.streaming


def test_pausedConsoleRunsNothingAndStopsReading() -> None:
    """While standard output is full, lines wait and standard input is not read."""
    console, transport = connected()
    console.pauseProducing()
    console.dataReceived(b"vlan/create 5\nvlan/print 5\n")
    assert transport.value() == b"" and transport.producerState == "paused"
    console.resumeProducing()
    assert transport.producerState == "producing"
    assert transport.value() == (b"1000 Success\n0000 DATA END WITH '.'\nVLAN 0005\n.\n"
                                 b"1000 Success\n")


def test_pauseInTheMiddleOfAReadKeepsTheRestInOrder() -> None:
    """A pause after one command of a read holds the next ones, run in order later."""
    console, transport = connected()
    transport.registerProducer = lambda *a: None  # type: ignore[method-assign]
    written: list[bytes] = []

    def write(data: bytes) -> None:
        written.append(data)
        if len(written) == 1:
            console.pauseProducing()

    transport.write = write  # type: ignore[method-assign]
    console.dataReceived(b"vlan/create 6\nvlan/create 7\nvlan/print 7\n")
    assert written == [b"1000 Success\n"]
    console.resumeProducing()
    assert b"".join(written) == (b"1000 Success\n1000 Success\n0000 DATA END WITH '.'\n"
                                 b"VLAN 0007\n.\n1000 Success\n")


def test_debugEventsAreDroppedWhilePaused() -> None:
    """Debug events for an unread standard output are counted, not queued."""
    console, transport = connected()
    console.pauseProducing()
    console.debugLine("event 1\n")
    console.debugLine("event 2\n")
    assert transport.value() == b"" and console.debugDropped == 2
    console.resumeProducing()
    console.debugLine("event 3\n")
    assert transport.value() == b"event 3\n"


def test_standardOutputClosedLetsWaitingCommandsRun() -> None:
    """If standard output goes away while paused, the waiting commands still run."""
    console, transport = connected()
    console.pauseProducing()
    console.dataReceived(b"vlan/create 8\n")
    console.stopProducing()
    console.writeConnectionLost()
    assert transport.producerState == "producing"
    assert "VLAN 0008" in console.interpreter.execute("vlan/print 8").text


def test_endOfInputUnregistersSoTheLastRepliesFlushAndClose() -> None:
    """At the end of input the console stops being a producer and closes after writing."""
    console, transport = connected()
    console.readConnectionLost()
    assert transport.producer is None and transport.disconnecting
