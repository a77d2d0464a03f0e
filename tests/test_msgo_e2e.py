"""
msrpc and Go msgo, end to end with real Go processes: ``tests/msgo_peer`` (a Go peer that
speaks msgo's TCP RPC, standard library only, built by the suite) against the real
``msrpc`` command, a real ``twistd msrpc``, real etcd and a real Nacos.

- A Go server registered in etcd (msgo's plain ``service → host:port`` key) and one
  registered in Nacos (weight 10, metadata ``idc``, over Nacos's HTTP API) are called by
  ``msrpc call``.
- A Go client finds a ``twistd msrpc`` service in Nacos and calls it.
- Bad gob, unknown registered names, wrong Go types, hang-ups and rate limits give clear
  errors on both sides, and neither side stops serving.
"""

from __future__ import annotations

import gzip
import json
import struct
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from msrpc import gob
from msrpc.client import Client
from msrpc.errors import DecodeError
from msrpc.gob import Int64
from msrpc.registry.static import StaticRegistry
from msrpc.wire import HEADER_SIZE
from tests.gob_models import REGISTRY, VECTORS, Goods, MsRpcRequest
from tests.servers import run
from tests.servers.etcd import start_etcd
from tests.servers.msgo import (
    MsgoPeerServer, peer_cli, require_go, start_peer_server,
)
from tests.servers.msrpcd import MsrpcDaemon, msrpc_cli, start_daemon, workdir
from tests.servers.nacos import NacosServer, require_nacos, shared_nacos

VECTORS_FILE = Path(__file__).parent / "data" / "gob_vectors.json"


def msgo_frame(gob_body: bytes, rid: int = 1) -> bytes:
    """A request frame as msgo writes it: header, gzip(gob)."""
    body = gzip.compress(gob_body)
    return struct.pack(">BBIBBBq", 0x1D, 1, HEADER_SIZE + len(body), 0, 0, 0, rid) + body


class _Collect(protocol.Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


async def raw_exchange(address: str, data: bytes) -> bytes:
    """Send bytes, read until the server closes (msgo's one exchange per connection)."""
    host, _, port = address.rpartition(":")
    collector = _Collect(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), collector)
    done = collector.done
    done.addTimeout(10, reactor)
    return await done


def response_of(frame: bytes) -> Any:
    """The MsRpcResponse in a response frame (decoded without the Go types: a dict)."""
    assert frame[0] == 0x1D and len(frame) > HEADER_SIZE, frame[:20]
    return gob.decode(gzip.decompress(frame[HEADER_SIZE:]),
                      registry=gob.GobRegistry(keep_unknown=True))


class GoCodecTests(TestCase):
    """The codec against Go's own encoder and decoder, in both directions."""

    timeout = 300  # the first test builds the Go peer

    def setUp(self) -> None:
        require_go()

    @run
    async def test_go_still_writes_the_vectors_the_codec_tests_use(self) -> None:
        out, err, code = await peer_cli(reactor, "vectors")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), json.loads(VECTORS_FILE.read_text()))

    @run
    async def test_go_reads_what_python_writes(self) -> None:
        request = MsRpcRequest(Int64(5), "goods", "Save", [
            Goods(Id=Int64(3), Name="n", Tags=["a", "b"]), Int64(7), gob.Uint8(255),
            gob.Float32(1.5), [1, 2], {"k": 1}, "s", None, True, b"\x00\x01"])
        data = gob.encode(request, registry=REGISTRY)
        out, err, code = await peer_cli(reactor, "decode", "request", data.hex())
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("OK "), out)
        decoded = json.loads(out[3:])
        self.assertEqual(decoded["Args"], [
            {"Id": 3, "Name": "n", "Price": 0, "Tags": ["a", "b"],
             "Added": "0001-01-01T00:00:00Z"},
            7, 255, 1.5, [1, 2], {"k": 1}, "s", None, True, "AAE="])

    @run
    async def test_go_reads_every_struct_python_writes(self) -> None:
        for kind in ("kinds", "nodes"):
            value, go_type = VECTORS[kind]
            data = gob.encode(value, go_type, registry=REGISTRY)
            out, err, code = await peer_cli(reactor, "decode", kind, data.hex())
            self.assertEqual((code, out[:3]), (0, "OK "), out + err)


