"""
One periodic sweep over all connections of a server or client: keepalive pings, idle
timeouts, the incomplete-frame timeout and the write timeout, instead of a timer per
connection.

The protocol only bumps counters on the hot path (``rx_count``, the parser's ``frames``,
``pauses``); the sweep compares them with what it saw last time, so reading data costs no
clock call.

While we have stopped reading a peer ourselves (back-pressure: our writes to it pile up
unread), its silence and its half-read frame are our doing, so the idle and frame timeouts
wait; the write timeout bounds that state instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from msrpc.protocol import RpcProtocol


@dataclass(frozen=True)
class KeepaliveSettings:
    """
    ``ping_interval``: send a ping after this long without hearing from the peer (0: never;
    clients ping, servers only answer).  ``idle_timeout``: close after this long without a
    byte from the peer (0: never).  ``frame_timeout``: close a peer whose frame stays
    incomplete this long (a trickling peer must not hold memory or a slot for ever).
    ``write_timeout``: close a peer that leaves what we wrote unread this long (the
    transport's buffer stayed full, so we stopped reading from it meanwhile; 0: never).
    """

    ping_interval: float = 0.0
    idle_timeout: float = 0.0
    frame_timeout: float = 30.0
    write_timeout: float = 60.0

    @property
    def tick(self) -> Optional[float]:
        periods = [p for p in (self.ping_interval, self.idle_timeout, self.frame_timeout,
                               self.write_timeout) if p]
        if not periods:
            return None
        return max(0.05, min(periods) / 4)


CLIENT_KEEPALIVE = KeepaliveSettings(ping_interval=30.0, idle_timeout=90.0, frame_timeout=30.0)
SERVER_KEEPALIVE = KeepaliveSettings(ping_interval=0.0, idle_timeout=300.0, frame_timeout=30.0)


class _Seen:
    __slots__ = ("rx", "frames", "pauses", "heard_at", "frame_progress_at", "pinged_at",
                 "paused_since")

    def __init__(self, now: float, rx: int, frames: int, pauses: int) -> None:
        self.rx = rx
        self.frames = frames
        self.pauses = pauses
        self.heard_at = now
        self.frame_progress_at = now
        self.pinged_at = now
        self.paused_since = now


class Sweeper:
    log = Logger()

    #: Connections checked in one go (about 0.35 ms of work).
    slice = 1000

    def __init__(self, clock: IReactorTime, settings: KeepaliveSettings) -> None:
        self.clock = clock
        self.settings = settings
        self._seen: dict["RpcProtocol", _Seen] = {}
        self._loop: Optional[LoopingCall] = None
        #: The connections of the cycle under way, and the call of its next slice.
        self._cycle: list[tuple["RpcProtocol", _Seen]] = []
        self._slice_call: Optional[IDelayedCall] = None

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, protocol: "RpcProtocol") -> None:
        tick = self.settings.tick
        if tick is None:
            return
        self._seen[protocol] = _Seen(self.clock.seconds(), protocol.rx_count,
                                     protocol._parser.frames, protocol.pauses)
        if self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(tick, now=False)

    def remove(self, protocol: "RpcProtocol") -> None:
        self._seen.pop(protocol, None)
        if not self._seen:
            self.stop()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        call, self._slice_call = self._slice_call, None
        if call is not None and call.active():
            call.cancel()
        self._cycle = []

    def sweep(self) -> None:
        """Check every connection once, ``slice`` at a time: between slices the reactor
        serves I/O, so 10,000 connections never hold it for more than a fraction of a
        millisecond at once.  A cycle still running when the next tick comes (a very busy
        machine) lets that tick pass."""
        if self._slice_call is not None:
            return
        self._cycle = list(self._seen.items())
        self._sweep_slice(0)

    def _sweep_slice(self, start: int) -> None:
        self._slice_call = None
        end = start + self.slice
        now = self.clock.seconds()
        s = self.settings
        current = self._seen
        for protocol, seen in self._cycle[start:end]:
            if current.get(protocol) is not seen:
                continue  # gone since the cycle began
            parser = protocol._parser
            if protocol.paused or protocol.pauses != seen.pauses:
                self._held(protocol, seen, now)
                continue
            if protocol.rx_count != seen.rx:
                seen.rx = protocol.rx_count
                seen.heard_at = now
            if not parser.buffered or parser.frames != seen.frames:
                seen.frames = parser.frames
                seen.frame_progress_at = now
            silent = now - seen.heard_at
            if s.idle_timeout and silent >= s.idle_timeout:
                self.log.info("closing connection {peer}: silent for {silent:.1f}s",
                              peer=protocol.peer, silent=silent)
                current.pop(protocol, None)
                protocol.abort()
            elif s.frame_timeout and now - seen.frame_progress_at >= s.frame_timeout:
                self.log.warn("closing connection {peer}: a frame stayed incomplete for "
                              "{stuck:.1f}s ({buffered} bytes)", peer=protocol.peer,
                              stuck=now - seen.frame_progress_at, buffered=parser.buffered)
                current.pop(protocol, None)
                protocol.abort()
            elif (s.ping_interval and silent >= s.ping_interval
                  and now - seen.pinged_at >= s.ping_interval):
                seen.pinged_at = now
                protocol.send_ping()
        if end < len(self._cycle):
            self._slice_call = self.clock.callLater(0, self._sweep_slice, end)
            return
        self._cycle = []
        if not self._seen:
            self.stop()

    def _held(self, protocol: "RpcProtocol", seen: _Seen, now: float) -> None:
        """A peer we stopped reading (now or since the last sweep): restart its idle and
        frame clocks, and close it once it has left our writes unread too long."""
        if protocol.pauses != seen.pauses:  # a new pause (the buffer drained in between)
            seen.pauses = protocol.pauses
            seen.paused_since = now
        seen.rx, seen.frames = protocol.rx_count, protocol._parser.frames
        seen.heard_at = seen.frame_progress_at = now
        timeout = self.settings.write_timeout
        if protocol.paused and timeout and now - seen.paused_since >= timeout:
            self.log.warn("closing connection {peer}: peer stopped reading its {what} for "
                          "{stuck:.1f}s", peer=protocol.peer, stuck=now - seen.paused_since,
                          what="replies" if protocol.dispatcher is not None else "requests")
            self._seen.pop(protocol, None)
            protocol.abort()
