"""RpcProtocol: multiplexing by request id, ping/pong, loss, bad frames, back-pressure."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import TestCase

from msrpc import compress
from msrpc.codec import MsgpackCodec
from msrpc.errors import ConnectionLost, DecodeError, NotFound, RemoteError
from msrpc.protocol import WRITE_APART, ProtocolSettings, RpcProtocol
from msrpc.wire import (
    CANCEL, HEADER_SIZE, PING, PONG, REQUEST, RESPONSE, FrameParser, Serializer,
    encode_frame,
)

MSGPACK = int(Serializer.MSGPACK)
codec = MsgpackCodec()


class FakeCall:
    def __init__(self, method: str = "m", args: Any = (), kwargs: Any = None,
                 meta: Any = None) -> None:
        self.service, self.method = "svc", method
        self.args, self.kwargs, self.meta = list(args), kwargs or {}, meta or {}
        self.results: list[Any] = []
        self.errors: list[Exception] = []

    def succeeded(self, data: Any) -> None:
        self.results.append(data)

    def failed(self, error: Exception) -> None:
        self.errors.append(error)


def frames_in(data: bytes) -> list[tuple]:
    frames: list[tuple] = []
    FrameParser(lambda *f: frames.append(f)).feed(data)
    return frames


def response(rid: int, payload: Any, comp: int = compress.NONE) -> bytes:
    return encode_frame(RESPONSE, comp, MSGPACK, rid,
                        compress.compress(comp, codec.encode(payload)))


class ClientSideTests(TestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.protocol = RpcProtocol(ProtocolSettings())
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[tuple]:
        data = self.transport.value()
        self.transport.clear()
        return frames_in(data)

    def test_request_body_carries_service_method_args_kwargs_meta(self) -> None:
        call = FakeCall("add", [1, 2], {"c": 3}, {"deadline": 500})
        rid = self.protocol.send_call(call)
        [(mtype, comp, ser, frame_rid, body)] = self.sent()
        self.assertEqual((mtype, comp, ser, frame_rid), (REQUEST, compress.NONE, MSGPACK, rid))
        self.assertEqual(codec.decode(body), {"service": "svc", "method": "add",
                                              "args": [1, 2], "kwargs": {"c": 3},
                                              "meta": {"deadline": 500}})

    def test_request_ids_are_unique_per_connection(self) -> None:
        rids = [self.protocol.send_call(FakeCall()) for _ in range(100)]
        self.assertEqual(len(set(rids)), 100)

    def test_responses_in_any_order_reach_their_calls(self) -> None:
        calls = [FakeCall() for _ in range(3)]
        rids = [self.protocol.send_call(c) for c in calls]
        self.protocol.dataReceived(b"".join(
            response(rid, {"code": 200, "msg": "", "data": i})
            for i, rid in reversed(list(enumerate(rids)))))
        self.assertEqual([c.results for c in calls], [[0], [1], [2]])
        self.assertEqual(self.protocol.outstanding, 0)

    def test_a_success_is_read_with_or_without_an_empty_msg(self) -> None:
        old_peer, new_peer = FakeCall(), FakeCall()
        rids = [self.protocol.send_call(c) for c in (old_peer, new_peer)]
        self.protocol.dataReceived(response(rids[0], {"code": 200, "msg": "", "data": "a"}) +
                                   response(rids[1], {"code": 200, "data": "b"}))
        self.assertEqual((old_peer.results, new_peer.results), (["a"], ["b"]))

    def test_error_response_becomes_the_matching_exception(self) -> None:
        a, b = FakeCall(), FakeCall()
        ra, rb = self.protocol.send_call(a), self.protocol.send_call(b)
        self.protocol.dataReceived(
            response(ra, {"code": 404, "msg": "no such", "data": None}) +
            response(rb, {"code": 500, "msg": "boom", "data": None,
                          "details": {"type": "KeyError"}}))
        self.assertIsInstance(a.errors[0], NotFound)
        self.assertIsInstance(b.errors[0], RemoteError)
        self.assertEqual(b.errors[0].remote_type, "KeyError")

    def test_undecodable_response_fails_only_its_call(self) -> None:
        bad, good = FakeCall(), FakeCall()
        rbad, rgood = self.protocol.send_call(bad), self.protocol.send_call(good)
        self.protocol.dataReceived(encode_frame(RESPONSE, compress.NONE, MSGPACK, rbad, b"\xc1")
                                   + response(rgood, {"code": 200, "data": "ok"}))
        self.assertIsInstance(bad.errors[0], DecodeError)
        self.assertEqual(good.results, ["ok"])
        self.assertFalse(self.transport.disconnecting)

    def test_compressed_response_is_inflated(self) -> None:
        call = FakeCall()
        rid = self.protocol.send_call(call)
        self.protocol.dataReceived(response(rid, {"code": 200, "data": "z" * 10000},
                                            compress.GZIP))
        self.assertEqual(call.results, ["z" * 10000])

    def test_late_response_for_a_forgotten_call_is_ignored(self) -> None:
        call = FakeCall()
        rid = self.protocol.send_call(call)
        self.protocol.forget(rid)
        [(mtype, _, _, cancel_rid, _)] = self.sent()[1:]
        self.assertEqual((mtype, cancel_rid), (CANCEL, rid))
        self.protocol.dataReceived(response(rid, {"code": 200, "data": 1}))
        self.assertEqual((call.results, call.errors), ([], []))

    def test_connection_loss_fails_every_pending_call_at_once(self) -> None:
        calls = [FakeCall() for _ in range(5)]
        for call in calls:
            self.protocol.send_call(call)
        self.protocol.connectionLost(Failure(ConnectionDone("bye")))
        for call in calls:
            self.assertIsInstance(call.errors[0], ConnectionLost)
        self.assertEqual(self.protocol.outstanding, 0)

    def test_ping_is_answered_with_pong_of_the_same_id(self) -> None:
        self.protocol.dataReceived(encode_frame(PING, compress.NONE, MSGPACK, 42))
        self.assertEqual(self.sent(), [(PONG, compress.NONE, MSGPACK, 42, b"")])

    def test_pong_counts_as_activity(self) -> None:
        before = self.protocol.rx_count
        self.protocol.dataReceived(encode_frame(PONG, compress.NONE, MSGPACK, 0))
        self.assertEqual(self.protocol.rx_count, before + 1)

    def test_large_requests_are_compressed_above_the_threshold(self) -> None:
        protocol = RpcProtocol(ProtocolSettings(compression=compress.GZIP,
                                                compression_threshold=1000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.send_call(FakeCall(args=["x" * 10]))
        protocol.send_call(FakeCall(args=["x" * 5000]))
        small, large = frames_in(transport.value())
        self.assertEqual((small[1], large[1]), (compress.NONE, compress.GZIP))
        self.assertLess(len(large[4]), 1000)

    def test_request_to_a_peer_without_services_gets_404(self) -> None:
        self.protocol.dataReceived(encode_frame(REQUEST, compress.NONE, MSGPACK, 9,
                                                codec.encode({"service": "x", "method": "y"})))
        [(mtype, _, _, rid, body)] = self.sent()
        self.assertEqual((mtype, rid, codec.decode(body)["code"]), (RESPONSE, 9, 404))


class BadStreamTests(TestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.protocol = RpcProtocol(ProtocolSettings(max_frame=1024))
        self.protocol.makeConnection(self.transport)
        self.call = FakeCall()
        self.protocol.send_call(self.call)

    def assertDropped(self) -> None:
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.call.errors[0], ConnectionLost)

    def test_bad_magic_closes_the_connection(self) -> None:
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertDropped()

    def test_oversized_frame_closes_the_connection(self) -> None:
        self.protocol.dataReceived(encode_frame(REQUEST, 1, 2, 1, b"x" * 2000)[:17])
        self.assertDropped()

    def test_unknown_message_type_closes_the_connection(self) -> None:
        self.protocol.dataReceived(encode_frame(9, 1, 2, 1, b""))
        self.assertDropped()

    def test_bad_frame_is_logged_with_the_reason(self) -> None:
        from twisted.logger import globalLogPublisher
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.protocol.dataReceived(b"\x00" * 17)
        self.assertTrue(any("bad magic" in str(e.get("error")) for e in events))


class _NoCalls:
    """A dispatcher that never answers: only makes the protocol a server's."""

    def request_received(self, *args: Any) -> None:
        pass

    def cancel_received(self, *args: Any) -> None:
        pass

    def connection_lost(self, *args: Any) -> None:
        pass


