"""
The etcd registry (``--registry etcd``), spoken through etcd's v3 JSON gateway.

Layout: ``<prefix>/<service>/<instance-id>`` → ``ServiceInstance.to_json()``, bound to a
lease that a keepalive refreshes every TTL/3; a process that dies stops refreshing and its
keys vanish with the lease.  Lookups and watches also read msgo's plain layout, one key per
service (``<service>`` → ``"host:port"``), so msrpc clients find msgo servers.  A lookup is
one transaction reading both; every watch of a registry shares one stream (``etcd_watch``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from msrpc.errors import RegistryError
from msrpc.observe import RegistryEvents
from msrpc.registry.etcd_api import (
    EtcdAuthError, EtcdError, EtcdGateway, HTTPPoster, b64, header_revision, prefix_end,
    unb64)
from msrpc.registry.etcd_watch import Listing, WatchHub
from msrpc.registry.http import Endpoints, TLSFiles, make_http_client, make_pool
from msrpc.registry.instance import DIALECT_KEY, ServiceInstance, parse_address
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.registry.recent import RecentLookups
from msrpc.registry.registration import Registration

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/msrpc/services"
DEFAULT_TTL = 10.0
DEFAULT_TIMEOUT = 5.0
PASSWORD_ENV = "MSRPC_ETCD_PASSWORD"

Backoff = Callable[[int], float]


def default_backoff() -> Backoff:
    """Reconnect delays for watches: 0.2 s doubling up to 10 s, with jitter."""
    return backoffPolicy(initialDelay=0.2, maxDelay=10.0, factor=2.0)


class _Outage:
    """Logs the first failure of a run of failures and the recovery, not every retry."""

    def __init__(self, log: Logger) -> None:
        self.log = log
        self.failing = False

    def failed(self, what: str, error: BaseException, **fields: Any) -> None:
        if not self.failing:
            self.failing = True
            self.log.warn(what + ": {error}", error=error, **fields)

    def recovered(self, what: str, **fields: Any) -> None:
        if self.failing:
            self.failing = False
            self.log.info(what, **fields)


def _sorted(instances: Iterable[ServiceInstance]) -> list[ServiceInstance]:
    return sorted(instances, key=lambda i: (i.instance_id, i.address))


# --------------------------------------------------------------------------- registration


class _LeaseKeeper:
    """
    Keeps one key alive: grant a lease, put the key on it, keepalive every TTL/3.  When the
    lease is gone (expired during an outage, etcd restarted empty) it grants a new one and
    puts the key again; while etcd is unreachable it keeps trying on the same schedule.
    """

    log = Logger()

    def __init__(self, gateway: EtcdGateway, clock: IReactorTime, instance: ServiceInstance,
                 key: str, ttl: float, events: Optional[RegistryEvents] = None) -> None:
        self.gateway = gateway
        self.events = events
        self.instance = instance
        self.key = key
        self.ttl = ttl
        self.lease: Optional[str] = None
        self._value = b64(instance.to_json())
        self._outage = _Outage(self.log)
        self._loop = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self._beat()))
        self._loop.clock = clock
        self._loop_done: Optional[defer.Deferred[Any]] = None
        self._stopping = False

    async def start(self) -> None:
        """First registration: errors go to the caller, who decides whether to go on."""
        await self._establish()
        if self._stopping:  # closed while we were registering: leave nothing behind
            await self._revoke()
            raise RegistryError("the etcd registry was closed during registration",
                                backend="etcd")
        self._loop_done = self._loop.start(self.ttl / 3.0, now=False)

    async def _establish(self) -> None:
        """Grant a lease and put the key on it; ``self.lease`` is set only once both did."""
        ttl = max(1, math.ceil(self.ttl))  # etcd wants whole seconds; never shorter
        for attempt in (1, 2):
            grant = await self.gateway.call("/v3/lease/grant", {"TTL": ttl})
            lease = str(grant["ID"])
            try:
                await self.gateway.call("/v3/kv/put", {"key": b64(self.key),
                                                       "value": self._value, "lease": lease})
            except EtcdError as e:
                if not e.lease_not_found or attempt == 2:
                    raise
                self.log.warn("lease {lease} of {key} expired before the put; granting "
                              "another", lease=lease, key=self.key)
            else:
                self.lease = lease
                return

    async def _keepalive(self) -> bool:
        """Refresh the lease; False when etcd no longer knows it."""
        answer = await self.gateway.call("/v3/lease/keepalive", {"ID": self.lease})
        return int(answer.get("TTL", 0)) > 0  # an unknown lease comes back without TTL

    async def _beat(self) -> None:
        # Never raises: a failing call would stop the LoopingCall for good.
        try:
            if self.lease is None or not await self._keepalive():
                lost, self.lease = self.lease, None
                await self._establish()
                self.log.info("re-registered {service} at {address} as {key} with lease "
                              "{lease} (lease {lost} was lost)", service=self.instance.service,
                              address=self.instance.address, key=self.key, lease=self.lease,
                              lost=lost)
            self._outage.recovered("etcd answers again; {key} is kept alive", key=self.key)
        except Exception as e:
            if self.events is not None:
                self.events.error("keepalive", e)
            self._outage.failed("cannot keep {key} alive in etcd, retrying every {interval}s",
                                e, key=self.key, interval=round(self.ttl / 3.0, 3))

    async def stop(self) -> None:
        """Stop the keepalives (after any in flight) and revoke the lease, deleting the key."""
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        if self._loop_done is not None:
            await self._loop_done
        if await self._revoke():
            self.log.info("deregistered {service} at {address} ({key})",
                          service=self.instance.service, address=self.instance.address,
                          key=self.key)

    async def _revoke(self) -> bool:
        lease, self.lease = self.lease, None
        if lease is None:
            return False
        try:
            await self.gateway.call("/v3/lease/revoke", {"ID": lease})
        except EtcdError as e:
            if not e.lease_not_found:
                raise
        return True


# --------------------------------------------------------------------------- the registry


@implementer(IRegistry, IServiceCatalog)
class EtcdRegistry:
    """``IRegistry`` on an etcd cluster (3.4+), through its v3 JSON gateway."""

    name = "etcd"
    log = Logger()

    def __init__(self, reactor: IReactorTime,
                 endpoints: str | Sequence[str] | Endpoints = DEFAULT_ENDPOINTS, *,
                 http: Optional[HTTPPoster] = None, prefix: str = DEFAULT_PREFIX,
                 ttl: float = DEFAULT_TTL, timeout: float = DEFAULT_TIMEOUT,
                 user: Optional[str] = None, password: Optional[str] = None,
                 tls: Optional[TLSFiles] = None, backoff: Optional[Backoff] = None) -> None:
        if ttl <= 0:
            raise ValueError(f"etcd lease TTL must be positive, got {ttl!r}")
        if not isinstance(endpoints, Endpoints):
            scheme = "https" if tls is not None and tls.enabled else "http"
            endpoints = Endpoints.parse(endpoints, default_scheme=scheme)
        self._pool = None
        if http is None:  # ours, so close() closes its connections
            self._pool = make_pool(reactor)
            client: HTTPPoster = make_http_client(reactor, tls, pool=self._pool)
        else:
            client = http
        self.gateway = EtcdGateway(reactor, client, endpoints, timeout=timeout, user=user,
                                   password=password)
        self.clock = reactor
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.ttl = ttl
        self._backoff = backoff or default_backoff()
        self._keepers: list[_LeaseKeeper] = []
        self._hub = WatchHub(self, self._backoff)
        #: Whether we may read msgo's plain keys (None: not tried yet).
        self._plain_readable: Optional[bool] = None
        #: Recent lookups, which a watch that follows starts from (after their revision:
        #: nothing is missed, however old, unless etcd compacted it meanwhile).
        self._recent: RecentLookups[Listing] = RecentLookups(reactor)
        self._closed = False
        #: Errors and watch reconnects, for observers (``msrpc.observe``).
        self.events = RegistryEvents(self.name)

    # ----------------------------------------------------------------- keys

    def _service_prefix(self, service: str) -> str:
        if not service or "/" in service:
            raise ValueError(f"etcd service names cannot be empty or contain '/': {service!r}")
        return f"{self.prefix}/{service}/"

    def key_for(self, instance: ServiceInstance) -> str:
        return self._service_prefix(instance.service) + instance.instance_id

    def _decode(self, service: str, key: bytes, value: str) -> Optional[ServiceInstance]:
        """A stored value → instance: our JSON, or msgo's plain ``host:port``."""
        raw = unb64(value).decode("utf-8", "replace").strip()
        try:
            if raw.startswith("{"):
                data = dict(json.loads(raw))
                data.setdefault("service", service)
                return ServiceInstance.from_dict(data)
            host, port = parse_address(raw)
            # Only msgo writes this layout: its instances speak msgo's dialect.
            return ServiceInstance(service=service, host=host, port=port,
                                   metadata={DIALECT_KEY: "msgo"})
        except (ValueError, TypeError) as e:
            self.log.warn("ignoring unreadable etcd entry {key!r}: {error}",
                          key=key.decode("utf-8", "replace"), error=e)
            return None

    # ----------------------------------------------------------------- IRegistry

    def register(self, instance: ServiceInstance) -> "defer.Deferred[IRegistration]":
        async def register() -> IRegistration:
            self._check_open()
            keeper = _LeaseKeeper(self.gateway, self.clock, instance, self.key_for(instance),
                                  self.ttl, events=self.events)
            self._keepers.append(keeper)  # so that close() meanwhile reaches it
            try:
                await keeper.start()
            except BaseException:
                if keeper in self._keepers:
                    self._keepers.remove(keeper)
                raise
            self.log.info("registered {service} at {address} as {key} (lease {lease}, "
                          "TTL {ttl}s)", service=instance.service, address=instance.address,
                          key=keeper.key, lease=keeper.lease, ttl=self.ttl)

            def deregister() -> "defer.Deferred[None]":
                if keeper in self._keepers:
                    self._keepers.remove(keeper)
                return defer.Deferred.fromCoroutine(keeper.stop())

            return Registration(instance, deregister)

        return defer.Deferred.fromCoroutine(register())

    def lookup(self, service: str) -> "defer.Deferred[list[ServiceInstance]]":
        async def lookup() -> list[ServiceInstance]:
            listing = await self._read(service)
            self._recent.remember(service, listing)
            return _sorted(listing[1].values())

        return defer.Deferred.fromCoroutine(lookup())

    def services(self) -> "defer.Deferred[list[str]]":
        """Services with an instance under our prefix (keys only: values stay unread)."""
        async def services() -> list[str]:
            prefix = f"{self.prefix}/".encode()
            answer = await self.gateway.call("/v3/kv/range", {
                "key": b64(prefix), "range_end": b64(prefix_end(prefix)), "keys_only": True})
            names = {unb64(kv["key"])[len(prefix):].split(b"/", 1)[0].decode("utf-8", "replace")
                     for kv in answer.get("kvs", [])}
            return sorted(name for name in names if name)

        return defer.Deferred.fromCoroutine(services())

    @property
    def watch_streams(self) -> int:
        """Watch streams opened so far (one carries every watched service)."""
        return self._hub.streams

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        """
        Watch ``service`` on the registry's one watch stream (``etcd_watch``), from the
        revision of a lookup of it made in the last seconds, if any, else after listing it.
        """
        self._check_open()
        self._service_prefix(service)  # validate now, not inside the loop
        return self._hub.watch(service, callback, self._recent.take(service))

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the etcd registry is closed", backend="etcd")

    def close(self) -> "defer.Deferred[None]":
        self._closed = True

        async def close() -> None:
            self._hub.stop()
            self._recent.clear()
            keepers, self._keepers = self._keepers, []
            results = await defer.DeferredList(
                [defer.Deferred.fromCoroutine(k.stop()) for k in keepers], consumeErrors=True)
            for keeper, (ok, failure) in zip(keepers, results):
                if not ok:
                    self.log.warn("could not deregister {key}; it expires with its lease "
                                  "within {ttl}s: {error}", key=keeper.key, ttl=self.ttl,
                                  error=failure)
            self.gateway.close()  # lookups still in flight
            if self._pool is not None:
                await self._pool.closeCachedConnections()

        return defer.Deferred.fromCoroutine(close())

    # ----------------------------------------------------------------- reading

    async def _read(self, service: str) -> Listing:
        """
        Both layouts of ``service`` → (revision, {key: instance}, plain key readable), in
        one transaction (one request, one revision).  A user limited to our prefix may not
        read msgo's plain keys: then our prefix alone, from then on.
        """
        prefix = self._service_prefix(service).encode()
        ours = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        if self._plain_readable is not False:
            try:
                answer = await self.gateway.call("/v3/kv/txn", {"success": [
                    {"request_range": ours}, {"request_range": {"key": b64(service)}}]})
            except EtcdAuthError:
                if self._plain_readable:
                    raise  # it was readable: this is about our credentials
            else:
                self._plain_readable = True
                ranges = [r.get("response_range") or {} for r in answer.get("responses", [])]
                return header_revision(answer), self._instances(service, ranges), True
        answer = await self.gateway.call("/v3/kv/range", ours)
        if self._plain_readable is None:
            self.log.info("reading only {prefix}: this etcd user may not read msgo's plain "
                          "keys", prefix=self.prefix + "/")
            self._plain_readable = False
        return header_revision(answer), self._instances(service, [answer]), False

    def _instances(self, service: str, ranges: Iterable[Mapping[str, Any]]
                   ) -> dict[bytes, ServiceInstance]:
        kvs: dict[bytes, ServiceInstance] = {}
        for message in ranges:
            for kv in message.get("kvs", []):
                key = unb64(kv["key"])
                instance = self._decode(service, key, kv.get("value", ""))
                if instance is not None:
                    kvs[key] = instance
        return kvs


