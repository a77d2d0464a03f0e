"""
An in-memory etcd v3 JSON gateway for unit tests, served through ``treq.testing.StubTreq``.

It answers like the real gateway (see shared/ref/etcd-v3-gateway.md: base64 keys, int64s as
strings, omitted zero fields, ``{"result":…}`` stream lines, error bodies) for the calls the
registry makes.  Watches stay open: the test writes their lines with ``WatchStream.send``
and calls ``flush``.  A ``Router`` puts several endpoint URLs in front of it, some of which
can refuse connections or hang, for failover tests.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet import defer, error
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from treq.testing import StubTreq

HEADER_BASE = {"cluster_id": "1", "member_id": "2", "raft_term": "2"}


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class Call:
    """One request as the fake saw it."""

    path: str
    body: Any
    headers: dict[str, list[str]]

    @property
    def token(self) -> Optional[str]:
        values = self.headers.get("authorization")
        return values[0] if values else None


@dataclass
class WatchStream:
    """An open watch request; ``send`` writes raw bytes of the response body."""

    request: Request
    bodies: list[dict[str, Any]]
    closed: bool = False

    def send(self, data: bytes) -> None:
        self.request.write(data)

    def line(self, result: dict[str, Any], header_rev: int = 0) -> bytes:
        result = {"header": dict(HEADER_BASE, revision=str(header_rev)), **result}
        return json.dumps({"result": result}).encode() + b"\n"

    def end(self) -> None:
        self.request.finish()

    @property
    def start_revision(self) -> int:
        return int(self.bodies[0]["create_request"]["start_revision"])


@dataclass(eq=False)
class FakeEtcd(Resource):
    """Just enough etcd: leases, put/range/revoke, auth, streaming watch."""

    isLeaf = True

    revision: int = 1
    kv: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    next_lease: int = 7587858137290000001
    users: dict[str, str] = field(default_factory=dict)   # auth is on when not empty
    tokens: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    watches: list[WatchStream] = field(default_factory=list)
    #: when set, KV reads and writes outside this key prefix are denied (a limited role).
    allowed_prefix: Optional[bytes] = None
    #: path → list of (status, body) answers given before the normal one.
    scripted: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Resource.__init__(self)

    # ------------------------------------------------------------------ test helpers

    def fail_next(self, path: str, status: int, message: str, code: int) -> None:
        body = {"error": message, "code": code, "message": message}
        self.scripted.setdefault(path, []).append((status, body))

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def put_raw(self, key: str, value: str, lease: Optional[str] = None) -> None:
        self._put(key.encode(), value.encode(), lease)

    def value(self, key: str) -> Optional[bytes]:
        entry = self.kv.get(key.encode())
        return None if entry is None else entry["value"]

    def lease_of(self, key: str) -> Optional[str]:
        entry = self.kv.get(key.encode())
        return None if entry is None else entry.get("lease")

    def expire(self, lease: str) -> None:
        """The lease runs out: it and its keys are gone."""
        self.leases.pop(lease, None)
        for key in [k for k, v in self.kv.items() if v.get("lease") == lease]:
            del self.kv[key]
            self.revision += 1

    def wipe(self) -> None:
        """etcd restarted with an empty data dir."""
        self.kv.clear()
        self.leases.clear()

    # ------------------------------------------------------------------ HTTP

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode()
        raw = request.content.read()
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        if path == "/v3/watch":
            bodies = [json.loads(line) for line in raw.split(b"\n") if line.strip()]
            self.calls.append(Call(path, bodies, headers))
            stream = WatchStream(request, bodies)
            self.watches.append(stream)
            request.notifyFinish().addBoth(lambda _: setattr(stream, "closed", True))
            request.setHeader("content-type", "application/json")
            request.write(b"")  # send the headers now, like the gateway does
            return NOT_DONE_YET
        body = json.loads(raw)
        call = Call(path, body, headers)
        self.calls.append(call)
        if self.scripted.get(path):
            status, answer = self.scripted[path].pop(0)
        else:
            status, answer = self._answer(call)
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return json.dumps(answer).encode() + (b"\n" if path == "/v3/lease/keepalive" else b"")

    def _header(self) -> dict[str, Any]:
        return {"header": dict(HEADER_BASE, revision=str(self.revision))}

    @staticmethod
    def _error(status: int, message: str, code: int) -> tuple[int, Any]:
        return status, {"error": message, "code": code, "message": message}

    def _answer(self, call: Call) -> tuple[int, Any]:
        body, path = call.body, call.path
        if path == "/v3/auth/authenticate":
            if not self.users:
                return self._error(400, "etcdserver: authentication is not enabled", 9)
            if self.users.get(body.get("name")) != body.get("password"):
                return self._error(
                    400, "etcdserver: authentication failed, invalid user ID or password", 3)
            token = f"tok{len(self.tokens) + 1}.{self.revision}"
            self.tokens.add(token)
            return 200, {**self._header(), "token": token}
        if self.users and not path.startswith("/v3/lease/"):
            if call.token is None:
                return self._error(400, "etcdserver: user name is empty", 3)
            if call.token not in self.tokens:
                return self._error(401, "etcdserver: invalid auth token", 16)
        keys = ([unb64(op["request_range"]["key"]) for op in body.get("success", [])]
                if path == "/v3/kv/txn" else [unb64(body["key"])] if "key" in body else [])
        if (self.allowed_prefix is not None and path.startswith("/v3/kv/")
                and not all(k.startswith(self.allowed_prefix) for k in keys)):
            return self._error(403, "etcdserver: permission denied", 7)
        if path == "/v3/lease/grant":
            lease = str(self.next_lease)
            self.next_lease += 1
            self.leases[lease] = int(body["TTL"])
            return 200, {**self._header(), "ID": lease, "TTL": str(body["TTL"])}
        if path == "/v3/lease/keepalive":
            lease = str(body["ID"])
            result = {**self._header(), "ID": lease}
            if lease in self.leases:
                result["TTL"] = str(self.leases[lease])
            return 200, {"result": result}
        if path == "/v3/lease/revoke":
            if str(body["ID"]) not in self.leases:
                return self._error(404, "etcdserver: requested lease not found", 5)
            self.expire(str(body["ID"]))
            return 200, self._header()
        if path == "/v3/kv/put":
            lease = body.get("lease")
            if lease is not None and str(lease) not in self.leases:
                return self._error(404, "etcdserver: requested lease not found", 5)
            self._put(unb64(body["key"]), unb64(body.get("value", "")), lease)
            return 200, self._header()
        if path == "/v3/kv/range":
            return 200, self._range(body)
        if path == "/v3/kv/txn":  # no compares: the success ops, ranges only
            responses = [{"response_range": {k: v for k, v in self._range(
                op["request_range"]).items() if k != "header"}}
                for op in body.get("success", [])]
            return 200, {**self._header(), "succeeded": True, "responses": responses}
        return 404, "404 page not found"

    def _put(self, key: bytes, value: bytes, lease: Optional[str]) -> None:
        self.revision += 1
        entry: dict[str, Any] = {"value": value, "mod_revision": self.revision}
        if lease is not None:
            entry["lease"] = str(lease)
        self.kv[key] = entry

    def _range(self, body: dict[str, Any]) -> dict[str, Any]:
        start = unb64(body["key"])
        end = unb64(body["range_end"]) if body.get("range_end") else None
        kvs = [{"key": b64(k), "value": b64(v["value"]), "mod_revision": str(v["mod_revision"]),
                **({"lease": v["lease"]} if "lease" in v else {})}
               for k, v in sorted(self.kv.items())
               if (k == start if end is None else start <= k < end)]
        answer = self._header()
        if kvs:
            answer.update(kvs=kvs, count=str(len(kvs)))
        return answer


class Router:
    """
    A treq-like client in front of one ``StubTreq``: requests to URLs marked ``down``
    are refused, to URLs marked ``hung`` never answer (until cancelled).
    """

    def __init__(self, fake: FakeEtcd) -> None:
        self.stub = StubTreq(fake)
        self.flush = self.stub.flush
        self.down: set[str] = set()
        self.hung: set[str] = set()
        self.tried: list[str] = []   # base URL of every request, in order
        self.holding: set[str] = set()  # paths whose requests wait for release()
        self._held: list[tuple[str, dict[str, Any], defer.Deferred[Any]]] = []

    def release(self) -> None:
        """Send the requests held so far on to the fake, in order."""
        held, self._held = self._held, []
        for url, kwargs, d in held:
            self.stub.post(url, **kwargs).chainDeferred(d)

    def post(self, url: str, /, **kwargs: Any) -> "defer.Deferred[Any]":
        base = url[: url.index("/v3/")]
        self.tried.append(base)
        if base in self.down:
            return defer.fail(error.ConnectionRefusedError())
        if base in self.hung:
            # Like twisted.web's Agent: a cancelled request fails with the cancel wrapped.
            return defer.Deferred(lambda d: d.errback(
                ResponseNeverReceived([Failure(defer.CancelledError())])))
        if url[len(base):] in self.holding:
            d: defer.Deferred[Any] = defer.Deferred()
            self._held.append((url, kwargs, d))
            return d
        return self.stub.post(url, **kwargs)


def watch_line(events: list[dict[str, Any]], revision: int) -> bytes:
    return json.dumps({"result": {"header": dict(HEADER_BASE, revision=str(revision)),
                                  "events": events}}).encode() + b"\n"


def put_event(key: str, value: str, mod_revision: int) -> dict[str, Any]:
    return {"kv": {"key": b64(key), "value": b64(value), "mod_revision": str(mod_revision),
                   "create_revision": str(mod_revision), "version": "1"}}


def delete_event(key: str, mod_revision: int) -> dict[str, Any]:
    return {"type": "DELETE", "kv": {"key": b64(key), "mod_revision": str(mod_revision)}}

