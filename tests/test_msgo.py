"""
msgo's dialect (``msrpc.msgo``) in memory: an msrpc client calling msgo's way, an msrpc
server answering msgo requests, both through ``msrpc.testing.MemoryNetwork`` on a Clock,
and the server fed msgo's own reference request frame byte for byte.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from msrpc import compress, gob
from msrpc.client import Client, RetryPolicy
from msrpc.errors import (
    BadRequest, CallTimeout, DecodeError, EncodeError, MsgoDropped, NotFound, RateLimited, RemoteError,
    Unauthorized,
)
from msrpc.gob import Int64, Uint8
from msrpc.msgo.client import MsgoDialect
from msrpc.msgo.messages import GOB, MsRpcRequest, MsRpcResponse
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.registry.instance import ServiceInstance
from msrpc.server import Dispatcher, RpcServerFactory, ServerLimits
from msrpc.sweep import SERVER_KEEPALIVE, Sweeper
from msrpc.testing import MemoryNetwork
from msrpc.wire import REQUEST, RESPONSE, FrameParser, encode_frame
from tests.test_gob import MSGO_BODIES
from tests.test_observe import Recorder


@gob.register("*msgotest.Goods")
@dataclass
class Goods:
    Id: Int64 = Int64(0)
    Name: str = ""


class Shop:
    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []
        self.cancelled: list[bool] = []

    def Add(self, a: int, b: int) -> int:
        return a + b

    def Find(self, id: Int64) -> Goods:
        return Goods(id, f"goods-{id}")

    def Count(self, n: int) -> Int64:
        return Int64(n)

    def TypeOf(self, value: Uint8) -> str:
        return type(value).__name__

    def Length(self, items: tuple) -> int:  # type: ignore[type-arg]
        return len(items)

    def Fail(self) -> None:
        raise ValueError("boom")

    def Never(self) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.cancelled.append(True))
        self.pending.append(d)
        return d

    async def Later(self, n: int) -> Int64:
        return Int64(n * 2)


class MsgoClientTests(TestCase):
    """An msrpc client speaking msgo to an msrpc server that answers in kind."""

    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.shop = Shop()
        self.server = self.net.server({"shop": self.shop}, address="10.0.0.1:7000")
        self.client = self.net.client(dialect={"shop": "msgo"}, timeout=5.0)
        self.addCleanup(self.client.close)

    def close_native(self, client: Client) -> "defer.Deferred[None]":
        closed = client.close()
        self.net.advance(3)  # its multiplexed connection closes like any other
        return closed

    def call(self, method: str, *args: Any, **kwargs: Any) -> "defer.Deferred[Any]":
        d = self.client.call("shop", method, *args, **kwargs)
        self.net.advance(0)
        return d

    def test_a_call_comes_back_as_the_registered_class_with_its_go_types(self) -> None:
        found = self.successResultOf(self.call("Find", Int64(7)))
        self.assertEqual(found, Goods(Int64(7), "goods-7"))
        self.assertIs(type(found.Id), Int64)

    def test_each_call_has_a_connection_of_its_own_closed_after_the_answer(self) -> None:
        self.assertEqual(self.successResultOf(self.call("Add", 1, 2)), 3)
        self.assertEqual(self.successResultOf(self.call("Add", 3, 4)), 7)
        self.assertEqual(len(self.server.factory.connections), 0)
        self.assertEqual(self.net.pumps, [])  # both connections closed, both ends

    def test_arguments_arrive_as_the_annotated_go_types(self) -> None:
        self.assertEqual(self.successResultOf(self.call("TypeOf", 3)), "Uint8")
        self.assertEqual(self.successResultOf(self.call("Length", [1, 2, 3])), 3)

    def test_results_go_as_the_annotated_go_type(self) -> None:
        self.assertIs(type(self.successResultOf(self.call("Count", 5))), Int64)
        self.assertIs(type(self.successResultOf(self.call("Add", 1, 1))), int)

    def test_async_handlers_answer_too(self) -> None:
        self.assertEqual(self.successResultOf(self.call("Later", 21)), Int64(42))

    def test_errors_arrive_as_msrpc_errors(self) -> None:
        failure = self.failureResultOf(self.call("Fail"), RemoteError)
        self.assertEqual(str(failure.value), "[500] error: boom")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # the server's log
        self.failureResultOf(self.call("Nope"), NotFound)
        self.failureResultOf(self.call("Add", "x", 2), BadRequest)
        self.failureResultOf(self.call("TypeOf", 256), BadRequest)  # not a uint8

    def test_keyword_arguments_cannot_be_sent(self) -> None:
        self.failureResultOf(self.call("Add", a=1, b=2), EncodeError)
        self.assertEqual(self.net.pumps, [])

    def test_a_timeout_drops_the_connection_and_cancels_the_handler(self) -> None:
        d = self.client.invoke("shop", "Never", timeout=1.0)
        self.net.advance(0)
        self.assertEqual(len(self.server.factory.connections), 1)
        self.net.advance(1.0)
        self.failureResultOf(d, CallTimeout)
        self.assertEqual(len(self.server.factory.connections), 0)
        self.assertEqual(self.shop.cancelled, [True])

    def test_closing_the_client_drops_calls_in_flight(self) -> None:
        d = self.call("Never")
        self.client.close()
        self.net.advance(0)
        self.assertIsInstance(self.failureResultOf(d).value, MsgoDropped)

    def test_rate_limits_answer_700(self) -> None:
        self.net.server({"slow": Shop()}, limits=ServerLimits(rate=1, burst=1))
        client = self.net.client(dialect="msgo", retry=RetryPolicy(max_attempts=1))
        self.addCleanup(client.close)
        first = client.call("slow", "Add", 1, 1)
        second = client.call("slow", "Add", 1, 1)
        self.net.advance(0)
        self.assertEqual(self.successResultOf(first), 2)
        self.failureResultOf(second, RateLimited)

    def test_a_server_with_tokens_refuses_msgo_callers(self) -> None:
        self.net.server({"guarded": Shop()}, tokens=["secret"])
        client = self.net.client(dialect="msgo", token="secret")
        self.addCleanup(client.close)
        d = client.call("guarded", "Add", 1, 1)
        self.net.advance(0)
        self.failureResultOf(d, Unauthorized)  # msgo requests carry no token

    def test_instance_metadata_chooses_the_dialect(self) -> None:
        self.net.server({"meta": Shop()}, address="10.0.0.2:7000", register=False)
        self.net.registry.register(ServiceInstance("meta", "10.0.0.2", 7000,
                                                   metadata={"dialect": "msgo"}))
        client = self.net.client()
        self.addCleanup(client.close)
        d = client.call("meta", "Count", 3)
        self.net.advance(0)
        self.assertIs(type(self.successResultOf(d)), Int64)  # a gob reply, typed

    def test_native_and_msgo_calls_share_one_server(self) -> None:
        native = self.net.client()
        self.addCleanup(self.close_native, native)
        calls = [native.call("shop", "Add", 1, 2), self.client.call("shop", "Add", 3, 4)]
        self.net.advance(0)
        self.assertEqual([self.successResultOf(d) for d in calls], [3, 7])

    def test_a_server_that_hangs_up_is_reported_with_the_likely_causes(self) -> None:
        self.net.server({"off": Shop()}, address="10.0.0.3:7000")
        self.net._listening[("10.0.0.3", 7000)].dispatcher.msgo = False
        client = self.net.client(dialect="msgo")
        self.addCleanup(client.close)
        d = client.call("off", "Add", 1, Int64(2))
        self.net.advance(0)
        error = self.failureResultOf(d, MsgoDropped).value
        self.assertIn("10.0.0.3:7000 closed the connection without answering off.Add",
                      str(error))
        self.assertIn("does not exist or an argument is not of the Go type", str(error))
        self.assertIn("sent: int, int64", str(error))

    def _one_answered_one_rate_limited(self, observer: object) -> None:
        """Two msgo calls to a server with ``observer`` that lets one call through."""
        self.net.server({"seen": Shop()}, address="10.0.0.4:7000", observers=[observer],
                        limits=ServerLimits(rate=1, burst=1))
        client = self.net.client(dialect="msgo", retry=RetryPolicy(max_attempts=1))
        self.addCleanup(client.close)
        calls = [client.call("seen", "Add", 1, 2), client.call("seen", "Add", 3, 4)]
        self.net.advance(0)
        self.assertEqual(self.successResultOf(calls[0]), 3)
        self.failureResultOf(calls[1], RateLimited)

    def test_msgo_calls_are_observed_like_native_ones(self) -> None:
        recorder = Recorder()
        self._one_answered_one_rate_limited(recorder)
        self.assertEqual(recorder.started, [("server", "seen", "Add")])
        self.assertEqual(sorted((c.service, c.method, c.code, c.refused)
                                for c in recorder.finished),
                         [("other", "other", 700, "rate_limited"), ("seen", "Add", 200, "")])

    def test_msgo_calls_are_counted_by_tallies_like_native_ones(self) -> None:
        from tests.test_observe import Tallies

        tallies = Tallies()
        self._one_answered_one_rate_limited(tallies)
        added = tallies.tallies[("server", "seen", "Add")]
        self.assertEqual((added.durations, added.outcomes), ([0.0], []))
        self.assertGreater(added.received, 17)
        self.assertGreater(added.sent, 17)
        [(code, _, _, _, refused)] = tallies.tallies[("server", "other", "other")].outcomes
        self.assertEqual((code, refused), (700, "rate_limited"))

    def test_unknown_dialects_are_refused(self) -> None:
        self.assertRaises(ValueError, self.net.client, dialect="grpc")
        self.assertRaises(ValueError, self.net.client, dialect={"x": "corba"})


class MsgoServerFrameTests(TestCase):
    """An msrpc server fed the exact frames a Go msgo client writes."""

    def setUp(self) -> None:
        self.clock = Clock()
        dispatcher = Dispatcher(self.clock)
        dispatcher.add_service("calc", Calc())
        factory = RpcServerFactory(dispatcher, ProtocolSettings(),
                                   Sweeper(self.clock, SERVER_KEEPALIVE))
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def answer(self, frame: bytes) -> tuple[tuple[int, int, int, int], MsRpcResponse]:
        self.protocol.dataReceived(frame)
        frames: list[tuple[int, int, int, int, bytes]] = []
        FrameParser(lambda *f: frames.append(f)).feed(self.transport.value())
        [(mtype, comp, ser, rid, body)] = frames
        response = gob.decode(gzip.decompress(body),
                              gob.default_registry.struct_for(MsRpcResponse))
        return (mtype, comp, ser, rid), response

    def msgo_frame(self, body: bytes, rid: int = 1) -> bytes:
        return encode_frame(REQUEST, compress.GZIP, GOB, rid, gzip.compress(body))

    def test_msgo_reference_request_is_answered_msgo_s_way(self) -> None:
        header, response = self.answer(self.msgo_frame(
            bytes.fromhex(MSGO_BODIES["calc.Add request"])))
        self.assertEqual(header, (RESPONSE, compress.GZIP, GOB, 1))
        self.assertEqual(response, MsRpcResponse(RequestId=Int64(1), Code=gob.Int16(200),
                                                 Data=5))
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0)
        self.assertTrue(self.transport.disconnecting)  # one request per connection

    def test_the_request_id_of_the_body_is_answered(self) -> None:
        request = MsRpcRequest(Int64(41), "calc", "Add", [1, 2])
        header, response = self.answer(self.msgo_frame(gob.encode(request), rid=41))
        self.assertEqual((header[3], response.RequestId, response.Data), (41, 41, 3))

    def test_bad_gob_is_answered_400_and_the_server_carries_on(self) -> None:
        header, response = self.answer(self.msgo_frame(b"\x03\xff\x80\x00"))
        self.assertEqual(response.Code, 400)
        self.assertIn("undecodable request", response.Msg)

    def test_an_unregistered_go_type_is_answered_400_naming_it(self) -> None:
        body = bytes.fromhex(MSGO_BODIES["goods.Find request"]).replace(
            b"\x05int64", b"\x05xnt64")
        header, response = self.answer(self.msgo_frame(body))
        self.assertEqual(response.Code, 400)
        self.assertIn("'xnt64'", response.Msg)

    def test_a_body_that_is_not_gzip_is_answered_400(self) -> None:
        header, response = self.answer(encode_frame(REQUEST, compress.GZIP, GOB, 1, b"junk"))
        self.assertEqual((response.Code, "corrupt gzip" in response.Msg), (400, True))

    def test_a_gzip_bomb_is_answered_400_without_inflating_it(self) -> None:
        bomb = b"\0" * (compress.DEFAULT_MAX_DECOMPRESSED + 1)
        header, response = self.answer(self.msgo_frame(bomb))
        self.assertEqual(response.Code, 400)
        self.assertIn(f"decompressed-size limit of {compress.DEFAULT_MAX_DECOMPRESSED} bytes",
                      response.Msg)


class HostileAnswerTests(TestCase):
    """Whatever a broken or hostile msgo server answers fails that one call with a
    ``DecodeError`` saying so: bad gob, a gzip bomb (not inflated), no ``MsRpcResponse``."""

    def answer(self, body: bytes) -> Any:
        dialect = MsgoDialect(Clock(), connector=None,  # type: ignore[arg-type]
                              connect_timeout=1.0)
        protocol = RpcProtocol(dialect.settings)
        protocol.makeConnection(StringTransport())
        outcomes: list[Any] = []

        class Pending:
            service, method, args, kwargs, meta = "goods", "Find", [Int64(1)], None, None

            def succeeded(self, data: Any) -> None:
                outcomes.append(data)

            def failed(self, error: Any) -> None:
                outcomes.append(error)

        rid = protocol.send_call(Pending())
        protocol.dataReceived(encode_frame(RESPONSE, compress.GZIP, GOB, rid,
                                           gzip.compress(body)))
        [outcome] = outcomes
        return outcome

    def test_bad_gob_is_a_decode_error(self) -> None:
        error = self.answer(b"\x03\xff\x80\x00")
        self.assertIsInstance(error, DecodeError)
        self.assertIn("undecodable response from", str(error))

    def test_a_gzip_bomb_is_a_decode_error(self) -> None:
        error = self.answer(b"\0" * (compress.DEFAULT_MAX_DECOMPRESSED + 1))
        self.assertIsInstance(error, DecodeError)
        self.assertIn(f"decompressed-size limit of {compress.DEFAULT_MAX_DECOMPRESSED} bytes",
                      str(error))

    def test_another_go_value_than_a_response_is_a_decode_error(self) -> None:
        error = self.answer(gob.encode(MsRpcRequest(Int64(1), "goods", "Find", [])))
        self.assertIsInstance(error, DecodeError)
        self.assertIn("not msgo's MsRpcResponse", str(error))

    def test_a_good_answer_passes(self) -> None:
        self.assertEqual(self.answer(gob.encode(MsRpcResponse(
            RequestId=Int64(1), Code=gob.Int16(200), Data=Int64(5)))), 5)


class Calc:
    def Add(self, a: int, b: int) -> int:
        return a + b


class ResponseIdZeroTests(TestCase):
    """msgo answers "no service found" with request id 0: on a one-call connection that
    is the answer to the call."""

    def test_a_response_with_id_0_answers_the_only_call_in_flight(self) -> None:
        results: list[Any] = []

        class Pending:
            service, method, args, kwargs, meta = "s", "m", [], None, None

            def succeeded(self, data: Any) -> None:
                results.append(data)

            def failed(self, error: Any) -> None:
                results.append(error)

        protocol = RpcProtocol(ProtocolSettings())
        protocol.makeConnection(StringTransport())
        protocol.send_call(Pending())
        protocol.send_call(Pending())
        body = protocol._codec.encode({"code": 200, "msg": "", "data": 1})
        protocol.dataReceived(encode_frame(RESPONSE, 1, 2, 0, body))
        self.assertEqual(results, [])  # two in flight: whose would it be?
        protocol.forget(2, tell_peer=False)
        protocol.dataReceived(encode_frame(RESPONSE, 1, 2, 0, body))
        self.assertEqual(results, [1])
