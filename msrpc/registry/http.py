"""
HTTP plumbing shared by the registry backends that talk to a server (etcd, Nacos):
a treq client with optional TLS, a list of endpoints with failover, and request timeouts.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar

from treq.client import HTTPClient
from twisted.internet import defer, error as netError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import client as webClient
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from msrpc.errors import RegistryUnavailable
from msrpc.tls import TLSFiles, client_creator

T = TypeVar("T")

log = Logger()

#: Requests one registry client has on the wire at once (more wait for a slot): a client
#: resolving a thousand services cold must not open a thousand connections, nor make
#: its server time some of them out.
MAX_IN_FLIGHT = 16


def request_slots(limit: int = MAX_IN_FLIGHT) -> defer.DeferredSemaphore:
    """Slots for a client's requests: ``slots.run(send)`` waits for one, then sends."""
    return defer.DeferredSemaphore(limit)

#: Failures that mean "this endpoint did not answer": try the next one.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    netError.ConnectError,          # refused, DNS, no route, TCP timeout (subclasses)
    netError.ConnectionLost,
    netError.ConnectionDone,
    netError.TimeoutError,
    defer.TimeoutError,             # with_timeout turns its own cancel into this
    webClient.ResponseNeverReceived,
    webClient.RequestTransmissionFailed,
    webClient.ResponseFailed,
    ConnectionError,
    TimeoutError,
)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """Verify the server against our CA (or the system's) and present a client cert if given."""

    def __init__(self, files: TLSFiles) -> None:
        self._creator = client_creator(files)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self._creator(hostname.decode("ascii"))


class _QuietHTTP11ClientFactory(webClient._HTTP11ClientFactory):  # type: ignore[misc]
    """No "Starting factory" log line for every pooled connection a registry opens."""

    noisy = False


def make_pool(reactor: Any) -> webClient.HTTPConnectionPool:
    """The persistent pool our clients use; its owner closes it (``closeCachedConnections``)."""
    pool = webClient.HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietHTTP11ClientFactory
    pool.maxPersistentPerHost = 4
    pool.retryAutomatically = False  # we fail over ourselves; never replay a POST blindly
    return pool


def make_http_client(reactor: Any, tls: Optional[TLSFiles] = None,
                     pool: Optional[webClient.HTTPConnectionPool] = None) -> HTTPClient:
    """
    A treq client with a persistent connection pool (and our TLS policy, if any).  Pass your
    own ``pool`` (see ``make_pool``) to close its cached connections when you are done.
    """
    if pool is None:
        pool = make_pool(reactor)
    if tls is not None and tls.enabled:
        agent = webClient.Agent(reactor, contextFactory=_TLSPolicy(tls), pool=pool)
    else:
        agent = webClient.Agent(reactor, pool=pool)
    return HTTPClient(agent)


class Endpoints:
    """
    Base URLs of one registry cluster.  Requests go to the endpoint that last worked; on a
    connection failure the next one is tried, in order, until each had its turn.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        cleaned = [u.strip().rstrip("/") for u in urls if u and u.strip()]
        if not cleaned:
            raise ValueError("at least one registry endpoint is required")
        self.urls: list[str] = cleaned
        self._preferred = 0

    @classmethod
    def parse(cls, spec: str | Sequence[str], default_scheme: str = "http") -> "Endpoints":
        """``"h1:2379,https://h2:2379"`` → Endpoints (a bare host:port gets the scheme)."""
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        urls = []
        for part in parts:
            part = part.strip()
            if part and "://" not in part:
                part = f"{default_scheme}://{part}"
            urls.append(part)
        return cls(urls)

    @property
    def current(self) -> str:
        return self.urls[self._preferred]

    def order(self) -> list[str]:
        n = len(self.urls)
        return [self.urls[(self._preferred + i) % n] for i in range(n)]

    def prefer(self, url: str) -> None:
        self._preferred = self.urls.index(url)

    async def attempt(self, request: Callable[[str], Awaitable[T]], what: str,
                      backend: str) -> T:
        """
        Run ``request(base_url)`` against each endpoint in turn until one answers.  Only
        connection-level failures move on; an HTTP error answer is returned to the caller.
        """
        errors: list[str] = []
        for url in self.order():
            try:
                result = await request(url)
            except Exception as e:
                if not is_connection_error(e):
                    raise
                errors.append(f"{url}: {e.__class__.__name__}: {e}".rstrip(": "))
                log.debug("{backend} endpoint {url} failed for {what}: {error!r}",
                          backend=backend, url=url, what=what, error=e)
                continue
            if url != self.current:
                log.info("{backend}: failed over to {url}", backend=backend, url=url)
                self.prefer(url)
            return result
        raise RegistryUnavailable(f"no endpoint answered {what}: " + "; ".join(errors),
                                  backend=backend)


def with_timeout(d: "defer.Deferred[T]", timeout: Optional[float],
                 clock: IReactorTime) -> "defer.Deferred[T]":
    """Cancel ``d`` after ``timeout`` seconds (a hung endpoint must not stall us forever)."""
    if timeout:
        d.addTimeout(timeout, clock)
    return d


__all__ = ["CONNECTION_ERRORS", "is_connection_error", "TLSFiles", "make_pool",
           "make_http_client", "Endpoints", "with_timeout", "request_slots", "MAX_IN_FLIGHT"]