class BackPressureTests(TestCase):
    def test_server_stops_reading_while_its_replies_pile_up_and_resumes_after(self) -> None:
        transport = StringTransport()
        protocol = RpcProtocol(ProtocolSettings(), _NoCalls())
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        protocol.pauseProducing()  # what a transport does when its buffer is full
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_client_notes_its_requests_piling_up_but_never_stops_reading(self) -> None:
        # Were both ends to stop reading while their own writes pile up (large calls in
        # flight both ways), neither would drain.  The pause only counts (write timeout).
        transport = StringTransport()
        protocol = RpcProtocol(ProtocolSettings())
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        protocol.pauseProducing()
        self.assertEqual((transport.producerState, protocol.paused, protocol.pauses),
                         ("producing", True, 1))
        protocol.resumeProducing()
        self.assertEqual((transport.producerState, protocol.paused), ("producing", False))


class _RecordedWrites(StringTransport):
    """Keeps every write as it was handed over (a writeSequence as one list)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Any] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes.append(list(data))
        super().writeSequence(data)


class _EchoBodies(_NoCalls):
    """Answers every request with its own body, untouched."""

    def request_received(self, protocol: RpcProtocol, rid: int, comp: int, ser: int,
                         body: bytes) -> None:
        protocol._send_response(ser, rid, 200, body)


class _NoDelayTransport(StringTransport):
    def __init__(self, error: Optional[Exception] = None) -> None:
        super().__init__()
        self.error = error
        self.no_delay: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        if self.error is not None:
            raise self.error
        self.no_delay.append(enabled)


class NoDelayTests(TestCase):
    def test_tcp_connections_send_small_segments_at_once(self) -> None:
        transport = _NoDelayTransport()
        RpcProtocol(ProtocolSettings()).makeConnection(transport)
        self.assertEqual(transport.no_delay, [True])

    def test_nagle_stays_on_when_asked(self) -> None:
        transport = _NoDelayTransport()
        RpcProtocol(ProtocolSettings(no_delay=False)).makeConnection(transport)
        self.assertEqual(transport.no_delay, [])

    def test_a_socket_without_the_option_still_connects(self) -> None:
        transport = _NoDelayTransport(OSError(95, "Operation not supported"))  # AF_UNIX
        protocol = RpcProtocol(ProtocolSettings())
        protocol.makeConnection(transport)
        self.assertTrue(protocol.connected)


class LargeBodyTests(TestCase):
    def test_a_large_body_is_written_after_its_header_not_joined_to_it(self) -> None:
        transport = _RecordedWrites()
        protocol = RpcProtocol(ProtocolSettings())
        protocol.makeConnection(transport)
        protocol.send_call(FakeCall(args=[b"x" * 100]))
        protocol.send_call(FakeCall(args=[b"x" * WRITE_APART]))
        small, header, body = transport.writes
        self.assertEqual(len(header), HEADER_SIZE)
        self.assertGreater(len(body), WRITE_APART)
        [_, (_, _, _, rid, sent)] = frames_in(transport.value())
        self.assertEqual((rid, sent), (2, body))

    def test_replies_to_one_read_go_out_in_one_write_a_large_one_unjoined(self) -> None:
        transport = _RecordedWrites()
        protocol = RpcProtocol(ProtocolSettings(), _EchoBodies())
        protocol.makeConnection(transport)
        bodies = [b"a" * 10, b"b" * WRITE_APART, b"c" * 10]
        protocol.dataReceived(b"".join(encode_frame(REQUEST, compress.NONE, MSGPACK, rid, b)
                                       for rid, b in enumerate(bodies, start=1)))
        [sequence] = transport.writes
        self.assertEqual([len(part) for part in sequence],
                         [HEADER_SIZE + 10, HEADER_SIZE, WRITE_APART, HEADER_SIZE + 10])
        self.assertEqual([f[4] for f in frames_in(transport.value())], bodies)
        protocol.dataReceived(encode_frame(REQUEST, compress.NONE, MSGPACK, 4, b"d"))
        protocol.dataReceived(b"".join(encode_frame(REQUEST, compress.NONE, MSGPACK, rid, b"e")
                                       for rid in (5, 6)))
        self.assertEqual([type(w) for w in transport.writes[1:]], [bytes, bytes])
