"""Keepalive pings, idle timeouts and the incomplete-frame timeout, by one shared sweep."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.sweep import KeepaliveSettings, Sweeper
from msrpc.wire import PING, PONG, FrameParser, encode_frame


def connected(sweeper: Sweeper) -> tuple[RpcProtocol, StringTransport]:
    transport = StringTransport()
    protocol = RpcProtocol(ProtocolSettings(), sweeper=sweeper)
    protocol.makeConnection(transport)
    return protocol, transport


def sent_types(transport: StringTransport) -> list[int]:
    frames: list[tuple] = []
    FrameParser(lambda *f: frames.append(f)).feed(transport.value())
    transport.clear()
    return [f[0] for f in frames]


class SweepTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_silent_peer_is_pinged_after_the_ping_interval(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(ping_interval=10, idle_timeout=30))
        protocol, transport = connected(sweeper)
        self.clock.advance(7.5)
        self.assertEqual(sent_types(transport), [])
        self.clock.advance(2.5)
        self.assertEqual(sent_types(transport), [PING])
        self.clock.advance(2.5)
        self.assertEqual(sent_types(transport), [])  # one ping per interval, not per tick

    def test_pong_keeps_the_connection_open(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(ping_interval=10, idle_timeout=30))
        protocol, transport = connected(sweeper)
        for _ in range(10):
            self.clock.advance(10)
            protocol.dataReceived(encode_frame(PONG, 1, 2, 0))
        self.assertFalse(transport.disconnecting)

    def test_silent_peer_is_dropped_after_the_idle_timeout(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, transport = connected(sweeper)
        self.clock.advance(15)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_activity_resets_the_idle_clock(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, transport = connected(sweeper)
        for _ in range(10):
            self.clock.advance(10)
            protocol.dataReceived(encode_frame(PING, 1, 2, 0))
        self.assertFalse(transport.disconnecting)

    def test_trickling_peer_is_dropped_after_the_frame_timeout(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=300, frame_timeout=10))
        protocol, transport = connected(sweeper)
        frame = encode_frame(PING, 1, 2, 0, b"x" * 100)
        for i in range(12):  # one byte a second: active, but the frame never completes
            protocol.dataReceived(frame[i:i + 1])
            self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_steady_traffic_of_complete_frames_is_not_dropped(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(frame_timeout=10))
        protocol, transport = connected(sweeper)
        frame = encode_frame(PING, 1, 2, 0)
        for _ in range(40):  # always a partial frame buffered, but frames keep completing
            protocol.dataReceived(frame + frame[:5])
            protocol.dataReceived(frame[5:])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)

    def test_the_sweep_stops_when_the_last_connection_goes(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        protocol, _ = connected(sweeper)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timeouts_configured_means_no_sweep(self) -> None:
        sweeper = Sweeper(self.clock, KeepaliveSettings(frame_timeout=0, write_timeout=0))
        connected(sweeper)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _NoCalls:
    """A dispatcher that is never asked anything: marks the protocol as a server's."""

    def request_received(self, *args: object) -> None:
        raise AssertionError("no request expected")

    def cancel_received(self, *args: object) -> None:
        pass

    def connection_lost(self, *args: object) -> None:
        pass


class _TurnClock(Clock):
    """A Clock on which ``callLater(0, ...)`` waits for the next turn (``turn()``), as on
    a reactor, instead of running within the same ``advance``."""

    TURN = 1e-6

    def callLater(self, delay, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        return super().callLater(delay or self.TURN, f, *args, **kwargs)

    def turn(self) -> None:
        self.advance(self.TURN)


class SlicedSweepTests(TestCase):
    """Many connections are checked a slice at a time, the reactor served in between."""

    def setUp(self) -> None:
        self.clock = _TurnClock()
        self.sweeper = Sweeper(self.clock, KeepaliveSettings(idle_timeout=20))
        self.sweeper.slice = 2
        self.connections = [connected(self.sweeper) for _ in range(5)]
        self.transports = [transport for _, transport in self.connections]

    def closed(self) -> int:
        return sum(t.disconnecting for t in self.transports)

    def test_each_slice_runs_in_its_own_turn_of_the_reactor(self) -> None:
        self.clock.advance(20)
        self.assertEqual(self.closed(), 2)
        self.clock.turn()
        self.assertEqual(self.closed(), 4)
        self.clock.turn()
        self.assertEqual(self.closed(), 5)

    def test_connections_gone_during_a_cycle_are_skipped(self) -> None:
        self.clock.advance(20)
        protocol = self.connections[3][0]
        protocol.connectionLost(None)  # went away between two slices
        self.clock.turn()
        self.assertFalse(self.transports[3].disconnecting)
        self.clock.turn()
        self.assertEqual(self.closed(), 4)

    def test_stopping_cancels_the_rest_of_a_cycle(self) -> None:
        self.clock.advance(20)
        self.sweeper.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.closed(), 2)


