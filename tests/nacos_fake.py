"""
An in-memory Nacos naming server (a twisted.web resource) for the NacosRegistry unit tests.

With ``apis={"v1"}`` it answers like Nacos 2.3.2 does: ``ok`` for register and deregister,
``{"clientBeatInterval", "code", "lightBeatEnabled"}`` for beats (20404 for an unknown
instance on a light beat), ServiceInfo JSON for lists, tokens from ``/v1/auth/login`` and 403
text or JSON bodies when auth fails, 404 for the v3 paths.  With ``apis={"v3"}`` it answers
like Nacos 3.1.0 with its v1 client API off: the v3 client API in the ``{"code", "message",
"data"}`` envelope (21003 for a heartbeat of an unknown instance), lists that hold unhealthy
instances and only the clusters asked for (DEFAULT when none), the admin service list for
logged-in users only, and 410 for the v1 naming paths.  Every request is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import error as netError
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorUDP, IUDPTransport
from twisted.internet.testing import MemoryReactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from treq.testing import StubTreq
from zope.interface import implementer


@dataclass
class Seen:
    """One request as the fake server received it."""

    method: str
    path: str
    args: dict[str, str]
    headers: dict[str, str]
    uri: str = ""


@dataclass(eq=False)
class FakeNacos(Resource):
    isLeaf = True

    beat_interval_ms: int = 5000
    users: dict[str, str] = field(default_factory=dict)   # auth on when not empty
    token_ttl: int = 18000
    context: str = "/nacos"
    instances: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    #: path → (status, body, content type) answered once instead of the real thing
    failures: dict[str, list[tuple[int, bytes, str]]] = field(default_factory=dict)
    hold_beats: bool = False
    held: list[tuple[Request, dict[str, str]]] = field(default_factory=list)
    extra_hosts: list[dict[str, Any]] = field(default_factory=list)
    apis: set[str] = field(default_factory=lambda: {"v1"})

    def __post_init__(self) -> None:
        Resource.__init__(self)

    # ------------------------------------------------------------------ test helpers

    def forget(self) -> None:
        """What a Nacos restart does to ephemeral instances."""
        self.instances.clear()

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def fail_next(self, path: str, status: int, body: bytes | str,
                  ctype: str = "text/plain;charset=UTF-8") -> None:
        raw = body.encode() if isinstance(body, str) else body
        self.failures.setdefault(path, []).append((status, raw, ctype))

    def seen(self, path: str, method: Optional[str] = None) -> list[Seen]:
        return [r for r in self.requests
                if r.path == path and (method is None or r.method == method)]

    def release_beats(self) -> None:
        held, self.held = self.held, []
        for request, args in held:
            request.write(self._beat_answer(args))
            request.finish()

    # ------------------------------------------------------------------ the server

    def render(self, request: Request) -> Any:
        path = request.path.decode()
        if path.startswith(self.context):
            path = path[len(self.context):]
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if request.method != b"POST":  # like Spring's FormContentFilter for PUT and DELETE
            args.update(parse_qsl(request.content.read().decode()))
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append(Seen(request.method.decode(), path, args, headers,
                                  request.uri.decode()))
        if self.failures.get(path):
            status, body, ctype = self.failures[path].pop(0)
            return self._answer(request, status, body, ctype)
        if path.startswith("/v1/") and "v1" not in self.apis:  # 3.1.0, switch off
            inner = {"code": 40000, "message": "Current API will be deprecated, please use "
                     "API(s) `GET ${contextPath:nacos}/v3/client/ns/instance/list` instead, "
                     "or set `nacos.core.api.compatibility.client.enabled=true` in "
                     "application.properties."}
            return self._json(request, {"timestamp": "2026-11-30T10:44:25.471+00:00",
                                        "status": 410, "error": "Gone",
                                        "message": json.dumps(inner),
                                        "path": self.context + path}, 410)
        if path.startswith("/v3/") and "v3" not in self.apis:
            return self._spring_error(request, 404, "No static resource", path)
        if path in ("/v1/auth/login", "/v3/auth/user/login"):
            return self._login(request, args, path)
        if self.users:
            token = headers.get("authorization", "").removeprefix("Bearer ")
            token = token or args.get("accessToken", "")
            if not token:
                return self._spring_error(request, 403, "user not found!", path)
            if token not in self.tokens:
                return self._spring_error(request, 403, "token invalid!", path)
        route = (request.method.decode(), path)
        if route == ("POST", "/v1/ns/instance"):
            return self._register(request, args)
        if route == ("DELETE", "/v1/ns/instance"):
            self.instances.pop(self._key(args), None)
            return self._answer(request, 200, b"ok")
        if route == ("PUT", "/v1/ns/instance/beat"):
            return self._beat(request, args)
        if route == ("GET", "/v1/ns/instance/list"):
            return self._list(request, args)
        if route == ("GET", "/v1/ns/service/list"):
            return self._services(request, args)
        if route == ("POST", "/v3/client/ns/instance"):
            if args.get("heartBeat") == "true":
                known = self._key(args) in self.instances
                return self._envelope(request, "ok" if known else None,
                                      code=0 if known else 21003,
                                      message="success" if known else "instance not found")
            self._register(request, args)
            return self._envelope(request, "ok")
        if route == ("DELETE", "/v3/client/ns/instance"):
            self.instances.pop(self._key(args), None)
            return self._envelope(request, "ok")
        if route == ("GET", "/v3/client/ns/instance/list"):
            return self._list_v3(request, args)
        if route == ("GET", "/v3/admin/ns/service/list"):
            return self._admin_services(request, args, headers)
        return self._spring_error(request, 501, f"no such api:{route[0]}:{path}", path)

    def _envelope(self, request: Request, data: Any, code: int = 0,
                  message: str = "success", status: int = 200) -> bytes:
        return self._json(request, {"code": code, "message": message, "data": data}, status)

    def _list_v3(self, request: Request, args: dict[str, str]) -> bytes:
        if not args.get("serviceName"):
            return self._envelope(request, "Required parameter 'serviceName' type String is "
                                  "not present", code=10000, message="parameter missing",
                                  status=400)
        group = args.get("groupName") or "DEFAULT_GROUP"
        clusters = [c for c in (args.get("clusterName") or "DEFAULT").split(",") if c]
        hosts = [dict(h) for (ns, g, s, c, _, _), h in self.instances.items()
                 if ns == (args.get("namespaceId") or "public") and g == group
                 and s == args["serviceName"] and c in clusters and h["enabled"]]
        return self._envelope(request, hosts + self.extra_hosts)

    def _admin_services(self, request: Request, args: dict[str, str],
                        headers: dict[str, str]) -> bytes:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:  # 3.x guards its admin API even with auth off
            return self._spring_error(request, 403, "Code: 401, Message: User not found!",
                                      "/v3/admin/ns/service/list")
        names = sorted({(g, s) for (ns, g, s, _, _, _) in self.instances
                        if ns == args.get("namespaceId", "public")
                        and args.get("groupNameParam", "") in g})
        size, page = int(args.get("pageSize", 10)), int(args.get("pageNo", 1))
        items = [{"name": s, "groupName": g} for g, s in names]
        return self._envelope(request, {"totalCount": len(items), "pageNumber": page,
                                        "pagesAvailable": 1,
                                        "pageItems": items[(page - 1) * size:page * size]})

    def _answer(self, request: Request, status: int, body: bytes,
                ctype: str = "text/plain;charset=UTF-8") -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype.encode())
        return body

    def _json(self, request: Request, data: Any, status: int = 200) -> bytes:
        return self._answer(request, status, json.dumps(data).encode(), "application/json")

    def _spring_error(self, request: Request, status: int, message: str, path: str) -> bytes:
        return self._json(request, {"timestamp": "2026-11-25T06:41:55.955+00:00",
                                    "status": status, "error": "Forbidden",
                                    "message": message, "path": self.context + path}, status)

    def _login(self, request: Request, args: dict[str, str], path: str) -> bytes:
        user, password = args.get("username", ""), args.get("password", "")
        if path.startswith("/v3/") and self.users.get(user) != password:  # as 3.1.0 does
            if user in self.users:
                return self._spring_error(request, 500, "No message available", path)
            return self._spring_error(request, 403, "Access Denied", path)
        if user not in self.users:
            return self._answer(request, 500, f"caused: User {user} not found;".encode())
        if self.users[user] != password:
            return self._answer(request, 403, b"user not found!")
        token = f"token-{len(self.tokens) + len(self.requests)}"
        self.tokens.add(token)
        return self._json(request, {"accessToken": token, "tokenTtl": self.token_ttl,
                                    "globalAdmin": True, "username": user})

    @staticmethod
    def _key(args: dict[str, str]) -> tuple:
        return (args.get("namespaceId", "public"), args.get("groupName", "DEFAULT_GROUP"),
                args["serviceName"], args.get("clusterName", "DEFAULT"), args["ip"],
                int(args["port"]))

    def _register(self, request: Request, args: dict[str, str]) -> bytes:
        if "ip" not in args:
            return self._answer(request, 400, b"caused: Param 'ip' is required.;")
        namespace, group, service, cluster, ip, port = key = self._key(args)
        self.instances[key] = {
            "instanceId": f"{ip}#{port}#{cluster}#{group}@@{service}", "ip": ip, "port": port,
            "weight": float(args.get("weight", 1.0)), "healthy": True,
            "enabled": args.get("enabled", "true") == "true", "ephemeral": True,
            "clusterName": cluster, "serviceName": f"{group}@@{service}",
            "metadata": json.loads(args.get("metadata") or "{}"),
        }
        return self._answer(request, 200, b"ok")

    def _beat(self, request: Request, args: dict[str, str]) -> Any:
        request.setHeader(b"content-type", b"application/json")
        if self.hold_beats:  # answered by release_beats(), as the state is then
            self.held.append((request, args))
            return NOT_DONE_YET
        return self._beat_answer(args)

    def _beat_answer(self, args: dict[str, str]) -> bytes:
        instance = self.instances.get(self._key(args))
        known = instance is not None or "beat" in args
        # like Nacos: the instance's preserved.heart.beat.interval, else the server's
        own = str((instance or {}).get("metadata", {}).get("preserved.heart.beat.interval"))
        interval = int(own) if own.isdigit() else self.beat_interval_ms
        return json.dumps({"clientBeatInterval": interval,
                           "code": 10200 if known else 20404,
                           "lightBeatEnabled": True}).encode()

    def _services(self, request: Request, args: dict[str, str]) -> bytes:
        """Nacos's paged service list: {"count": total, "doms": [names on this page]}."""
        names = sorted({s for (ns, g, s, _, _, _) in self.instances
                        if ns == args.get("namespaceId", "public")
                        and g == args.get("groupName", "DEFAULT_GROUP")})
        size, page = int(args.get("pageSize", 10)), int(args.get("pageNo", 1))
        return self._json(request, {"count": len(names),
                                    "doms": names[(page - 1) * size:page * size]})

    def _list(self, request: Request, args: dict[str, str]) -> bytes:
        group = args.get("groupName", "DEFAULT_GROUP")
        clusters = [c for c in args.get("clusters", "").split(",") if c]
        hosts = [dict(h) for (ns, g, s, c, _, _), h in self.instances.items()
                 if ns == args.get("namespaceId", "public") and g == group
                 and s == args["serviceName"] and (not clusters or c in clusters)
                 and h["enabled"]]
        hosts += self.extra_hosts
        return self._json(request, {
            "name": f"{group}@@{args['serviceName']}", "groupName": group,
            "clusters": args.get("clusters", ""), "cacheMillis": 10000, "hosts": hosts,
            "lastRefTime": 1795588915754 + len(self.requests), "checksum": "",
            "allIPs": False, "reachProtectionThreshold": False, "valid": True})