class GoServerTests(TestCase):
    """``msrpc call`` (and a Python client) against a Go msgo server."""

    timeout = 300

    def setUp(self) -> None:
        require_go()
        self.dir = workdir(self)

    def peer(self, *args: str, registered: int = 0) -> "defer.Deferred[MsgoPeerServer]":
        return start_peer_server(self, reactor, self.dir, list(args), registered)

    def call_static(self, server: MsgoPeerServer, target: str, *args: str
                    ) -> "defer.Deferred[tuple[str, str, int]]":
        service = target.partition(".")[0]
        return msrpc_cli(reactor, "call", target, *args, "--registry", "static",
                         "--static", f"{service}={server.address}",
                         "--dialect", f"{service}=msgo", "--timeout", "5")

    @run
    async def test_msrpc_call_finds_a_go_service_by_its_etcd_plain_key(self) -> None:
        etcd = await start_etcd(self, "3.5")
        await self.peer("-etcd", etcd.url, registered=2)
        registry = ["--registry", "etcd", "--etcd", etcd.url]
        self.assertEqual(await msrpc_cli(reactor, "call", "calc.Add", "40", "2", *registry),
                         ("42\n", "", 0))
        out, err, code = await msrpc_cli(reactor, "call", "goods.Find", "int64(7)", *registry)
        self.assertEqual((err, code), ("", 0))
        self.assertEqual(json.loads(out), {
            "$type": "*model.Result", "Code": 200, "Msg": "success",
            "Data": {"$type": "*model.Goods", "Id": 7, "Name": "goods-7", "Price": 9.5,
                     "Tags": ["new"], "Added": "2024-05-06T07:08:09.123456+00:00"}})

    @run
    async def test_msrpc_call_reaches_a_go_service_registered_in_nacos(self) -> None:
        require_nacos()
        nacos = await shared_nacos(reactor)
        group = f"msgo-{uuid.uuid4().hex[:8]}"
        await self.peer("-nacos", nacos.url, "-group", group, "-idc", "dc1", registered=2)
        registry = ["--registry", "nacos", "--nacos", nacos.url, "--nacos-group", group]
        await self.until_listed(nacos, group, "calc")
        self.assertEqual(await msrpc_cli(reactor, "call", "calc.Add", "1", "2", *registry,
                                         "--dialect", "calc=msgo"), ("3\n", "", 0))
        out, _, _ = await msrpc_cli(reactor, "ls", "calc", *registry)
        self.assertIn("weight=10\t", out)
        self.assertIn("idc=dc1", out)

    async def until_listed(self, nacos: NacosServer, group: str, service: str) -> None:
        from tests.servers import wait_for

        async def listed() -> bool:
            return bool(await nacos.instances(service, groupName=group, healthy_only=True))

        await wait_for(reactor, lambda: defer.Deferred.fromCoroutine(listed()), 30,
                       f"Nacos to list {service}", interval=0.2)

    @run
    async def test_go_errors_and_hang_ups_are_clear_errors(self) -> None:
        server = await self.peer()
        out, err, code = await self.call_static(server, "calc.Div", "1", "0")
        self.assertEqual(code, 1)
        self.assertIn("RemoteError: [500] error: division by zero", err)
        # msgo panics on a missing method or a wrong argument type and hangs up
        out, err, code = await self.call_static(server, "calc.Mul", "1", "2")
        self.assertEqual(code, 1)
        self.assertIn("MsgoDropped", err)
        self.assertIn(f"{server.address} closed the connection without answering calc.Mul",
                      err)
        out, err, code = await self.call_static(server, "goods.Find", "7")
        self.assertIn("sent: int;", err)
        out, err, code = await self.call_static(server, "nosuch.X")
        self.assertIn("[500] error: no service found", err)  # msgo answers it with id 0
        self.assertEqual(await self.call_static(server, "calc.Add", "1", "1"),
                         ("2\n", "", 0))

    @run
    async def test_a_rate_limited_go_service_answers_700(self) -> None:
        server = await self.peer("-rate", "0.001", "-burst", "1")
        self.assertEqual(await self.call_static(server, "calc.Add", "1", "1"), ("2\n", "", 0))
        out, err, code = await self.call_static(server, "calc.Add", "1", "1")
        self.assertEqual(code, 1)
        self.assertIn("RateLimited: [700]", err)

    @run
    async def test_bad_gob_and_unknown_go_names_do_not_stop_the_go_server(self) -> None:
        server = await self.peer()
        answer = response_of(await raw_exchange(server.address, msgo_frame(b"\x05\xff\x80")))
        self.assertEqual(answer["Code"], 500)
        self.assertEqual(answer["Msg"], "unexpected EOF")  # Go's gob decoder
        registry = gob.GobRegistry()
        registry.register("*model.Unknown", Goods)
        unknown = gob.encode(MsRpcRequest(Int64(1), "goods", "Save", [Goods()]),
                             registry=registry)
        answer = response_of(await raw_exchange(server.address, msgo_frame(unknown)))
        self.assertEqual(answer["Code"], 500)
        self.assertIn('name not registered for interface: "*model.Unknown"', answer["Msg"])
        self.assertEqual(await self.call_static(server, "calc.Add", "2", "2"), ("4\n", "", 0))

    @run
    async def test_python_objects_travel_to_go_methods_and_back(self) -> None:
        server = await self.peer()
        client = Client(reactor, StaticRegistry({"goods": [server.address]}),
                        dialect="msgo", gob_registry=REGISTRY, timeout=5)
        self.addCleanup(client.close)
        saved = await client.call("goods", "Save", Goods(Id=Int64(3), Name="n",
                                                         Tags=["a", "b"]))
        self.assertEqual(saved, "n@3+2")
        found = await client.call("goods", "Find", Int64(9))
        self.assertEqual((found.Code, found.Data.Id, found.Data.Name), (200, 9, "goods-9"))

    @run
    async def test_a_python_client_without_the_go_types_gets_a_clear_error(self) -> None:
        server = await self.peer()
        client = Client(reactor, StaticRegistry({"goods": [server.address]}),
                        dialect="msgo", gob_registry=gob.GobRegistry(), timeout=5)
        self.addCleanup(client.close)
        with self.assertRaises(DecodeError) as caught:
            await client.call("goods", "Find", Int64(9))
        self.assertIn("'*model.Result'", str(caught.exception))


