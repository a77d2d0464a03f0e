"""The dispatcher: every error code of DESIGN.md section 4, async handlers, limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from msrpc import compress
from msrpc.codec import JsonCodec, MsgpackCodec, TypeRegistry, make_codecs
from msrpc.errors import BadRequest, RateLimited
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.server import Dispatcher, ServerLimits
from msrpc.service import expose, hidden
from msrpc.wire import CANCEL, REQUEST, RESPONSE, FrameParser, Serializer, encode_frame

MSGPACK, JSON = int(Serializer.MSGPACK), int(Serializer.JSON)
types = TypeRegistry()


@types.register(name="srv.Item")
@dataclass
class Item:
    name: str
    qty: int


class Shop:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ran: list[str] = []
        self.cancelled: list[str] = []

    def add(self, a: int, b: int) -> int:
        self.ran.append("add")
        return a + b

    def total(self, item: Item, factor: float = 1.0) -> float:
        return item.qty * factor

    def restock(self, item: Item) -> Item:
        return Item(item.name, item.qty + 10)

    def fail(self) -> None:
        raise KeyError("missing thing")

    def refuse(self) -> None:
        raise BadRequest("quantity must be positive")

    def inner_type_error(self) -> None:
        return len(5)  # type: ignore[arg-type]  # a bug inside the handler: 500, not 400

    def unencodable(self) -> object:
        return object()

    def later(self, value: Any, delay: float = 1.0) -> "defer.Deferred[Any]":
        d = deferLater(self.clock, delay, lambda: value)
        d.addErrback(self._note_cancel, "later")
        return d

    def _note_cancel(self, failure: Failure, name: str) -> Failure:
        if failure.check(defer.CancelledError):
            self.cancelled.append(name)
        return failure

    async def coro(self, value: Any, delay: float = 1.0) -> Any:
        try:
            await deferLater(self.clock, delay, lambda: None)
        except defer.CancelledError:
            self.cancelled.append("coro")
            raise
        return value

    async def coro_fails(self) -> None:
        await deferLater(self.clock, 0.1, lambda: None)
        raise ValueError("async boom")

    @expose("renamed", idempotent=True)
    def original_name(self) -> str:
        return "renamed"

    @hidden
    def internal(self) -> str:
        return "should not be callable"


class Harness:
    def __init__(self, test: TestCase, limits: ServerLimits = ServerLimits(),
                 tokens: Optional[list[str]] = None, json: bool = False) -> None:
        self.clock = Clock()
        self.shop = Shop(self.clock)
        self.dispatcher = Dispatcher(self.clock, limits, tokens)
        self.dispatcher.add_service("shop", self.shop)
        self.codecs = make_codecs(types)
        self.protocol = self.connect()
        self.serializer = JSON if json else MSGPACK

    def connect(self) -> RpcProtocol:
        protocol = RpcProtocol(ProtocolSettings(codecs=make_codecs(types)), self.dispatcher)
        protocol.makeConnection(StringTransport())
        return protocol

    def send(self, rid: int, method: str, *args: Any, service: str = "shop",
             kwargs: Optional[dict] = None, meta: Optional[dict] = None,
             protocol: Optional[RpcProtocol] = None) -> None:
        body: dict[str, Any] = {"service": service, "method": method, "args": list(args)}
        if kwargs:
            body["kwargs"] = kwargs
        if meta is not None:
            body["meta"] = meta
        self.raw(rid, self.codecs[self.serializer].encode(body), protocol=protocol)

    def raw(self, rid: int, body: bytes, comp: int = compress.NONE,
            ser: Optional[int] = None, protocol: Optional[RpcProtocol] = None) -> None:
        protocol = protocol or self.protocol
        protocol.dataReceived(encode_frame(REQUEST, comp, self.serializer if ser is None else ser, rid, body))

    def replies(self, protocol: Optional[RpcProtocol] = None) -> dict[int, dict]:
        transport = (protocol or self.protocol).transport
        frames: list[tuple] = []
        FrameParser(lambda *f: frames.append(f)).feed(transport.value())
        transport.clear()
        out = {}
        for mtype, comp, ser, rid, body in frames:
            assert mtype == RESPONSE
            out[rid] = self.codecs[ser].decode(compress.decompress(comp, body))
        return out

    def reply(self, rid: int) -> dict:
        return self.replies()[rid]


class SuccessTests(TestCase):
    def test_sync_handler_is_answered_inline(self) -> None:
        h = Harness(self)
        h.send(1, "add", 2, 3)
        self.assertEqual(h.reply(1), {"code": 200, "data": 5})  # no "msg" in a success

    def test_registered_classes_arrive_as_themselves_and_return(self) -> None:
        h = Harness(self)
        h.send(1, "restock", Item("nut", 5))
        self.assertEqual(h.reply(1)["data"], Item("nut", 15))

    def test_keyword_arguments_are_passed(self) -> None:
        h = Harness(self)
        h.send(1, "total", Item("a", 4), kwargs={"factor": 2.5})
        self.assertEqual(h.reply(1)["data"], 10.0)

    def test_deferred_handler_answers_when_it_fires(self) -> None:
        h = Harness(self)
        h.send(1, "later", "v", 1.0)
        self.assertEqual(h.replies(), {})
        h.clock.advance(1.0)
        self.assertEqual(h.reply(1), {"code": 200, "data": "v"})
        self.assertEqual(h.dispatcher.in_flight, 0)

    def test_async_def_handler_answers_when_it_returns(self) -> None:
        h = Harness(self)
        h.send(1, "coro", [1, 2], 0.5)
        h.clock.advance(0.5)
        self.assertEqual(h.reply(1)["data"], [1, 2])

    def test_replies_come_back_in_completion_order(self) -> None:
        h = Harness(self)
        h.send(1, "later", "slow", 2.0)
        h.send(2, "later", "fast", 1.0)
        h.send(3, "add", 1, 1)
        self.assertEqual(list(h.replies()), [3])
        h.clock.advance(1.0)
        self.assertEqual(list(h.replies()), [2])
        h.clock.advance(1.0)
        self.assertEqual(list(h.replies()), [1])

    def test_json_serializer_is_answered_in_json(self) -> None:
        h = Harness(self, json=True)
        h.send(1, "add", 2, 3)
        self.assertEqual(h.reply(1)["data"], 5)

    def test_compressed_request_is_inflated(self) -> None:
        h = Harness(self)
        body = h.codecs[MSGPACK].encode({"service": "shop", "method": "add", "args": [1, 2]})
        h.raw(1, compress.compress(compress.GZIP, body), comp=compress.GZIP)
        self.assertEqual(h.reply(1)["data"], 3)

    def test_exposed_name_is_used_and_hidden_methods_are_not_served(self) -> None:
        h = Harness(self)
        h.send(1, "renamed")
        h.send(2, "internal")
        h.send(3, "original_name")
        replies = h.replies()
        self.assertEqual(replies[1]["data"], "renamed")
        self.assertEqual(replies[2]["code"], 404)
        self.assertEqual(replies[3]["code"], 404)


class ErrorCodeTests(TestCase):
    """One test per row of the error table; the connection always survives."""

    def assertCode(self, h: Harness, rid: int, code: int, text: str = "") -> dict:
        reply = h.replies()[rid]
        self.assertEqual(reply["code"], code, reply)
        self.assertIn(text, reply["msg"])
        self.assertFalse(h.protocol.transport.disconnecting)
        h.send(999, "add", 1, 1)  # the same connection still serves
        self.assertEqual(h.replies()[999]["data"], 2)
        return reply

    def test_400_undecodable_body(self) -> None:
        h = Harness(self)
        h.raw(1, b"\xc1\xc1")
        self.assertCode(h, 1, 400, "undecodable request")

    def test_400_unknown_registered_type(self) -> None:
        h = Harness(self)
        other = MsgpackCodec(TypeRegistry())
        other.registry.register(Item, name="not.known.Here")
        h.raw(1, other.encode({"service": "shop", "method": "total",
                               "args": [Item("a", 1)]}))
        self.assertCode(h, 1, 400, "not.known.Here")

    def test_400_envelope_without_method(self) -> None:
        h = Harness(self)
        h.raw(1, h.codecs[MSGPACK].encode({"service": "shop"}))
        self.assertCode(h, 1, 400, "needs service and method")

    def test_400_body_that_is_not_a_map(self) -> None:
        h = Harness(self)
        h.raw(1, h.codecs[MSGPACK].encode([1, 2, 3]))
        self.assertCode(h, 1, 400)

    def test_400_args_that_are_not_a_list(self) -> None:
        h = Harness(self)
        h.raw(1, h.codecs[MSGPACK].encode({"service": "shop", "method": "add", "args": 5}))
        self.assertCode(h, 1, 400, "args must be a list")

    def test_400_wrong_number_of_arguments(self) -> None:
        h = Harness(self)
        h.send(1, "add", 1, 2, 3)
        self.assertCode(h, 1, 400, "positional arguments")

    def test_400_unexpected_keyword(self) -> None:
        h = Harness(self)
        h.send(1, "add", 1, kwargs={"c": 2})
        self.assertCode(h, 1, 400, "unexpected keyword")

    def test_400_argument_of_the_wrong_type(self) -> None:
        h = Harness(self)
        h.send(1, "add", "1", 2)
        reply = self.assertCode(h, 1, 400, "argument 'a' must be int, got str")
        self.assertEqual(h.shop.ran, ["add"])  # only the follow-up call ran
        del reply

    def test_400_wrong_type_for_a_registered_class_parameter(self) -> None:
        h = Harness(self)
        h.send(1, "total", {"name": "a", "qty": 1})
        self.assertCode(h, 1, 400, "argument 'item' must be Item, got dict")

    def test_400_unsupported_serializer(self) -> None:
        h = Harness(self)
        h.raw(1, b"\x00", ser=int(Serializer.PROTOBUF))
        self.assertCode(h, 1, 400, "unsupported serializer id 1")

    def test_400_body_that_inflates_past_the_cap(self) -> None:
        h = Harness(self)
        h.protocol.settings.max_decompressed = 1000
        h.raw(1, compress.compress(compress.GZIP, b"\0" * 100_000), comp=compress.GZIP)
        self.assertCode(h, 1, 400, "decompressed-size limit")

    def test_401_without_token_when_tokens_are_required(self) -> None:
        h = Harness(self, tokens=["s3cret"])
        h.send(1, "add", 1, 2)
        h.send(2, "add", 1, 2, meta={"token": "wrong"})
        h.send(3, "add", 1, 2, meta={"token": "s3cret"})
        replies = h.replies()
        self.assertEqual([replies[i]["code"] for i in (1, 2, 3)], [401, 401, 200])
        self.assertNotIn("s3cret", repr(replies))

    def test_404_unknown_service(self) -> None:
        h = Harness(self)
        h.send(1, "add", service="nope")
        self.assertCode(h, 1, 404, "unknown service 'nope'")

    def test_404_unknown_method(self) -> None:
        h = Harness(self)
        h.send(1, "nope")
        self.assertCode(h, 1, 404, "unknown method 'nope' of service 'shop'")

    def test_404_private_method(self) -> None:
        h = Harness(self)
        h.send(1, "_note_cancel")
        self.assertCode(h, 1, 404)

    def test_408_deadline_already_passed_on_arrival(self) -> None:
        h = Harness(self)
        h.send(1, "add", 1, 2, meta={"deadline": 0})
        self.assertCode(h, 1, 408, "before the call ran")
        self.assertEqual(h.shop.ran, ["add"])  # only the follow-up call

    def test_408_when_an_async_handler_outlives_its_deadline(self) -> None:
        h = Harness(self)
        h.send(1, "coro", "v", 5.0, meta={"deadline": 1000})
        h.clock.advance(0.999)
        self.assertEqual(h.replies(), {})
        h.clock.advance(0.001)
        self.assertCode(h, 1, 408, "while the call ran")
        self.assertEqual(h.shop.cancelled, ["coro"])
        self.assertEqual(h.dispatcher.in_flight, 0)

    def test_500_handler_exception_carries_type_and_message(self) -> None:
        h = Harness(self)
        h.send(1, "fail")
        reply = self.assertCode(h, 1, 500, "missing thing")
        self.assertEqual(reply["details"], {"type": "KeyError"})
        self.flushLoggedErrors(KeyError)

    def test_500_type_error_inside_the_handler_is_not_a_bad_request(self) -> None:
        h = Harness(self)
        h.send(1, "inner_type_error")
        self.assertCode(h, 1, 500)
        self.flushLoggedErrors(TypeError)

    def test_500_async_handler_exception(self) -> None:
        h = Harness(self)
        h.send(1, "coro_fails")
        h.clock.advance(0.1)
        reply = self.assertCode(h, 1, 500, "async boom")
        self.assertEqual(reply["details"]["type"], "ValueError")
        self.flushLoggedErrors(ValueError)

    def test_500_result_that_cannot_be_encoded(self) -> None:
        h = Harness(self)
        h.send(1, "unencodable")
        self.assertCode(h, 1, 500, "result could not be encoded")

    def test_handler_raising_an_rpc_error_keeps_its_code(self) -> None:
        h = Harness(self)
        h.send(1, "refuse")
        self.assertCode(h, 1, 400, "quantity must be positive")

    def test_503_while_draining(self) -> None:
        h = Harness(self)
        h.dispatcher.draining = True
        h.send(1, "add", 1, 2)
        self.assertEqual(h.replies()[1]["code"], 503)
        self.assertEqual(h.shop.ran, [])

    def test_503_over_the_per_connection_in_flight_limit(self) -> None:
        h = Harness(self, ServerLimits(max_in_flight_per_connection=2))
        for rid in (1, 2, 3):
            h.send(rid, "later", rid)
        self.assertEqual(h.replies()[3]["code"], 503)
        other = h.connect()
        h.send(4, "later", 4, protocol=other)  # another connection still has room
        h.clock.advance(1)
        self.assertEqual(sorted(h.replies()), [1, 2])
        self.assertEqual(h.replies(other)[4]["data"], 4)

    def test_503_over_the_server_in_flight_limit(self) -> None:
        h = Harness(self, ServerLimits(max_in_flight=2))
        other = h.connect()
        h.send(1, "later", 1)
        h.send(2, "later", 2, protocol=other)
        h.send(3, "later", 3, protocol=other)
        self.assertEqual(h.replies(other)[3]["code"], 503)

    def test_700_over_the_server_rate(self) -> None:
        h = Harness(self, ServerLimits(rate=2, burst=2))
        for rid in (1, 2, 3):
            h.send(rid, "add", 1, 1)
        replies = h.replies()
        self.assertEqual([replies[i]["code"] for i in (1, 2, 3)], [200, 200, 700])
        self.assertEqual(h.shop.ran, ["add", "add"])
        h.clock.advance(0.5)  # one token back at 2/s
        h.send(4, "add", 1, 1)
        self.assertEqual(h.reply(4)["code"], 200)

    def test_700_over_a_method_rate(self) -> None:
        h = Harness(self)
        h.dispatcher.limit_method("shop", "add", rate=1, burst=1)
        h.send(1, "add", 1, 1)
        h.send(2, "add", 1, 1)
        h.send(3, "renamed")
        replies = h.replies()
        self.assertEqual([replies[i]["code"] for i in (1, 2, 3)], [200, 700, 200])
        self.assertEqual(RateLimited.code, 700)


class CancellationTests(TestCase):
    def test_cancel_frame_stops_the_handler_and_sends_nothing(self) -> None:
        h = Harness(self)
        h.send(1, "later", "v", 5.0)
        h.protocol.dataReceived(encode_frame(CANCEL, compress.NONE, MSGPACK, 1))
        self.assertEqual(h.shop.cancelled, ["later"])
        h.clock.advance(10)
        self.assertEqual(h.replies(), {})
        self.assertEqual(h.dispatcher.in_flight, 0)

    def test_connection_loss_cancels_that_connections_handlers_only(self) -> None:
        h = Harness(self)
        other = h.connect()
        h.send(1, "coro", "a")
        h.send(2, "coro", "b", protocol=other)
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.shop.cancelled, ["coro"])
        h.clock.advance(1)
        self.assertEqual(h.replies(other)[2]["data"], "b")
        self.assertEqual(h.dispatcher.in_flight, 0)

    def test_when_idle_fires_after_the_last_call(self) -> None:
        h = Harness(self)
        h.send(1, "later", "v", 1.0)
        idle = h.dispatcher.when_idle()
        self.assertNoResult(idle)
        h.clock.advance(1.0)
        self.successResultOf(idle)


class RegistrationTests(TestCase):
    def test_duplicate_service_name_is_refused(self) -> None:
        h = Harness(self)
        self.assertRaises(ValueError, h.dispatcher.add_service, "shop", Shop(h.clock))

    def test_object_without_methods_is_refused(self) -> None:
        self.assertRaises(ValueError, Dispatcher(Clock()).add_service, "x", object())

    def test_rate_limit_for_unknown_method_is_refused(self) -> None:
        self.assertRaises(ValueError, Harness(self).dispatcher.limit_method, "shop", "x", 1)
