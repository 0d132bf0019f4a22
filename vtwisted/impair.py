"""
Link impairments: delay, jitter, loss, duplication, bit errors and a rate
limit, what labs use C{wirefilter} (vde2) or Linux's C{netem} for, on the
frames leaving a port and on those arriving at it, set per port in its spec
(C{delay=50:loss=1:indelay=50}) or at run time (C{port/impair}).

Theory of operation
-------------------
An impaired port's three send functions (L{vtwisted.switchport.SwitchPort}
C{send}, C{sendVnet}, C{sendConverted}) are wrapped by one
L{ImpairedSender}, which decides each frame's fate as it leaves the switch.
Arriving frames that a port's C{in} options impair pass another
L{ImpairedSender} on their way into the switch's forwarding (its C{arrive}
and C{arriveVnet}), before the switch learns from them; the switch never
remembers routes from such a port, so no frame slips past. Each frame is
lost (counted as an C{impaired} drop; with C{burst}, losses come in runs of
that mean length, Gilbert's two-state model, as C{wirefilter -L}), or due at
a time, then sent once or twice, with random bits flipped at C{noise} bits
per megabyte (as C{wirefilter -n} does). The due time is the end of the
frame's transmission at C{rate} (a link busy with earlier frames makes it
wait, and a frame that would wait longer than C{queue} seconds is dropped as
C{busy}, as a full queue would), plus C{delay} and a uniform C{jitter};
frames never overtake each other. Where frames may be lost, duplicated or
damaged, an offload port's super-frames are cut into the frames they stand
for first, so that loss strikes wire-sized frames; noise strikes frames
whose checksums are complete (frames for plain ports are made before they
are impaired), so their receivers can tell, as on a real wire. Frames due
now go at once; the rest wait in one queue with one timer on the injected
clock, at most L{MAX_QUEUED_BYTES} of them (beyond that, as a full queue
would, frames are dropped as C{busy}: a peer flooding a delayed port cannot
fill the switch's memory). Ports without impairments are untouched: the
wrapping happens only when an impairment is set, so the forwarding path of
every other port costs nothing more than one attribute test for frames no
route takes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtwisted.wire.vnet import PLAIN_HEADER, VnetError, toFrames

#: The options, as specs and C{port/impair} name them.
KEYWORDS = ("delay", "jitter", "loss", "burst", "dup", "rate", "queue", "noise")
#: The same for the frames arriving at a port (C{indelay=}, C{inloss=}, ...).
IN_KEYWORDS = tuple("in" + key for key in KEYWORDS)
#: Both, as port types that sort their keywords list them.
ALL_KEYWORDS = KEYWORDS + IN_KEYWORDS
#: The most bytes one direction of a port holds back (delayed frames); the
#: frames that do not fit are dropped as C{busy}, as a full queue drops them.
MAX_QUEUED_BYTES = 64 << 20


@dataclass(frozen=True)
class Impairment:
    """
    What happens to a port's outgoing frames.

    @ivar delay: seconds added to every frame.
    @ivar jitter: at most this many seconds more or less, uniformly.
    @ivar loss: the probability of a frame being lost.
    @ivar duplicate: the probability of a frame being sent twice.
    @ivar rate: the link's speed in bits per second (0: unlimited).
    @ivar queue: the longest a frame may wait for the link, in seconds.
    @ivar noise: bits flipped per megabyte sent (C{wirefilter}'s noise).
    @ivar burst: the mean length of a run of lost frames (1: independent).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    rate: int = 0
    queue: float = 0.1
    noise: float = 0.0
    burst: float = 1.0

    def active(self) -> bool:
        """
        Whether anything happens to frames at all.
        """
        return bool(self.delay or self.jitter or self.loss or self.duplicate or self.rate
                    or self.noise)

    def describe(self) -> str:
        """
        C{delay 50 ms +-5 ms, loss 1%, rate 10000 kbit/s}, or C{none}.
        """
        parts = []
        if self.delay or self.jitter:
            parts.append(f"delay {self.delay * 1000:g} ms"
                         + (f" +-{self.jitter * 1000:g} ms" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}%"
                         + (f" in bursts of {self.burst:g}" if self.burst > 1 else ""))
        if self.duplicate:
            parts.append(f"dup {self.duplicate * 100:g}%")
        if self.noise:
            parts.append(f"noise {self.noise:g} bits/MB")
        if self.rate:
            parts.append(f"rate {self.rate / 1000:g} kbit/s (queue {self.queue * 1000:g} ms)")
        return ", ".join(parts) or "none"

    @classmethod
    def fromOptions(cls, options: dict[str, str], prefix: str = "") -> Impairment:
        """
        Read C{delay=MS}, C{jitter=MS}, C{loss=PERCENT}, C{burst=N},
        C{dup=PERCENT}, C{rate=KBIT}, C{queue=MS} and C{noise=BITS_PER_MB},
        each named with C{prefix} (C{in} for arriving frames); missing ones
        are off and other keys are ignored.

        @raise ValueError: a value is not a number or is out of range; the
            message names the option.
        """
        def number(key: str, low: float, high: float, default: float = 0) -> float:
            return _number(options, prefix + key, low, high, default)

        delay = number("delay", 0, 60000) / 1000
        jitter = number("jitter", 0, 60000) / 1000
        if jitter > delay:
            raise ValueError(f"{prefix}jitter must not exceed {prefix}delay "
                             "(frames are never sent early)")
        queue = number("queue", 1, 60000, 100) / 1000
        return cls(delay, jitter, number("loss", 0, 100) / 100,
                   number("dup", 0, 100) / 100,
                   int(number("rate", 0, 100_000_000) * 1000), queue,
                   number("noise", 0, 8_000_000),
                   number("burst", 1, 1_000_000, 1))


@dataclass(frozen=True)
class PortImpairment:
    """
    What happens to the frames leaving a port (what C{netem} on an
    interface does) and to those arriving at it (C{indelay=}, C{inloss=},
    ...), so that one port can stand for a whole impaired link, either way.
    """

    leaving: Impairment = Impairment()
    arriving: Impairment = Impairment()

    @classmethod
    def fromOptions(cls, options: dict[str, str]) -> PortImpairment:
        """
        Read the options of L{KEYWORDS} (frames leaving) and
        L{IN_KEYWORDS} (frames arriving).

        @raise ValueError: an unknown option, or a bad value (see
            L{Impairment.fromOptions}).
        """
        unknown = set(options) - set(KEYWORDS) - set(IN_KEYWORDS)
        if unknown:
            raise ValueError(f"unknown impairment {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(KEYWORDS)}, and the same with "
                             "in in front for arriving frames)")
        return cls(Impairment.fromOptions(options), Impairment.fromOptions(options, "in"))

    @classmethod
    def fromText(cls, text: str) -> PortImpairment:
        """
        Read the console's form, C{delay=50 loss=1 indelay=50} (or C{off},
        which impairs nothing).

        @raise ValueError: saying what is wrong.
        """
        words = text.split()
        if words == ["off"]:
            return cls()
        options = {}
        for word in words:
            key, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"{word!r} is not KEY=VALUE (or give off)")
            options[key] = value
        if not options:
            raise ValueError("give impairments (delay=MS jitter=MS loss=PERCENT burst=N "
                             "dup=PERCENT rate=KBIT queue=MS noise=BITS_PER_MB, and the "
                             "same with in in front for arriving frames) or off")
        return cls.fromOptions(options)