class GoClientTests(TestCase):
    """A Go msgo client finds a ``twistd msrpc`` service in Nacos and calls it."""

    timeout = 300

    def setUp(self) -> None:
        require_go()
        require_nacos()
        self.dir = workdir(self)
        self.group = f"msgo-{uuid.uuid4().hex[:8]}"

    async def daemon(self) -> tuple[NacosServer, MsrpcDaemon]:
        nacos = await shared_nacos(reactor)
        daemon = await start_daemon(
            self, reactor, self.dir,
            ["--registry", "nacos", "--nacos", nacos.url, "--nacos-group", self.group,
             "--grace", "0.2", "--service", "goods=tests.msgo_service:GoodsService",
             "--service", "calc=tests.msgo_service:CalcService"], registered=2)
        return nacos, daemon

    async def go_call(self, nacos: NacosServer, *args: str) -> dict[str, Any]:
        out, err, code = await peer_cli(reactor, "call", "-nacos", nacos.url,
                                        "-group", self.group, *args)
        self.assertIn(code, (0, 3), err)
        return json.loads(out)  # type: ignore[no-any-return]

    async def until_found(self, nacos: NacosServer) -> None:
        from tests.servers import wait_for

        async def found() -> bool:
            return bool(await nacos.instances("goods", groupName=self.group,
                                              healthy_only=True))

        await wait_for(reactor, lambda: defer.Deferred.fromCoroutine(found()), 30,
                       "Nacos to list the daemon", interval=0.2)

    @run
    async def test_a_go_client_calls_a_twistd_msrpc_service_found_in_nacos(self) -> None:
        nacos, daemon = await self.daemon()
        await self.until_found(nacos)
        answer = await self.go_call(nacos, "goods", "goods", "Find", "int64:7")
        self.assertEqual((answer["Code"], answer["Type"]), (200, "*model.Result"))
        self.assertEqual(answer["Data"]["Data"]["Name"], "py-goods-7")
        self.assertEqual(answer["Data"]["Data"]["Added"], "2024-05-06T00:00:00Z")
        answer = await self.go_call(nacos, "calc", "calc", "Add", "40", "2")
        self.assertEqual((answer["Code"], answer["Type"], answer["Data"]), (200, "int", 42))
        answer = await self.go_call(nacos, "goods", "goods", "Save",
                                    'goods:{"Id": 3, "Name": "g", "Tags": ["t"]}')
        self.assertEqual(answer["Data"], "g@3+1")

    @run
    async def test_errors_reach_the_go_client_and_the_daemon_keeps_serving(self) -> None:
        nacos, daemon = await self.daemon()
        await self.until_found(nacos)
        answer = await self.go_call(nacos, "calc", "calc", "Div", "1", "0")
        self.assertEqual((answer["Code"], answer["Msg"]), (500, "division by zero"))
        answer = await self.go_call(nacos, "calc", "calc", "Mul", "1", "2")
        self.assertEqual(answer["Code"], 404)
        answer = await self.go_call(nacos, "calc", "calc", "Add", "x", "2")
        self.assertEqual(answer["Code"], 400)
        self.assertIn("argument 'a' must be int, got str", answer["Msg"])
        answer = await self.go_call(nacos, "calc", "calc", "Echo", "point:1,2")
        self.assertEqual(answer["Code"], 400)
        self.assertIn("'main.Point'", answer["Msg"])
        bad = response_of(await raw_exchange(daemon.address, msgo_frame(b"\x05\xff\x80")))
        self.assertEqual(bad["Code"], 400)
        log = daemon.log_text()
        self.assertNotIn("Unhandled", log)
        self.assertEqual(log.count("Traceback"), 1)  # calc.Div's ZeroDivisionError, logged
        answer = await self.go_call(nacos, "calc", "calc", "Add", "1", "2")
        self.assertEqual(answer["Data"], 3)
        registry = ["--registry", "nacos", "--nacos", nacos.url, "--nacos-group", self.group]
        self.assertEqual(await msrpc_cli(reactor, "call", "calc.Add", "2", "3", *registry),
                         ("5\n", "", 0))  # native msrpc clients, same port
