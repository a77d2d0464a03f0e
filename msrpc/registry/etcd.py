"""
The etcd registry (``--registry etcd``), spoken through etcd's v3 JSON gateway.

Layout: ``<prefix>/<service>/<instance-id>`` → ``ServiceInstance.to_json()``, bound to a
lease that a keepalive refreshes every TTL/3; a process that dies stops refreshing and its
keys vanish with the lease.  Lookups and watches also read msgo's plain layout, one key per
service (``<service>`` → ``"host:port"``), so msrpc clients find msgo servers.
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
from twisted.python.failure import Failure
from zope.interface import implementer

from msrpc.errors import RegistryError
from msrpc.observe import RegistryEvents
from msrpc.registry.etcd_api import (
    EtcdAuthError, EtcdError, EtcdGateway, HTTPPoster, LineStream, b64, header_revision,
    prefix_end, unb64, unwrap)
from msrpc.registry.http import Endpoints, TLSFiles, make_http_client, make_pool
from msrpc.registry.instance import DIALECT_KEY, ServiceInstance, parse_address
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.registry.polling import snapshot_key
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


def _forbidden_is_none(failure: Failure) -> None:
    failure.trap(EtcdAuthError)
    return None


def _first_error(failure: Failure) -> Failure:
    """``gatherResults`` wraps the failure that stopped it; give back the original."""
    failure.trap(defer.FirstError)
    return failure.value.subFailure


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


# --------------------------------------------------------------------------- watch


class _Compacted(Exception):
    """The watch start revision was compacted away: list again."""


class _Canceled(Exception):
    """etcd canceled the watch in-band (auth, permissions): authenticate and retry."""


@implementer(IWatch)
class _ServiceWatch:
    """
    List, then stream changes from the listed revision + 1, keeping the instance map
    current and calling back with the full list on every change.  A dropped stream resumes
    from the last revision seen (another endpoint if need be); a compacted one lists again.
    """

    log = Logger()

    def __init__(self, registry: "EtcdRegistry", service: str, callback: WatchCallback,
                 backoff: Backoff) -> None:
        self._registry = registry
        self._gateway = registry.gateway
        self.service = service
        self._callback = callback
        self._backoff = backoff
        self._kvs: dict[bytes, ServiceInstance] = {}
        # Per watcher of the stream (0: our prefix, 1: msgo's plain key), the revision up
        # to which its changes are in _kvs; each resumes after its own.  Empty = list again.
        self._revisions: dict[int, int] = {}
        self._with_plain = False               # whether msgo's plain key is readable
        self._last: Optional[tuple] = None
        self._token: Optional[str] = None      # the one the current stream was opened with
        self._created = False                  # the current stream got its "created" line
        self._streamed = False                 # some stream was created before this one
        self._stopped = False
        self._outage = _Outage(self.log)
        self._task = defer.Deferred.fromCoroutine(self._run())
        self._task.addErrback(lambda f: None if self._stopped else self.log.failure(
            "watch of {service} died", f, service=service))

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._task.cancel()
            self._registry._forget(self)

    async def _run(self) -> None:
        failures = 0
        while not self._stopped:
            self._created = False
            error: Optional[BaseException] = None
            try:
                if not self._revisions:
                    await self._list()
                await self._stream()
            except _Compacted:
                self.log.info("watch of {service} fell behind a compaction; listing again",
                              service=self.service)
                self._revisions = {}
                continue
            except defer.CancelledError:
                if self._stopped:
                    return
                raise
            except Exception as e:
                if self._stopped:  # a cancel can surface as another exception
                    return
                error = e
            if self._created:
                failures = 0
            if error is None:
                self.log.info("watch stream of {service} ended; resuming after revision "
                              "{revision}", service=self.service,
                              revision=min(self._revisions.values()))
            else:
                self._registry.events.error("watch", error)
                self._outage.failed("watch of {service} interrupted, retrying", error,
                                    service=self.service)
                if isinstance(error, (_Canceled, EtcdAuthError)):
                    await self._gateway.refresh_token(stale=self._token)
            await task.deferLater(self._gateway.clock, self._backoff(failures), lambda: None)
            failures += 1

    async def _list(self) -> None:
        revision, kvs, plain = await self._registry._read(self.service)
        self._kvs, self._with_plain = kvs, plain
        self._revisions = {0: revision, 1: revision} if plain else {0: revision}
        self._notify()

    async def _stream(self) -> None:
        """One watch stream, until it ends or fails."""
        prefix = self._registry._service_prefix(self.service).encode()
        ranges = [{"key": b64(prefix), "range_end": b64(prefix_end(prefix))},
                  {"key": b64(self.service)}]
        # etcd numbers the watchers of one stream 0, 1, ... in request order.
        requests = [{"create_request": {**ranges[watch_id], "progress_notify": True,
                                        "start_revision": str(revision + 1)}}
                    for watch_id, revision in sorted(self._revisions.items())]
        response, self._token = await self._gateway.open_stream("/v3/watch", requests)
        stream = LineStream(self._on_line)
        response.deliverBody(stream)
        await stream.finished

    def _on_line(self, line: dict[str, Any]) -> None:
        result = unwrap(line)
        if result.get("canceled"):
            if int(result.get("compact_revision", 0)) > 0:
                raise _Compacted(result["compact_revision"])
            raise _Canceled(result.get("cancel_reason") or "watch canceled by etcd")
        if result.get("created"):
            if not self._created:
                self._created = True
                self._outage.recovered("watch of {service} is back", service=self.service)
                if self._streamed:
                    self._registry.events.watch_reconnected(self.service)
                self._streamed = True
            return
        watch_id = int(result.get("watch_id", 0))
        events = result.get("events")
        if not events:  # a progress notification: this watcher is complete up to here
            self._advance(watch_id, header_revision(result))
            return
        for event in events:
            kv = event["kv"]
            key = unb64(kv["key"])
            if event.get("type") == "DELETE":
                self._kvs.pop(key, None)
            else:
                instance = self._registry._decode(self.service, key, kv.get("value", ""))
                if instance is not None:
                    self._kvs[key] = instance
                else:
                    self._kvs.pop(key, None)
            self._advance(watch_id, int(kv.get("mod_revision", 0)))
        self._notify()

    def _advance(self, watch_id: int, revision: int) -> None:
        """Note how far a watcher has delivered (another one may still be catching up)."""
        if watch_id in self._revisions:
            self._revisions[watch_id] = max(self._revisions[watch_id], revision)

    def _notify(self) -> None:
        instances = _sorted(self._kvs.values())
        key = snapshot_key(instances)
        if key == self._last or self._stopped:
            return
        self._last = key
        try:
            self._callback(instances)
        except Exception:
            self.log.failure("watch callback for {service} raised", service=self.service)


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
        self._watches: list[_ServiceWatch] = []
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
            _, kvs, _ = await self._read(service)
            return _sorted(kvs.values())

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

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        self._check_open()
        self._service_prefix(service)  # validate now, not inside the loop
        watch = _ServiceWatch(self, service, callback, self._backoff)
        self._watches.append(watch)
        return watch

    def _forget(self, watch: _ServiceWatch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the etcd registry is closed", backend="etcd")

    def close(self) -> "defer.Deferred[None]":
        self._closed = True

        async def close() -> None:
            for watch in list(self._watches):
                watch.stop()
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

    async def _read(self, service: str) -> tuple[int, dict[bytes, ServiceInstance], bool]:
        """
        Both layouts of ``service`` → (revision, {key: instance}, plain key readable).  The
        plain read may be forbidden to a user limited to our prefix; that only skips it.
        """
        prefix = self._service_prefix(service).encode()
        ours = self.gateway.call("/v3/kv/range", {"key": b64(prefix),
                                                  "range_end": b64(prefix_end(prefix))})
        plain = self.gateway.call("/v3/kv/range", {"key": b64(service)})
        plain.addErrback(_forbidden_is_none)
        answer, plain_answer = await defer.gatherResults(
            [ours, plain], consumeErrors=True).addErrback(_first_error)
        kvs: dict[bytes, ServiceInstance] = {}
        # Two reads, maybe at two revisions: watching from the older one replays a few
        # events already applied, which is harmless, where the newer one could miss some.
        revision = min(header_revision(m) for m in (answer, plain_answer) if m)
        for message in (answer, plain_answer or {}):
            for kv in message.get("kvs", []):
                key = unb64(kv["key"])
                instance = self._decode(service, key, kv.get("value", ""))
                if instance is not None:
                    kvs[key] = instance
        return revision, kvs, plain_answer is not None


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