# --------------------------------------------------------------------------- options


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")


OPTIONS: list[list[Any]] = [
    ["etcd", None, DEFAULT_ENDPOINTS,
     "etcd client URLs, comma-separated (failover in order)."],
    ["etcd-prefix", None, DEFAULT_PREFIX, "etcd key prefix for service instances."],
    ["etcd-ttl", None, DEFAULT_TTL, "etcd lease TTL in seconds (keepalive every TTL/3).",
     float],
    ["etcd-timeout", None, DEFAULT_TIMEOUT, "Timeout of each etcd request, in seconds.",
     float],
    ["etcd-user", None, None, "etcd user name (auth)."],
    ["etcd-password-file", None, None,
     f"File holding the etcd password (or set ${PASSWORD_ENV})."],
    ["etcd-ca", None, None, "CA certificate (PEM) to verify https etcd endpoints."],
    ["etcd-cert", None, None, "Client certificate (PEM) for etcd TLS client auth."],
    ["etcd-key", None, None, "Private key (PEM) of --etcd-cert, if not in the same file."],
]


def from_options(reactor: Any, options: Mapping[str, Any]) -> EtcdRegistry:
    """Build the registry from ``OPTIONS`` values (``twistd msrpc`` and the ``msrpc`` CLI)."""
    user = options.get("etcd-user") or None
    password_file = options.get("etcd-password-file")
    password = _read_secret(password_file) if password_file else os.environ.get(PASSWORD_ENV)
    if user is None and password_file:
        raise usage.UsageError("--etcd-password-file needs --etcd-user")
    if user is not None and password is None:
        raise usage.UsageError(f"--etcd-user needs --etcd-password-file or ${PASSWORD_ENV}")
    tls = TLSFiles(ca=options.get("etcd-ca"), cert=options.get("etcd-cert"),
                   key=options.get("etcd-key"))
    if tls.key and not tls.cert:
        raise usage.UsageError("--etcd-key needs --etcd-cert")
    try:
        return EtcdRegistry(
            reactor, options.get("etcd") or DEFAULT_ENDPOINTS,
            prefix=options.get("etcd-prefix") or DEFAULT_PREFIX,
            ttl=float(options.get("etcd-ttl") or DEFAULT_TTL),
            timeout=float(options.get("etcd-timeout") or DEFAULT_TIMEOUT),
            user=user, password=password if user is not None else None,
            tls=tls if tls.enabled else None)
    except ValueError as e:
        raise usage.UsageError(str(e))


__all__ = ["EtcdRegistry", "OPTIONS", "from_options", "DEFAULT_PREFIX", "DEFAULT_TTL",
           "PASSWORD_ENV"]
