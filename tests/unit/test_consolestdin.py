"""
The console on standard input (C{--stdin}) when standard output is not read:
commands wait instead of their replies piling up.
"""

from __future__ import annotations

from consolefakes import makeOperations
from twisted.internet.testing import StringTransport

from vtwisted.console import CommandInterpreter
from vtwisted.consolelines import MAX_LINE
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


def test_endOfInputRunsALastLineWithoutItsNewline() -> None:
    """A last command without a newline runs at the end of input, as with vde_switch."""
    console, transport = connected()
    console.dataReceived(b"vlan/create 9\nvlan/print 9")
    assert transport.value() == b"1000 Success\n"
    console.readConnectionLost()
    assert transport.value().endswith(b"VLAN 0009\n.\n1000 Success\n")


def test_endOfInputWhilePausedRunsTheWaitingCommands() -> None:
    """Commands read before standard output filled up still run when input ends."""
    console, transport = connected()
    console.pauseProducing()
    console.dataReceived(b"vlan/create 10\nvlan/print 10\n")
    console.readConnectionLost()
    assert transport.value() == (b"1000 Success\n0000 DATA END WITH '.'\nVLAN 0010\n.\n"
                                 b"1000 Success\n")
    assert transport.disconnecting


TOO_LONG = b"1007 Argument list too long\n"


def test_tooLongLineBetweenCommandsInOneRead() -> None:
    """
    A line over MAX_LINE between two commands of the same read is answered
    1007 once, and the commands after it still run.
    """
    console, transport = connected()
    console.dataReceived(b"vlan/create 5\n" + b"x" * (MAX_LINE + 1) + b"\nvlan/create 6\n"
                         b"vlan/print 6\n")
    assert transport.value() == (b"1000 Success\n" + TOO_LONG + b"1000 Success\n"
                                 b"0000 DATA END WITH '.'\nVLAN 0006\n.\n1000 Success\n")


def test_tooLongLineArrivingInPiecesIsSkippedUpToItsNewline() -> None:
    """
    A line over MAX_LINE whose newline comes in a later read is answered
    1007 once, as soon as it is too long; the rest of it, however many reads
    it takes, never runs as a command, and what follows its newline does.
    """
    console, transport = connected()
    console.dataReceived(b"vlan/create 5\n" + b"x" * (MAX_LINE + 1))
    assert transport.value() == b"1000 Success\n" + TOO_LONG
    transport.clear()
    console.dataReceived(b"y" * 70000)
    console.dataReceived(b"vlan/create 9")
    assert transport.value() == b""
    console.dataReceived(b"\nvlan/create 6\n")
    assert transport.value() == b"1000 Success\n"
    assert console.interpreter.execute("vlan/print 9").text.endswith("1006 No such device "
                                                                     "or address\n")


def test_tooLongLineGetsThePromptOnATerminal() -> None:
    """On a terminal the 1007 answer is followed by the prompt, as any reply is."""
    console = StdinConsole(CommandInterpreter(makeOperations()[0]), prompt=True)
    transport = StringTransport()
    console.makeConnection(transport)
    transport.clear()
    console.dataReceived(b"z" * (MAX_LINE + 1) + b"\n")
    assert transport.value() == TOO_LONG + b"vde$ "


def test_pausedReadLongerThanALineLosesNoCommand() -> None:
    """
    Whole commands waiting while standard output is full are never taken for
    a too-long line, however many bytes they add up to.
    """
    console, transport = connected()
    console.pauseProducing()
    console.dataReceived(b"".join(b"vlan/create %d\n" % n for n in range(1, 501)))
    assert transport.value() == b""
    console.resumeProducing()
    assert transport.value() == b"1000 Success\n" * 500
