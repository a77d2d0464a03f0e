"""
A small client for etcd's v3 JSON gateway (``POST /v3/...``), the only way msrpc talks to etcd.

It knows the gateway's encoding (base64 keys and values, int64s as strings, omitted zero
fields), its two error shapes, the raw ``Authorization: <token>`` header and the NDJSON
streams, and puts a timeout on every request and fails over across the cluster's endpoints.
What to do with leases and watches is ``msrpc.registry.etcd``'s business.
"""

from __future__ import annotations

import base64
import json
from typing import (Any, Callable, Coroutine, Optional, Protocol as TypingProtocol, Sequence,
                    TypeVar)

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

import treq

from msrpc.errors import RegistryAuthError, RegistryError
from msrpc.registry.http import Endpoints, request_slots, with_timeout

T = TypeVar("T")

BACKEND = "etcd"

#: gRPC status codes the gateway puts in its error bodies.
NOT_FOUND = 5
PERMISSION_DENIED = 7
UNAVAILABLE = 14
UNAUTHENTICATED = 16

log = Logger()


class HTTPPoster(TypingProtocol):
    """What we need of a treq ``HTTPClient`` (``treq.testing.StubTreq`` has it too)."""

    def post(self, url: str, /, *, data: bytes = ..., headers: Any = ...,
             unbuffered: bool = ...) -> "defer.Deferred[Any]":
        ...


# --------------------------------------------------------------------------- encoding


def b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def header_revision(message: dict[str, Any]) -> int:
    return int(message.get("header", {}).get("revision", 0))


# --------------------------------------------------------------------------- errors


class EtcdError(RegistryError):
    """etcd answered with an error; ``code`` is its gRPC status code (0 if unknown)."""

    def __init__(self, message: str, *, status: Optional[int] = None, code: int = 0) -> None:
        super().__init__(message, backend=BACKEND, status=status, details={"code": code})
        self.code = code

    @property
    def lease_not_found(self) -> bool:
        return self.code == NOT_FOUND and "lease not found" in self.message


class EtcdAuthError(EtcdError, RegistryAuthError):
    """etcd rejected our credentials or our permissions."""


class _EndpointUnavailable(ConnectionError):
    """This member answered 503 (no leader, request timed out): try the next endpoint."""


class _TokenRejected(Exception):
    """The token was missing, expired or invalid: authenticate again."""

    def __init__(self, error: EtcdError) -> None:
        super().__init__(str(error))
        self.error = error