def _number(options: dict[str, str], key: str, low: float, high: float,
            default: float = 0) -> float:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{key}={text} is out of range ({low:g} to {high:g})")
    return value


class ImpairedSender:
    """
    The queue and timer of one impaired direction of a port.
    """

    def __init__(self, impairment: Impairment, clock: Any, port: Any,
                 direction: str = "leaving", rng: random.Random | None = None) -> None:
        """
        @param direction: C{leaving} or C{arriving}, for the drop reasons.
        """
        self.impairment = impairment
        self.clock = clock
        self.port = port
        self.random = rng or random.Random()
        self.queue: deque[tuple[float, Callable[[Any], None], Any]] = deque()
        self._timer: Any = None
        #: Bytes waiting in L{queue}, at most L{MAX_QUEUED_BYTES}.
        self.queuedBytes = 0
        self._linkFree = 0.0
        self._lastDue = 0.0
        #: Frames sent with bits flipped.
        self.damagedFrames = 0
        self._inBurst = False
        # drop details, built once: drops are counted per frame
        what = f"{direction}: {impairment.describe()}"
        self._lost = f"lost on purpose ({what})"
        self._full = f"the rate-limited link's queue is full ({what})"
        self._held = (f"{MAX_QUEUED_BYTES >> 20} MB of frames are held back already "
                      f"({what})")

    def describe(self) -> str:
        """
        The impairment, and how many frames it damaged if it adds noise.
        """
        text = self.impairment.describe()
        if self.impairment.noise:
            text += f", {self.damagedFrames} frames damaged"
        return text

    def wrap(self, send: Callable[[Any], None], vnetPackets: bool = False
             ) -> Callable[[Any], None]:
        """
        C{send}, impaired.  If it takes virtio-net packets and frames may
        be lost or duplicated, a super-frame is cut into the frames it stands
        for first, so that loss and duplication strike wire-sized frames as
        on a real link, not 64 KB at a time.
        """
        submit = self.submit
        impairment = self.impairment
        if vnetPackets and (impairment.loss or impairment.duplicate or impairment.noise):
            noisy = bool(impairment.noise)

            def impairedFrames(packet: Any) -> None:
                if not packet[1] and not (noisy and packet[0]):
                    submit(send, packet, 10)
                    return
                try:
                    frames = toFrames(packet)
                except VnetError as e:
                    self.port.dropped("malformed", str(e))
                    return
                for frame in frames:
                    submit(send, PLAIN_HEADER + frame, 10)

            return impairedFrames
        skip = 10 if vnetPackets else 0

        def impaired(data: Any) -> None:
            submit(send, data, skip)

        return impaired

    def submit(self, send: Callable[[Any], None], data: Any, skip: int = 0) -> None:
        """
        Decide the fate of one frame (or virtio-net packet, its header the
        first C{skip} bytes) for C{send}.
        """
        impairment, rng = self.impairment, self.random
        if impairment.loss and self._lose(rng):
            self.port.dropped("impaired", self._lost)
            return
        if self.queuedBytes + len(data) > MAX_QUEUED_BYTES:
            self.port.dropped("busy", self._held)
            return
        if impairment.noise:
            data = self._damaged(data, skip)
        now = self.clock.seconds()
        due = now
        if impairment.rate:
            start = max(now, self._linkFree)
            if start - now > impairment.queue:
                self.port.dropped("busy", self._full)
                return
            due = self._linkFree = start + len(data) * 8 / impairment.rate
        due += impairment.delay
        if impairment.jitter:
            due += rng.uniform(-impairment.jitter, impairment.jitter)
        due = max(due, self._lastDue)
        self._lastDue = due
        copies = 2 if impairment.duplicate and rng.random() < impairment.duplicate else 1
        if due <= now and not self.queue:
            for _ in range(copies):
                send(data)
            return
        self.queuedBytes += len(data) * copies
        if not isinstance(data, bytes):
            data = bytes(data)
        for _ in range(copies):
            self.queue.append((due, send, data))
        if self._timer is None:
            self._timer = self.clock.callLater(max(due - now, 0), self._release)

    def _lose(self, rng: random.Random) -> bool:
        """
        Whether the next frame is lost: independently, or (with C{burst})
        by Gilbert's model, whose lost state lasts C{burst} frames on
        average and which is in it a C{loss} share of the time.
        """
        loss, burst = self.impairment.loss, self.impairment.burst
        if burst <= 1 or loss >= 1:
            return rng.random() < loss
        if self._inBurst:
            self._inBurst = rng.random() < 1 - 1 / burst
        else:
            self._inBurst = rng.random() < loss / (burst * (1 - loss))
        return self._inBurst

    def _damaged(self, data: Any, skip: int) -> Any:
        """
        C{data} with bits flipped after its first C{skip} bytes: as many as
        C{noise} bits per megabyte makes for its length, on average.
        """
        rng = self.random
        expected = self.impairment.noise * (len(data) - skip) / 1_000_000
        flips = int(expected) + (rng.random() < expected % 1)
        if not flips or len(data) <= skip:
            return data
        damaged = bytearray(data)
        for _ in range(flips):
            damaged[rng.randrange(skip, len(damaged))] ^= 1 << rng.randrange(8)
        self.damagedFrames += 1
        return bytes(damaged)

    def _release(self) -> None:
        self._timer = None
        queue, now = self.queue, self.clock.seconds()
        while queue and queue[0][0] <= now:
            _, send, data = queue.popleft()
            self.queuedBytes -= len(data)
            send(data)
        if queue:
            self._timer = self.clock.callLater(max(queue[0][0] - now, 0), self._release)

    def stop(self) -> None:
        """
        Forget the frames still waiting and the timer, and the link time
        they took: the next frame waits for none of them.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.queue.clear()
        self.queuedBytes = 0
        self._linkFree = self._lastDue = 0.0