class BackPressureTimeoutTests(TestCase):
    """While we stopped reading a peer ourselves, only the write timeout runs."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def server_side(self, settings: KeepaliveSettings) -> tuple[RpcProtocol, StringTransport]:
        transport = StringTransport()
        protocol = RpcProtocol(ProtocolSettings(), _NoCalls(), Sweeper(self.clock, settings))
        protocol.makeConnection(transport)
        return protocol, transport

    def closed_because(self) -> list[str]:
        return [formatEvent(e) for e in self.events if "closing connection" in
                e.get("log_format", "")]

    def test_half_read_frame_of_a_peer_we_paused_is_not_a_trickle(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(frame_timeout=10, write_timeout=60))
        protocol.dataReceived(encode_frame(PING, 1, 2, 0, b"x" * 100)[:40])
        protocol.pauseProducing()  # our replies fill its buffer: we stop reading
        self.clock.pump([1] * 50)
        self.assertFalse(transport.disconnecting)

    def test_peer_we_paused_is_not_closed_as_idle(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(idle_timeout=20, write_timeout=60))
        protocol.pauseProducing()
        self.clock.pump([1] * 50)
        self.assertFalse(transport.disconnecting)

    def test_peer_leaving_replies_unread_is_closed_after_the_write_timeout(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(frame_timeout=10, write_timeout=20))
        protocol.pauseProducing()
        self.clock.pump([1] * 19)
        self.assertFalse(transport.disconnecting)
        self.clock.pump([1] * 6)  # within the timeout plus two ticks (2.5 s each)
        self.assertTrue(transport.disconnecting)
        [line] = self.closed_because()
        self.assertIn("peer stopped reading its replies for 2", line)

    def test_a_buffer_that_drains_restarts_the_write_timeout(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(frame_timeout=10, write_timeout=20))
        for _ in range(5):  # 15 s unread, drained, and again: slow, but reading
            protocol.pauseProducing()
            self.clock.pump([1] * 15)
            protocol.resumeProducing()
            self.clock.pump([0.5])
        self.assertFalse(transport.disconnecting)

    def test_pause_and_resume_between_two_sweeps_still_restarts_the_clocks(self) -> None:
        protocol, transport = self.server_side(KeepaliveSettings(idle_timeout=20))
        self.clock.pump([1] * 18)
        protocol.pauseProducing()  # briefly: the sweep never sees it paused
        protocol.resumeProducing()
        self.clock.pump([1] * 10)
        self.assertFalse(transport.disconnecting)

    def test_frame_timeout_runs_again_once_reading_resumes(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(frame_timeout=10, write_timeout=60))
        protocol.dataReceived(encode_frame(PING, 1, 2, 0, b"x" * 100)[:40])
        protocol.pauseProducing()
        self.clock.pump([1] * 30)
        protocol.resumeProducing()  # the rest of the frame never comes
        self.clock.pump([1] * 15)
        self.assertTrue(transport.disconnecting)
        self.assertIn("a frame stayed incomplete", self.closed_because()[0])

    def test_zero_write_timeout_never_closes_a_paused_peer(self) -> None:
        protocol, transport = self.server_side(
            KeepaliveSettings(frame_timeout=10, write_timeout=0))
        protocol.pauseProducing()
        self.clock.pump([1] * 1000)
        self.assertFalse(transport.disconnecting)

    def test_client_side_names_its_requests(self) -> None:
        protocol, transport = connected(Sweeper(self.clock, KeepaliveSettings(write_timeout=8)))
        protocol.pauseProducing()
        self.clock.pump([1] * 12)
        self.assertTrue(transport.disconnecting)
        self.assertIn("stopped reading its requests", self.closed_because()[0])