class Network:
    """
    A treq-like client over several fake servers, keyed by ``host:port``: a server listed
    in ``down`` refuses connections, one in ``hung`` never answers.  ``tried`` records the
    order in which servers were asked.
    """

    def __init__(self, servers: dict[str, Resource]) -> None:
        self._stubs = {netloc: StubTreq(resource) for netloc, resource in servers.items()}
        self.down: set[str] = set()
        self.hung: set[str] = set()
        self.tried: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> "Deferred[Any]":
        netloc = urlsplit(url).netloc
        self.tried.append(netloc)
        if netloc in self.down or netloc not in self._stubs:
            return fail(netError.ConnectionRefusedError("Connection refused"))
        if netloc in self.hung:
            return Deferred()
        return self._stubs[netloc].request(method, url, **kwargs)

    def flush(self) -> None:
        """Deliver answers that resources finished later (``NOT_DONE_YET``)."""
        for stub in self._stubs.values():
            stub.flush()


@implementer(IUDPTransport)
class FakeUDPPort:
    """A listening UDP port of ``UDPReactor``: records what its protocol writes."""

    def __init__(self, protocol: Any, host: str, port: int) -> None:
        self.protocol = protocol
        self.host, self.port = host, port
        self.written: list[tuple[bytes, Any]] = []
        self.listening = True
        protocol.makeConnection(self)

    def write(self, packet: bytes, addr: Any = None) -> None:
        self.written.append((packet, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        self.listening = False
        self.protocol.doStop()

    def connect(self, host: str, port: int) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def setBroadcastAllowed(self, enabled: bool) -> None:  # pragma: no cover - unused
        pass

    def getBroadcastAllowed(self) -> bool:  # pragma: no cover - unused
        return False


@implementer(IReactorUDP)
class UDPReactor(MemoryReactor):
    """A MemoryReactor that can also "listen" on UDP (``ports``); ``refuse`` makes it fail."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []
        self.refuse: Optional[BaseException] = None

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> FakeUDPPort:
        if self.refuse is not None:
            raise self.refuse
        udp = FakeUDPPort(protocol, interface, port or 40000 + len(self.ports))
        self.ports.append(udp)
        return udp


def push_packet(name: str, stamp: int = 1234, hosts: Optional[list] = None,
                kind: str = "dom") -> bytes:
    """A datagram as Nacos 2.3.2's UdpPushService sends it (not gzip'd)."""
    info = {"name": name, "clusters": "", "cacheMillis": 10000, "hosts": hosts or [],
            "lastRefTime": 1795588915754}
    return json.dumps({"type": kind, "data": json.dumps(info), "lastRefTime": stamp}).encode()
