"""
The capture port's size limit (C{maxsize=}) and ring of files (C{files=}):
what is kept, what is dropped and counted, and the files tcpdump reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from vtwisted.ports import pcap as pcapport
from vtwisted.spec import PortSpec, SpecError
from vtwisted.switch import Switch
from vtwisted.testing import FakeLink, frame, mac, plug
from vtwisted.wire import pcap


def _start(spec: str) -> pcapport.PcapService:
    service = pcapport.makeService(Switch(), PortSpec(spec), Clock())
    assert isinstance(service, pcapport.PcapService)
    service.startService()
    return service


def _captured(spec: str, count: int) -> pcapport.PcapService:
    """
    A started capture port that has been sent C{count} numbered frames.
    """
    service = _start(spec)
    assert service.link is not None
    for n in range(count):
        service.link.sendFrame(_numbered(n))
    return service


def _numbered(n: int) -> bytes:
    return frame(b"\xff" * 6, mac(1), payload=n.to_bytes(4, "big") + bytes(996))


def _numbers(path: Path) -> list[int]:
    return [int.from_bytes(kept[14:18], "big") for _, kept, _ in pcap.readRecords(
        path.read_bytes())]


def test_aFullFileDropsAndCountsFrames(tmp_path: Path) -> None:
    """With maxsize= alone, the file stops growing at the limit; later frames are counted."""
    path = tmp_path / "lan.pcap"
    service = _captured(f"pcap:{path}:maxsize=1", 1200)
    assert service.link is not None
    port = service.link.port
    service.stopService()
    kept = _numbers(path)
    assert kept == list(range(len(kept))) and 900 < len(kept) < 1000
    assert path.stat().st_size <= 1000000
    assert port.counters.drops["busy"] == 1200 - len(kept)


def test_aRingKeepsTheNewestFiles(tmp_path: Path) -> None:
    """With files=3, the newest frames are in PATH, older ones in PATH.1 and PATH.2."""
    path = tmp_path / "lan.pcap"
    service = _captured(f"pcap:{path}:maxsize=1:files=3", 4500)
    link = service.link
    service.reactor.advance(1.5)
    assert service._flusher is not None and service._flusher.running, "still flushing"
    assert path.stat().st_size > pcap.FILE_HEADER_LENGTH, "the new file is flushed"
    service.stopService()
    files = [Path(f"{path}.2"), Path(f"{path}.1"), path]
    assert not Path(f"{path}.3").exists()
    numbers = [_numbers(f) for f in files]
    joined = [n for part in numbers for n in part]
    assert joined == list(range(joined[0], 4500)) and joined[0] > 0
    assert all(f.stat().st_size <= 1000000 for f in files)
    assert link is not None and link.frames == 4500


def test_filesNeedAMaximumSize(tmp_path: Path) -> None:
    """files= without maxsize= is refused with what to add."""
    with pytest.raises(SpecError, match="needs maxsize="):
        pcapport.makeService(Switch(), PortSpec(f"pcap:{tmp_path}/x:files=2"), Clock())


def test_aFileThatCannotBeWrittenDropsAndCountsFrames() -> None:
    """
    Writing to a full disk (C{/dev/full}, ENOSPC) raises nothing into the
    switch: frames are counted as C{busy} drops, the flush goes on every
    second, and the port stops cleanly.
    """
    service = _captured("pcap:/dev/full", 2000)
    assert service.link is not None
    port = service.link.port
    service.reactor.advance(2.5)
    assert service._flusher is not None and service._flusher.running
    service.stopService()
    assert port.counters.drops["busy"] > 900


def test_aRingThatCannotTurnTriesOnceASecond(tmp_path: Path, monkeypatch) -> None:
    """
    When the full file cannot be renamed (the switch runs as a user that
    may not rename it, EPERM), later frames are dropped and counted, with
    one log line naming the spec and the errno, and the rename is tried
    again once a second, not once per frame; once it works, the ring
    turns.
    """
    from twisted.logger import capturedLogs, formatEvent

    path = tmp_path / "lan.pcap"
    renames = []

    def refuse(source: str, target: str) -> None:
        if not Path(source).exists():
            raise FileNotFoundError(2, "No such file or directory", source)
        renames.append(source)
        raise PermissionError(1, "Operation not permitted", source)

    with capturedLogs() as events:
        service = _start(f"pcap:{path}:maxsize=1:files=3")
        monkeypatch.setattr(pcapport.os, "replace", refuse)
        assert service.link is not None
        for n in range(1500):
            service.link.sendFrame(_numbered(n))
        assert len(renames) == 1
        port = service.link.port
        assert port.counters.drops["busy"] == 1500 - len(_numbersAfterFlush(service, path))
        monkeypatch.undo()
        service.reactor.advance(1.5)
        service.link.sendFrame(_numbered(1500))
        service.stopService()
    logged = [formatEvent(event) for event in events]
    errors = [line for line in logged if "next capture file" in line and "errno" in line]
    assert len(errors) == 1 and f"pcap:{path}" in errors[0] and "errno 1" in errors[0], logged
    assert _numbers(path) == [1500] and Path(f"{path}.1").exists()


def _numbersAfterFlush(service: pcapport.PcapService, path: Path) -> list[int]:
    assert service.link is not None
    service.link.tick()
    return _numbers(path)


def _throughSwitch(spec: str, count: int) -> tuple[pcapport.PcapService, Any, Any]:
    """
    A started capture port, after a client port sent the switch C{count}
    numbered frames: the service, the capture's port and the client's.
    """
    switch = Switch()
    service = pcapport.makeService(switch, PortSpec(spec), Clock())
    assert isinstance(service, pcapport.PcapService)
    service.startService()
    client = plug(switch, FakeLink("client"))
    for n in range(count):
        switch.frameReceived(client, _numbered(n))
    assert service.link is not None
    return service, service.link.port, client


def test_aRingTurnsForFramesFromTheSwitch(tmp_path: Path) -> None:
    """
    Frames the switch hands the capture port (not the link directly) go
    to the next file of the ring once the first is full.
    """
    path = tmp_path / "lan.pcap"
    service, port, _ = _throughSwitch(f"pcap:{path}:maxsize=1:files=2", 2500)
    service.stopService()
    joined = _numbers(Path(f"{path}.1")) + _numbers(path)
    assert joined == list(range(joined[0], 2500)) and 0 < joined[0] < 1000
    assert port.counters.drops["busy"] == 0


def test_recordsLostWithAFailingFileAreCounted() -> None:
    """
    Records still waiting when a file that cannot be written is closed
    are counted as busy drops, the last log line counts no frame written,
    and the write error is logged once (no second line for the first
    drop).
    """
    from twisted.logger import capturedLogs, formatEvent

    with capturedLogs() as events:
        service, port, _ = _throughSwitch("pcap:/dev/full", 1500)  # 1.5 MB: one write fails
        service.reactor.advance(1)
        service.stopService()
    logged = [formatEvent(event) for event in events]
    assert port.counters.drops["busy"] == 1500, logged
    assert sum("errno 28" in line for line in logged) == 1, logged
    assert sum("dropped a frame" in line for line in logged) == 0, logged
    assert any("0 frames written to /dev/full (1500 dropped" in line for line in logged), logged


def test_framesWrittenAreCountedExactly(tmp_path: Path) -> None:
    """The last log line counts the frames the file holds."""
    from twisted.logger import capturedLogs, formatEvent

    path = tmp_path / "lan.pcap"
    with capturedLogs() as events:
        service, _, _ = _throughSwitch(f"pcap:{path}", 1700)
        service.stopService()
    logged = [formatEvent(event) for event in events]
    assert len(_numbers(path)) == 1700
    assert any(f"1700 frames written to {path}" in line for line in logged), logged