def parse_error(status: int, body: bytes) -> EtcdError:
    """Build the error for a non-200 unary answer (``{"error","code","message"}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("error") or "")
        code = int(data.get("code", 0))
    else:
        message, code = body.decode("utf-8", "replace").strip(), 0
    cls = EtcdAuthError if code in (PERMISSION_DENIED, UNAUTHENTICATED) else EtcdError
    return cls(message or f"HTTP {status}", status=status, code=code)


def stream_error(line: dict[str, Any]) -> EtcdError:
    """The error line that ends a stream (``{"error":{"grpc_code","http_code","message"}}``)."""
    err = line.get("error")
    if isinstance(err, dict):
        return EtcdError(str(err.get("message", "stream error")),
                         status=err.get("http_code"), code=int(err.get("grpc_code", 0)))
    return EtcdError(str(err))


def unwrap(line: dict[str, Any]) -> dict[str, Any]:
    """One decoded NDJSON stream line → its ``result`` (raises the in-band stream error)."""
    if "result" in line:
        return line["result"]
    if "error" in line:
        raise stream_error(line)
    return line


# --------------------------------------------------------------------------- streams


class LineStream(Protocol):
    """
    Receives a streaming (chunked) response body and hands each complete NDJSON line to
    ``on_line``; chunks need not align with lines.  ``finished`` fires when the body ends,
    fails with whatever ``on_line`` raised (the connection is then closed, since etcd
    leaves a canceled watch open), and cancelling it closes the connection.
    """

    def __init__(self, on_line: Callable[[dict[str, Any]], None],
                 max_line: int = 64 * 1024 * 1024) -> None:
        self._on_line = on_line
        self._max_line = max_line
        self._buffer = b""
        self.finished: defer.Deferred[None] = defer.Deferred(lambda _: self._abort())

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        try:
            for line in lines:
                self._deliver(line)
            if len(self._buffer) > self._max_line:
                raise EtcdError(f"stream line longer than {self._max_line} bytes")
        except BaseException:
            failure = Failure()
            self._abort()
            if not self.finished.called:
                self.finished.errback(failure)

    def _deliver(self, line: bytes) -> None:
        if line.strip() and not self.finished.called:
            self._on_line(json.loads(line))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # a TCP transport

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            try:
                self._deliver(self._buffer)  # a last line without its newline
            except BaseException:
                self.finished.errback(Failure())
                return
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


# --------------------------------------------------------------------------- the client


class EtcdGateway:
    """
    One etcd cluster.  ``call`` posts a JSON request to the preferred endpoint with a
    timeout, fails over on connection errors and 503s, maps errors to ``EtcdError``, and
    keeps an auth token fresh when credentials are given (never logging either).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, http: HTTPPoster, endpoints: Endpoints, *,
                 timeout: float = 5.0, user: Optional[str] = None,
                 password: Optional[str] = None) -> None:
        if (user is None) != (password is None):
            raise ValueError("etcd auth needs both a user and a password")
        self.clock = clock
        self.endpoints = endpoints
        self.timeout = timeout
        self._http = http
        self._user = user
        self._password = password
        self._token: Optional[str] = None
        self._auth_off = False      # the server said auth is not enabled
        self._auth_lock = defer.DeferredLock()
        self._inflight: set[defer.Deferred[Any]] = set()
        self._slots = request_slots()

    def _track(self, d: "defer.Deferred[T]") -> "defer.Deferred[T]":
        self._inflight.add(d)

        def done(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        return d.addBoth(done)

    def close(self) -> None:
        """Cancel every request still in flight (their callers see CancelledError)."""
        for d in list(self._inflight):
            d.cancel()

    # ----------------------------------------------------------------- unary calls

    def call(self, path: str, body: dict[str, Any]) -> "defer.Deferred[dict[str, Any]]":
        """POST ``body`` to ``/v3/<path>``; the decoded answer, or an ``EtcdError``."""
        return self._track(defer.Deferred.fromCoroutine(self._call(path, body)))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        token = await self.token()
        try:
            return await self._call_once(path, body, token)
        except _TokenRejected:
            token = await self.refresh_token(stale=token)
        try:
            return await self._call_once(path, body, token)
        except _TokenRejected as rejected:
            raise EtcdAuthError(rejected.error.message, status=rejected.error.status,
                                code=rejected.error.code)

    def _call_once(self, path: str, body: dict[str, Any],
                   token: Optional[str]) -> "defer.Deferred[dict[str, Any]]":
        data = json.dumps(body).encode("utf-8")

        async def once(url: str) -> dict[str, Any]:
            response = await self._post(url + path, data, token)
            content = await treq.content(response)
            if response.code != 200:
                raise self._classify(parse_error(response.code, content))
            # Stream endpoints (keepalive) answer one ``{"result": ...}`` line per request.
            return unwrap(json.loads(content))

        return self._attempt(path, once)

    def _attempt(self, path: str,
                 once: Callable[[str], Coroutine[Any, Any, T]]) -> "defer.Deferred[T]":
        """
        ``once(url)`` on each endpoint in turn, each try in a request slot (a stream holds
        its slot until its headers are in) and cut off after the timeout once it has one.
        """
        return defer.Deferred.fromCoroutine(self.endpoints.attempt(
            lambda url: self._slots.run(lambda: with_timeout(
                defer.Deferred.fromCoroutine(once(url)), self.timeout, self.clock)),
            what=path, backend=BACKEND))

    async def _post(self, url: str, data: bytes, token: Optional[str],
                    **kwargs: Any) -> IResponse:
        """
        One POST.  A cancelled request fails as ``ResponseNeverReceived([CancelledError])``;
        we turn that back into ``CancelledError`` so that a cancel from above (close,
        watch.stop) stops here instead of failing over, while ``with_timeout`` still turns
        its own cancel into a ``TimeoutError`` that does fail over.
        """
        try:
            return await self._http.post(url, data=data, headers=self._headers(token),
                                         **kwargs)
        except Exception as e:
            reasons = getattr(e, "reasons", None)
            if reasons and all(r.check(defer.CancelledError) for r in reasons):
                raise defer.CancelledError() from e
            raise

    def _headers(self, token: Optional[str]) -> dict[str, list[str]]:
        headers = {"Content-Type": ["application/json"]}
        if token:
            headers["Authorization"] = [token]  # raw token; "Bearer x" is rejected
        return headers

    def _classify(self, error: EtcdError) -> Exception:
        """Turn an error answer into what the caller should see (or retry on)."""
        if error.status == 503 or error.code == UNAVAILABLE:
            return _EndpointUnavailable(f"{error.message} (HTTP {error.status})")
        if error.code == UNAUTHENTICATED or "user name is empty" in error.message:
            if self._user is not None:
                return _TokenRejected(error)
            return EtcdAuthError(f"etcd requires authentication (--etcd-user): "
                                 f"{error.message}", status=error.status, code=error.code)
        return error

    # ----------------------------------------------------------------- streams

    def open_stream(self, path: str, requests: Sequence[dict[str, Any]]
                    ) -> "defer.Deferred[tuple[IResponse, Optional[str]]]":
        """
        Start a streaming request (watch) carrying one or more request objects; fires with
        the response once its headers are in (within the timeout) and the token it used.
        In-band errors (``canceled`` lines) are the caller's to read.
        """

        async def open_() -> tuple[IResponse, Optional[str]]:
            token = await self.token()
            data = b"\n".join(json.dumps(r).encode("utf-8") for r in requests)

            async def once(url: str) -> IResponse:
                response = await self._post(url + path, data, token, unbuffered=True)
                if response.code != 200:
                    content = await treq.content(response)
                    error = self._classify(parse_error(response.code, content))
                    raise (error.error if isinstance(error, _TokenRejected) else error)
                return response

            return await self._attempt(path, once), token

        return self._track(defer.Deferred.fromCoroutine(open_()))

    # ----------------------------------------------------------------- auth

    async def token(self) -> Optional[str]:
        """The current token, authenticating first if we have credentials but no token."""
        if self._user is None or self._token is not None or self._auth_off:
            return self._token
        return await self.refresh_token(stale=None)

    async def refresh_token(self, stale: Optional[str]) -> Optional[str]:
        """
        Authenticate again unless another caller already replaced ``stale`` meanwhile
        (many requests may see the same expired token at once; one re-auth is enough).
        """
        if self._user is None:
            return None
        await self._auth_lock.acquire()
        try:
            if self._token == stale:
                self._token = await self._authenticate()
            return self._token
        finally:
            self._auth_lock.release()

    async def _authenticate(self) -> Optional[str]:
        try:
            answer = await self._call_once(
                "/v3/auth/authenticate", {"name": self._user, "password": self._password},
                token=None)
        except EtcdError as e:
            if "authentication is not enabled" in e.message:
                if not self._auth_off:
                    self.log.warn("etcd auth is not enabled; ignoring the etcd user "
                                  "{user!r}", user=self._user)
                self._auth_off = True
                return None
            if e.status == 400 or isinstance(e, EtcdAuthError):
                raise EtcdAuthError(e.message, status=e.status, code=e.code)
            raise
        self._auth_off = False
        token = answer.get("token")
        if not token:
            raise EtcdAuthError("etcd authenticate answered without a token")
        self.log.info("authenticated to etcd as {user!r}", user=self._user)
        return str(token)


__all__ = ["BACKEND", "EtcdGateway", "EtcdError", "EtcdAuthError", "HTTPPoster", "LineStream",
           "b64", "unb64", "prefix_end", "header_revision", "unwrap",
           "parse_error"]
