"""
Connections beyond a server's ``max_connections``.

Each is given ``within`` seconds: requests arriving meanwhile are answered 503 (nothing
ran, so the client may retry elsewhere; hanging up at once would look like a lost
connection, which a client may not retry), then the connection is closed once those
replies are written; a peer that sends nothing is aborted when its time is up.  While ``slots`` of them are open the
listening port stops accepting (``IPushProducer.pauseProducing``, as Twisted's
``policies`` throttle reading), so further connections wait in the kernel's listen backlog
instead of holding descriptors.  Open sockets stay within the limit plus ``slots`` plus
one accept batch (at most the listen backlog), however many peers try to connect.

All their deadlines share one timer (``msrpc.deadline``); nothing here runs for a server
under its limit.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger

from msrpc.deadline import Deadlines
from msrpc.protocol import ProtocolSettings, RpcProtocol

#: Over-limit connections open at once before accepting pauses.
DEFAULT_SLOTS = 16
#: Seconds an over-limit connection has to send a request (answered 503) before it is closed.
DEFAULT_WITHIN = 1.0
#: Seconds between two log lines counting the refused connections while it lasts.
REPORT_EVERY = 10.0


class Overflow:
    """
    The over-limit connections of one server, and their dispatcher.  ``listener`` is the
    listening port, set once it listens; a port that cannot pause (not an
    ``IPushProducer``) still has every over-limit connection closed within ``within``
    seconds, but not their number bounded.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, settings: ProtocolSettings, limit: int,
                 slots: int = DEFAULT_SLOTS, within: float = DEFAULT_WITHIN) -> None:
        if slots < 1 or not within > 0:
            raise ValueError(f"overflow needs slots >= 1 and within > 0, got {slots}, "
                             f"{within}")
        self.clock = clock
        self.settings = settings
        self.limit = limit
        self.slots = slots
        self.within = within
        self.listener: Optional[Any] = None
        self._open: Deadlines[RpcProtocol] = Deadlines(clock, self._expired)
        #: Connections answered 503, to be closed once that reply is written.
        self._answered: set[RpcProtocol] = set()
        self._paused = False
        #: Over-limit connections accepted, and times accepting paused, since the last
        #: report (one log line per ``REPORT_EVERY`` seconds, not one per connection).
        self.refused = 0
        self.pauses = 0
        self._report: Optional[IDelayedCall] = None

    def __len__(self) -> int:
        return len(self._open)

    @property
    def paused(self) -> bool:
        return self._paused

    def accept(self, addr: Any) -> RpcProtocol:
        """A protocol for a connection over the limit, closed within ``within`` seconds."""
        if self._report is None:
            self.log.warn("connection limit ({limit}) reached: further connections get 503 "
                          "or are closed within {within:g}s, and accepting pauses while "
                          "{slots} of them are open", limit=self.limit, within=self.within,
                          slots=self.slots)
            self._report = self.clock.callLater(REPORT_EVERY, self._report_refused)
        self.refused += 1
        protocol = RpcProtocol(self.settings, self)
        protocol.on_lost = self._lost
        self._open.add(protocol, self.clock.seconds() + self.within)
        if len(self._open) >= self.slots:
            self._pause()
        return protocol

    def room(self) -> None:
        """A connection under the limit closed: the next one accepted is served."""
        self._resume()

    # ------------------------------------------------------------------ as a dispatcher

    def request_received(self, protocol: RpcProtocol, rid: int, comp: int, ser: int,
                         body: bytes) -> None:
        protocol.refuse(rid, ser, 503, msg="server has too many connections")
        if protocol not in self._answered:
            # Close on the timer's next run, after the replies of this read are written.
            self._answered.add(protocol)
            self._open.add(protocol, self.clock.seconds())

    def cancel_received(self, protocol: RpcProtocol, rid: int) -> None:
        pass

    def connection_lost(self, protocol: RpcProtocol) -> None:
        pass

    # ------------------------------------------------------------------ closing

    def _expired(self, protocol: RpcProtocol) -> None:
        if protocol in self._answered:
            # Answered: let the 503 out, but abort if the peer has not let go in time.
            self._answered.discard(protocol)
            protocol.transport.loseConnection()
            if protocol.connected:
                self._open.add(protocol, self.clock.seconds() + self.within)
        else:
            protocol.abort()  # silent for ``within`` seconds: its descriptor is worth more

    def _lost(self, protocol: RpcProtocol) -> None:
        self._open.discard(protocol)
        self._answered.discard(protocol)
        if len(self._open) < self.slots:
            self._resume()

    def _report_refused(self) -> None:
        """Every ``REPORT_EVERY`` seconds while connections are refused: how many."""
        if not self.refused:
            self._report = None  # a quiet period: the next refusal warns again
            return
        self.log.warn("connection limit ({limit}): {refused} connections refused in the "
                      "last {every:g}s, accepting paused {pauses} times",
                      limit=self.limit, refused=self.refused, every=REPORT_EVERY,
                      pauses=self.pauses)
        self.refused = self.pauses = 0
        self._report = self.clock.callLater(REPORT_EVERY, self._report_refused)

    def _pause(self) -> None:
        listener = self.listener
        if not self._paused and IPushProducer.providedBy(listener):
            self._paused = True
            self.pauses += 1
            listener.pauseProducing()

    def _resume(self) -> None:
        if self._paused and self.listener is not None:
            self._paused = False
            self.listener.resumeProducing()

    def close_all(self) -> None:
        """Drop every over-limit connection now (the server is stopping)."""
        for protocol in self._open:
            protocol.abort()
        self._open.clear()
        self._answered.clear()
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
