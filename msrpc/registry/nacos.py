"""
The Nacos registry backend (``--registry nacos``), over Nacos's naming HTTP open API.

It speaks two dialects (``nacos_api``): **v1** (``/nacos/v1/ns/...``: Nacos 1.x, 2.x, and
3.0/3.1 by default) and **v3** (``/nacos/v3/client/ns/...``: Nacos 3.x, the only one left
from 3.2).  With ``api="auto"`` each server is probed once (a v3 path only 3.x knows) and
its dialect remembered; a 404 or 410 later (the server was upgraded or its v1 switch turned
off) probes it again.  The v2 open API (2.2+ only) adds nothing msrpc needs.

What it does, as the official clients do:

- ``register`` publishes an ephemeral instance and beats for it every ``clientBeatInterval``
  (v1's answer; else the instance's own interval).  Beats are *light* (no instance body),
  so a server that has forgotten the instance (it expired, or Nacos restarted) answers code
  20404 (v1) or 21003 (v3) and we register it again with its full data.  A full beat would
  let Nacos re-create it silently, but also resurrect an instance whose beat raced its
  deregistration.
- ``register`` also publishes the instance's liveness timing (``ttl``): Nacos marks an
  instance unhealthy when its beats stop for ``preserved.heart.beat.timeout`` and honours
  ``preserved.heart.beat.interval``/``preserved.ip.delete.timeout`` from its metadata
  (verified on 2.3.2), so a killed server leaves the healthy list within the TTL plus
  Nacos's beat-check period (5 s, fixed in the server) instead of 15-20 s.
- ``lookup`` lists healthy, enabled instances (of every cluster on v1; of ``clusters``, else
  the registry's own cluster, on v3, which lists only the clusters it is asked for).
- ``watch`` on v1 subscribes to Nacos's UDP push (``nacos_push``): a push makes the service be listed again at once, and polls every
  ``push_refresh`` seconds stay as a safety net (lost datagrams, a Nacos restart).  When a
  poll finds a change that no push announced, pushes are not arriving (a firewall) and
  watches poll every ``refresh`` seconds until a push arrives again.  All watches of a
  registry share one poll per service within ``poll_budget`` polls per second
  (``shared_polls``).  Nacos 2.x always answers ``checksum: ""`` and a fresh
  ``lastRefTime``, so changes are found by comparing the lists themselves.  v3 has no push
  for HTTP clients: its watches poll every ``refresh`` seconds (within the same budget).
- Several servers with failover on connection errors and on 502/503/504 answers; with a
  username, a login token that is renewed before its ``tokenTtl`` ends and after a 403.
  The token travels in the ``Authorization: Bearer`` header, which Nacos accepts like the
  ``accessToken`` parameter but which keeps it out of URLs and access logs.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import treq
from twisted.internet.defer import Deferred, DeferredList, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from msrpc.errors import RegistryAuthError, RegistryError
from msrpc.observe import RegistryEvents
from msrpc.registry.http import (
    Endpoints, TLSFiles, make_http_client, make_pool, request_slots, with_timeout,
)
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.registry.nacos_api import (
    BEAT_OK, BEAT_UNKNOWN, DIALECTS, V1, V3, NacosApi, Request, dialect_from_probe, parse_json,
    probe_request,
)
from msrpc.registry.nacos_push import USER_AGENT, Push, PushListener
from msrpc.registry.recent import RecentLookups
from msrpc.registry.registration import Registration
from msrpc.registry.shared_polls import SharedPolls

log = Logger()

BACKEND = "nacos"
DEFAULT_SERVER = "http://127.0.0.1:8848"
DEFAULT_CONTEXT = "/nacos"
DEFAULT_NAMESPACE = "public"
DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_CLUSTER = "DEFAULT"
DEFAULT_TIMEOUT = 5.0
DEFAULT_REFRESH = 2.0
#: Safety-net poll of a watched service while pushes arrive.  Nacos forgets a subscriber
#: that has not listed anything for 30 s, so this stays well below that.
DEFAULT_PUSH_REFRESH = 10.0
#: Polls per second of one registry's watches together (each service is polled less often
#: than its interval when there are more than budget x interval services).
DEFAULT_POLL_BUDGET = 50.0
#: Heartbeat timeout published with our instances (Nacos's own default is 15 s).
DEFAULT_TTL = 6.0
#: A change found by polling is blamed on lost pushes if no push for it came this soon after.
PUSH_GRACE = 2.0
#: Until the first beat answer says otherwise (Nacos's own default).
DEFAULT_BEAT_INTERVAL = 5.0
#: Renew the token once this share of its lifetime is left (the Java client's window).
TOKEN_RENEW_SHARE = 0.1
PASSWORD_ENV = "MSRPC_NACOS_PASSWORD"

#: Instance metadata that Nacos honours per instance (verified on 2.3.2), in milliseconds.
BEAT_INTERVAL_KEY = "preserved.heart.beat.interval"
BEAT_TIMEOUT_KEY = "preserved.heart.beat.timeout"
DELETE_TIMEOUT_KEY = "preserved.ip.delete.timeout"
#: ``--nacos-api`` values: a dialect's name, or ``auto`` to probe each server.
API_CHOICES = ("auto", *DIALECTS)


class _NotServing(ConnectionError):
    """A 502/503/504 answer: this server cannot serve now, so the next one is tried."""


def nacos_message(body: bytes | str) -> str:
    """
    Nacos's own words from an error body: plain text, Spring's JSON error, the v2/v3
    envelope, or (3.x's 410 for a switched-off API) an envelope inside Spring's message.
    """
    text = body.decode("utf-8", "replace").strip() if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict):
        return text
    message = data.get("message") or data.get("msg") or data.get("error") or ""
    if isinstance(message, str) and message.startswith("{"):
        message = nacos_message(message)
    detail = data.get("data")
    if isinstance(detail, str) and detail and detail != message:
        message = f"{message}: {detail}" if message else detail
    return str(message) or text


def error_for(status: int, body: bytes, what: str, login: bool = False,
              hint: str = "") -> RegistryError:
    """The RegistryError for one Nacos error answer, carrying its message and status."""
    message = nacos_message(body) or f"HTTP {status}"
    # A wrong password is a 403 (2.x) or a bare 500 (3.1: "No message available"); an
    # unknown user is a 500 "caused: User x not found;" (2.x) or a 403 (3.1).
    rejected = status in (401, 403) or (login and status == 500)
    if login and rejected:
        hint = hint or "check the user name and password"
    cls = RegistryAuthError if rejected else RegistryError
    return cls(f"{what}: {message}{f' ({hint})' if hint else ''}", backend=BACKEND,
               status=status, details=message)


def _with_context(url: str, context: str) -> str:
    """``http://h:8848`` → ``http://h:8848/nacos``; a URL with its own path keeps it."""
    return url if urlsplit(url).path.strip("/") else url.rstrip("/") + context


class _Beater:
    """Keeps one registered instance alive on the server's beat interval."""

    def __init__(self, registry: "NacosRegistry", instance: ServiceInstance) -> None:
        self.instance = instance
        self._registry = registry
        self._failing = False
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._beat()))
        self._loop.clock = registry.clock

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        self._loop.start(first_beat_interval(self.instance), now=False).addErrback(
            lambda f: log.failure("beat loop of {address} died", f,
                                  address=self.instance.address))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def _beat(self) -> None:
        instance = self.instance
        try:
            known, interval = await self._registry._send_beat(instance)
            if not known and self.running:
                log.warn("nacos no longer knows {service} at {address}: registering it again",
                         service=instance.service, address=instance.address)
                await self._registry._send_register(instance)
                log.info("re-registered {service} at {address} in nacos",
                         service=instance.service, address=instance.address)
        except RegistryError as e:
            self._registry.events.error("keepalive", e)
            if not self._failing:
                self._failing = True
                log.warn("beat for {service} at {address} failed, will keep trying: {error}",
                         service=instance.service, address=instance.address, error=e)
            return
        except Exception:
            log.failure("beat for {service} at {address} failed unexpectedly",
                        service=instance.service, address=instance.address)
            return
        if self._failing:
            self._failing = False
            log.info("nacos accepts beats for {service} at {address} again",
                     service=instance.service, address=instance.address)
        if interval and interval != self._loop.interval:
            log.debug("nacos asks for a beat every {interval} s", interval=interval)
            self._loop.interval = interval


def liveness_metadata(ttl: float) -> dict[str, str]:
    """
    The metadata that makes Nacos expect a beat every ``ttl``/3 seconds, mark the instance
    unhealthy after ``ttl`` seconds without one and delete it after 2 x ``ttl``; nothing
    for ``ttl`` 0 (Nacos's defaults: 5 s, 15 s, 30 s).
    """
    if not ttl:
        return {}
    millis = round(ttl * 1000)
    return {BEAT_INTERVAL_KEY: str(millis // 3), BEAT_TIMEOUT_KEY: str(millis),
            DELETE_TIMEOUT_KEY: str(2 * millis)}


def first_beat_interval(instance: ServiceInstance) -> float:
    """
    Seconds until the first beat: the instance's own ``preserved.heart.beat.interval`` if
    it sets one (as the official clients do; a short heartbeat timeout would otherwise
    expire before a 5 s beat), else Nacos's default.  Later beats follow Nacos's answers.
    """
    try:
        millis = float(instance.metadata.get(BEAT_INTERVAL_KEY, ""))
    except ValueError:
        return DEFAULT_BEAT_INTERVAL
    return millis / 1000.0 if 0 < millis < math.inf else DEFAULT_BEAT_INTERVAL


@implementer(IRegistry, IServiceCatalog)
class NacosRegistry:
    """
    ``IRegistry`` on one Nacos cluster.  ``reactor`` makes the HTTP client unless ``http``
    (anything with treq's ``request``, e.g. ``treq.testing.StubTreq``) is given, and listens
    for UDP pushes on ``push_port`` (0: any free port; None: no push) at ``push_host``
    (default: our address on the route to the first server); ``clock`` (default: the
    reactor) drives beats, polls and request timeouts.  ``api`` is ``"auto"``, ``"v1"``,
    ``"v3"`` or a ``NacosApi``; ``clusters`` are the clusters lookups look in (default:
    all on v1, the registry's ``cluster`` on v3).
    """

    name = BACKEND

    def __init__(self, reactor: Any, servers: str | Sequence[str] = DEFAULT_SERVER, *,
                 clock: Optional[IReactorTime] = None, http: Any = None,
                 namespace: str = DEFAULT_NAMESPACE, group: str = DEFAULT_GROUP,
                 cluster: str = DEFAULT_CLUSTER, clusters: Sequence[str] = (),
                 username: Optional[str] = None, password: Optional[str] = None,
                 tls: Optional[TLSFiles] = None, timeout: float = DEFAULT_TIMEOUT,
                 refresh: float = DEFAULT_REFRESH, context_path: str = DEFAULT_CONTEXT,
                 api: str | NacosApi = "auto", ttl: float = DEFAULT_TTL,
                 push_port: Optional[int] = 0, push_host: Optional[str] = None,
                 push_refresh: float = DEFAULT_PUSH_REFRESH,
                 poll_budget: float = DEFAULT_POLL_BUDGET) -> None:
        if username and password is None:
            raise ValueError("a Nacos username needs a password")
        if ttl and ttl < 1:
            raise ValueError(f"the Nacos TTL must be 0 (Nacos's default) or >= 1 s, got {ttl}")
        if refresh <= 0 or push_refresh <= 0 or poll_budget <= 0:
            raise ValueError("Nacos poll intervals and the poll budget must be positive")
        if isinstance(api, str) and api not in API_CHOICES:
            raise ValueError(f"unknown Nacos API {api!r}; choose one of {API_CHOICES}")
        self.clock: Any = clock or reactor  # an IReactorTime
        scheme = "https" if tls is not None and tls.enabled else "http"
        parsed = Endpoints.parse(servers, default_scheme=scheme)
        self.endpoints = Endpoints([_with_context(u, context_path) for u in parsed.urls])
        self._pool = None
        if http is None:
            self._pool = make_pool(reactor)
            http = make_http_client(reactor, tls, self._pool)
        self._http = http
        self.namespace = namespace or DEFAULT_NAMESPACE
        self.group = group or DEFAULT_GROUP
        self.cluster = cluster or DEFAULT_CLUSTER
        self.clusters = tuple(c for c in clusters if c)
        self.timeout = timeout
        self.refresh = refresh
        self.push_refresh = push_refresh
        self.ttl = ttl
        #: The dialect every server speaks, or None to probe each ("auto").
        self.api: Optional[NacosApi] = DIALECTS.get(api, None) if isinstance(api, str) else api
        self._dialects: dict[str, NacosApi] = {}
        self._probe_lock = DeferredLock()
        #: Counters for benchmarks, tests and metrics: "requests" (HTTP requests sent),
        #: "changes.pushed"/"changes.polled" (list changes found after a push / by a poll).
        self.stats: Counter[str] = Counter()
        self._in_flight: set[Deferred[Any]] = set()
        self._slots = request_slots()
        self._recent: RecentLookups[list[ServiceInstance]] = RecentLookups(self.clock)
        self.username = username or None
        self.__password = password
        self._token: Optional[str] = None
        self._token_renew_at = 0.0
        self._login_lock = DeferredLock()
        self._registrations: list[tuple[Registration, _Beater]] = []
        #: Errors and watch reconnects, for observers (``msrpc.observe``).
        self.events = RegistryEvents(self.name)
        self._polls = SharedPolls(self.clock, self._lookup_all, interval=refresh,
                                  budget=poll_budget, name="nacos", on_change=self._changed,
                                  events=self.events)
        self.push: Optional[PushListener] = None
        if push_port is not None:
            target = urlsplit(self.endpoints.urls[0])
            self.push = PushListener(reactor, self.clock,
                                     (target.hostname or "127.0.0.1", target.port or 80),
                                     self._pushed, port=push_port, host=push_host)
        #: Whether pushes arrive; None until the push port listens.
        self.push_working: Optional[bool] = None
        self._push_times: dict[str, float] = {}
        self._suspects: dict[str, float] = {}

    def __repr__(self) -> str:
        user = f" user={self.username}" if self.username else ""
        api = self.api.name if self.api is not None else "auto"
        return (f"<NacosRegistry {','.join(self.endpoints.urls)} api={api} "
                f"namespace={self.namespace} group={self.group}{user}>")

    # ------------------------------------------------------------------ IRegistry

    def register(self, instance: ServiceInstance) -> "Deferred[IRegistration]":
        return Deferred.fromCoroutine(self._register(instance))

    def lookup(self, service: str, clusters: Sequence[str] = ()
               ) -> "Deferred[list[ServiceInstance]]":
        """
        Healthy, enabled instances of ``service`` (in ``clusters`` only, if given).  On v1 a
        lookup of the whole service also subscribes to its pushes, as a watch usually follows
        (and that watch starts from this lookup's list).
        """
        d = Deferred.fromCoroutine(self._lookup(service, clusters))
        if not clusters:
            d.addCallback(self._remember, service)
        return d

    def _remember(self, found: list[ServiceInstance], service: str) -> list[ServiceInstance]:
        self._recent.remember(service, found)
        return found

    def services(self) -> "Deferred[list[str]]":
        """
        The services of our namespace and group: Nacos's service list, paged (v1), or the
        admin API's (v3, whose client API has none: it needs a user the admin API accepts).
        """
        return Deferred.fromCoroutine(self._services())

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        """Shared, budgeted polls (and pushes on v1), from a lookup just made if any."""
        return self._polls.watch(service, callback, self._recent.take(service))

    def close(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._close())

    # ------------------------------------------------------------------ push

    def _push_params(self, api: NacosApi) -> Mapping[str, str]:
        """The subscription of a whole-service list in ``api`` (starts listening once)."""
        if not api.pushes or self.push is None:
            return {}
        if self.push_working is None:
            self.push_working = False
            self.push.start().addCallback(self._push_started)
        return self.push.params

    def _push_started(self, _: None) -> None:
        if self.push is not None and self.push.listening:
            self.push_working = True
            self._polls.interval = self.push_refresh
            self._polls.poll_all_soon()  # subscribe what is already watched

    def _pushed(self, push: Push) -> None:
        group, service = push.group_and_service
        if group != self.group or not service:
            return
        self._push_times[service] = self.clock.seconds()
        if not self.push_working and self.push is not None and self.push.listening:
            log.info("nacos pushes arrive again: watches poll every {interval} s as a "
                     "safety net", interval=self.push_refresh)
            self.push_working = True
            self._polls.interval = self.push_refresh
        pushed = self._usable(service, push.hosts, quiet=True)  # unverified: compared only
        if not self._polls.holds(service, pushed):  # a change, maybe: list it to be sure
            self._polls.poke(service)

    def _changed(self, service: str, pushed: bool) -> None:
        """A poll found a change: if no push announces it soon, pushes are not arriving."""
        self.stats["changes.pushed" if pushed else "changes.polled"] += 1
        if pushed or not self.push_working:
            return
        now = self.clock.seconds()
        if self._push_times.get(service, -math.inf) >= now - PUSH_GRACE:
            return
        self._suspects[service] = now
        self.clock.callLater(PUSH_GRACE, self._check_suspect, service, now)

    def _check_suspect(self, service: str, found_at: float) -> None:
        if self._suspects.get(service) != found_at:
            return
        del self._suspects[service]
        if self._push_times.get(service, -math.inf) >= found_at - PUSH_GRACE:
            return
        if self.push_working:
            log.warn("nacos pushes do not arrive (a change of {service} was found by polling "
                     "only; is UDP blocked?): watches poll every {interval} s",
                     service=service, interval=self.refresh)
            self._stop_relying_on_push()

    def _stop_relying_on_push(self) -> None:
        self.push_working = False
        self._polls.interval = self.refresh

    # ------------------------------------------------------------------ the work

    def resolve(self, instance: ServiceInstance) -> ServiceInstance:
        """
        The instance with this registry's namespace, group and cluster where it has none,
        and our liveness timing in its metadata unless the metadata sets its own.
        """
        return instance.with_changes(namespace=instance.namespace or self.namespace,
                                     group=instance.group or self.group,
                                     cluster=instance.cluster or self.cluster,
                                     metadata={**liveness_metadata(self.ttl),
                                               **instance.metadata})

    async def _register(self, instance: ServiceInstance) -> IRegistration:
        instance = self.resolve(instance)
        await self._send_register(instance)
        beater = _Beater(self, instance)
        registration = Registration(
            instance, lambda: Deferred.fromCoroutine(self._deregister(registration, beater)))
        self._registrations.append((registration, beater))
        beater.start()
        log.info("registered {service} at {address} in nacos (namespace {namespace}, group "
                 "{group}, cluster {cluster})", service=instance.service,
                 address=instance.address, namespace=instance.namespace,
                 group=instance.group, cluster=instance.cluster)
        return registration

    async def _deregister(self, registration: Registration, beater: _Beater) -> None:
        beater.stop()
        if (registration, beater) in self._registrations:
            self._registrations.remove((registration, beater))
        instance = beater.instance
        what = f"deregister {instance.service} at {instance.address}"
        api, body = await self._call(lambda api: api.deregister(instance), what)
        api.check_done(body, what)
        log.info("deregistered {service} at {address} from nacos",
                 service=instance.service, address=instance.address)

    def _lookup_all(self, service: str) -> "Deferred[list[ServiceInstance]]":
        return Deferred.fromCoroutine(self._lookup(service, ()))

    async def _lookup(self, service: str, clusters: Sequence[str]) -> list[ServiceInstance]:
        def request(api: NacosApi) -> Request:
            wanted = clusters or self.clusters or (() if api.pushes else (self.cluster,))
            extra = {} if clusters else self._push_params(api)
            return api.instances(service, self.group, self.namespace, wanted, extra)

        what = f"lookup of {service}"
        api, body = await self._call(request, what)
        return self._usable(service, api.parse_instances(body, what))

    def _usable(self, service: str, hosts: Iterable[Mapping[str, Any]],
                quiet: bool = False) -> list[ServiceInstance]:
        """The healthy, enabled instances among Nacos's ``hosts`` (malformed ones skipped)."""
        found = []
        for host in hosts:
            instance = self._to_instance(service, host, quiet)
            if instance is not None and instance.healthy and instance.enabled:
                found.append(instance)
        return found

    def _to_instance(self, service: str, host: Mapping[str, Any],
                     quiet: bool = False) -> Optional[ServiceInstance]:
        try:
            return ServiceInstance(
                service=service, host=str(host["ip"]), port=int(host["port"]),
                weight=float(host.get("weight", 1.0)),
                metadata={str(k): str(v) for k, v in (host.get("metadata") or {}).items()},
                instance_id=str(host.get("instanceId") or ""), namespace=self.namespace,
                group=self.group, cluster=str(host.get("clusterName") or ""),
                enabled=bool(host.get("enabled", True)),
                healthy=bool(host.get("healthy", True)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if quiet:  # anyone can send a datagram: no log line per forged host
                return None
            log.warn("ignoring a malformed instance of {service} from nacos: {host!r} ({error})",
                     service=service, host=host, error=e)
            return None

    async def _services(self) -> list[str]:
        names: list[str] = []
        page = 1
        while True:
            what = "service list"
            try:
                api, body = await self._call(
                    lambda api: api.services(self.group, self.namespace, page, 500), what)
            except RegistryAuthError as e:
                if self.api is V1 or (self.api is None and
                                      all(d is V1 for d in self._dialects.values())):
                    raise
                raise RegistryError(
                    f"this Nacos cannot list services for "
                    f"{self.username or 'an anonymous client'}: its v3 client API has no "
                    f"service list and its admin API refused ({e.details}); name the services "
                    "to look up", backend=BACKEND, status=e.status, details=e.details) from e
            batch, total = api.parse_services(body, self.group, what)
            names.extend(batch)
            if not batch or len(names) >= total:
                return sorted(set(names))
            page += 1

    async def _close(self) -> None:
        self._polls.stop()
        self._suspects.clear()
        self._recent.clear()
        registrations, self._registrations = self._registrations, []
        for _, beater in registrations:
            beater.stop()
        results: list[tuple[bool, Any]] = await DeferredList(
            [r.deregister() for r, _ in registrations], consumeErrors=True)
        for (registration, _), (ok, result) in zip(registrations, results):
            if not ok:
                log.warn("could not deregister {address} from nacos on close: {error}",
                         address=registration.instance.address, error=result.getErrorMessage())
        if self.push is not None:
            await self.push.stop()
        for request in list(self._in_flight):  # e.g. a beat sent before close
            request.cancel()
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # ------------------------------------------------------------------ requests

    async def _send_register(self, instance: ServiceInstance) -> None:
        what = f"register {instance.service} at {instance.address}"
        api, body = await self._call(lambda api: api.register(instance), what)
        api.check_done(body, what)

    async def _send_beat(self, instance: ServiceInstance) -> tuple[bool, Optional[float]]:
        """One light beat → (does the server know the instance, its interval if it said)."""
        what = f"beat for {instance.service} at {instance.address}"
        api, body = await self._call(lambda api: api.beat(instance), what)
        return api.parse_beat(body, what)

    async def _call(self, build: Callable[[NacosApi], Request], what: str, *,
                    login: bool = False) -> tuple[NacosApi, bytes]:
        """
        One API request, built in the dialect of the server that answers, with failover and
        the token; one fresh login after a 403, one fresh dialect probe after a 404/410.
        """
        authenticated = self.username is not None and not login
        relogged = reprobed = False
        while True:
            headers = {}
            if authenticated:
                headers["Authorization"] = f"Bearer {await self._access_token()}"

            async def one(base: str) -> tuple[str, NacosApi, int, bytes]:
                api = await self._dialect(base)
                request = build(api)
                status, body = await self._send(request.method, base + request.path,
                                                request.params, headers, request.form)
                return base, api, status, body

            base, api, status, body = await self.endpoints.attempt(one, what, BACKEND)
            if status in (404, 410) and self.api is None and not reprobed:
                reprobed = True
                if await self._reprobe(base, api):
                    continue
            if status == 403 and authenticated and not relogged:
                log.info("nacos refused our token for {what}: logging in again", what=what)
                relogged = True
                self._token = None
                continue
            if status >= 400:
                hint = (f"the Nacos at {base} does not serve this in its {api.name} HTTP API; "
                        "--nacos-api auto picks the API it has") if status in (404, 410) else ""
                raise error_for(status, body, what, login=login, hint=hint)
            return api, body

    def _send(self, method: str, url: str, params: Mapping[str, str],
              headers: Mapping[str, str], form: bool) -> "Deferred[tuple[int, bytes]]":
        async def send() -> tuple[int, bytes]:
            where = {"data": dict(params)} if form else {"params": dict(params)}
            self.stats["requests"] += 1
            response = await self._http.request(method, url, headers={
                "User-Agent": USER_AGENT, **headers}, **where)
            body = await treq.content(response)
            if response.code in (502, 503, 504):
                raise _NotServing(f"HTTP {response.code}: {nacos_message(body)[:200]}")
            return response.code, body

        d = self._slots.run(lambda: with_timeout(Deferred.fromCoroutine(send()), self.timeout,
                                                 self.clock))
        self._in_flight.add(d)
        return d.addBoth(self._landed, d)

    def _landed(self, result: Any, request: "Deferred[Any]") -> Any:
        self._in_flight.discard(request)
        return result

    # ------------------------------------------------------------------ dialects

    async def _dialect(self, base: str) -> NacosApi:
        """The dialect of the server at ``base``: the configured one, or probed once."""
        if self.api is not None:
            return self.api
        api = self._dialects.get(base)
        if api is None:
            async with self._probe_lock:
                api = self._dialects.get(base)
                if api is None:
                    api = self._dialects[base] = await self._probe(base)
                    self._dialect_known(base, api)
        return api

    async def _probe(self, base: str) -> NacosApi:
        request = probe_request()
        status, body = await self._send(request.method, base + request.path, request.params,
                                        {}, request.form)
        api = dialect_from_probe(status, body)
        if api is None:
            raise RegistryError(f"cannot tell which HTTP API the Nacos at {base} serves: "
                                f"{request.path} answered HTTP {status}: "
                                f"{nacos_message(body)[:200]}", backend=BACKEND,
                                status=status)
        return api

    def _dialect_known(self, base: str, api: NacosApi) -> None:
        log.info("nacos at {base} speaks its {api} HTTP API", base=base, api=api.name)
        if not api.pushes and self.push_working:
            self._stop_relying_on_push()

    async def _reprobe(self, base: str, old: NacosApi) -> bool:
        """After a 404/410: has the server at ``base`` changed dialect?"""
        async with self._probe_lock:
            if self._dialects.get(base) is old:
                del self._dialects[base]
        return await self._dialect(base) is not old

    # ------------------------------------------------------------------ auth

    async def _access_token(self) -> str:
        """The current token: a login when there is none or its lifetime is nearly over."""
        async with self._login_lock:
            if self._token is None or self.clock.seconds() >= self._token_renew_at:
                await self._login()
            assert self._token is not None
            return self._token

    async def _login(self) -> None:
        what = f"login to nacos as {self.username}"
        body = await self._post_login(
            {"username": self.username or "", "password": self.__password or ""}, what)
        data = parse_json(body, what)
        token = data.get("accessToken") if isinstance(data, dict) else None
        if not token:
            raise RegistryAuthError(f"{what}: no accessToken in the answer", backend=BACKEND)
        ttl = float(data.get("tokenTtl") or 18000)
        self._token = str(token)
        self._token_renew_at = self.clock.seconds() + ttl * (1 - TOKEN_RENEW_SHARE)
        log.info("logged in to nacos as {user} (token valid {ttl:.0f} s)",
                 user=self.username, ttl=ttl)

    async def _post_login(self, form: dict[str, str], what: str) -> bytes:
        """The login form to the dialect's login paths in turn: a 404/410 tries the next."""
        index = 0
        while True:
            paths: list[tuple[str, ...]] = []

            def request(api: NacosApi) -> Request:
                paths.append(api.login_paths)
                return Request("POST", api.login_paths[index], form, form=True)

            try:
                _, body = await self._call(request, what, login=True)
                return body
            except RegistryError as e:
                index += 1
                if e.status not in (404, 410) or not paths or index >= len(paths[-1]):
                    raise


# --------------------------------------------------------------------------- CLI / twistd

OPTIONS = [
    ["nacos", None, DEFAULT_SERVER,
     "Nacos servers, comma-separated: http[s]://host:port[/context] (context /nacos)."],
    ["nacos-namespace", None, DEFAULT_NAMESPACE, "Nacos namespace id."],
    ["nacos-group", None, DEFAULT_GROUP, "Nacos group of the services."],
    ["nacos-cluster", None, DEFAULT_CLUSTER, "Nacos cluster of the instances we register."],
    ["nacos-clusters", None, "",
     "Clusters to look instances up in, comma-separated (default: every cluster with the v1 "
     "API; --nacos-cluster with v3, which lists only the clusters it is asked for)."],
    ["nacos-api", None, "auto",
     "Nacos HTTP API: auto (probe each server once), v1 (Nacos 1.x-3.1) or v3 (Nacos 3.x)."],
    ["nacos-user", None, "", "Nacos username (auth enabled); the password comes from "
     f"--nacos-password-file or ${PASSWORD_ENV}."],
    ["nacos-password-file", None, "", "File holding the Nacos password."],
    ["nacos-ca", None, "", "PEM CA to verify https Nacos servers with."],
    ["nacos-cert", None, "", "PEM client certificate for https Nacos servers."],
    ["nacos-key", None, "", "PEM key of --nacos-cert (if not in the same file)."],
    ["nacos-timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for one Nacos request.", float],
    ["nacos-refresh", None, DEFAULT_REFRESH,
     "Seconds between instance-list polls of a watched service while no UDP push arrives.",
     float],
    ["nacos-push-port", None, "0",
     "UDP port for Nacos's change pushes (0: any free port; 'off': no push, poll only)."],
    ["nacos-push-host", None, "",
     "Our address that Nacos pushes to, and the push port binds (default: our address on "
     "the route to the first Nacos server)."],
    ["nacos-push-refresh", None, DEFAULT_PUSH_REFRESH,
     "Seconds between safety-net polls of a watched service while pushes arrive (< 30).",
     float],
    ["nacos-poll-budget", None, DEFAULT_POLL_BUDGET,
     "Instance-list polls per second for all watched services together.", float],
    ["nacos-ttl", None, DEFAULT_TTL,
     "Seconds without a beat before Nacos marks our instances unhealthy (beats every TTL/3, "
     "deleted after 2 x TTL; 0: Nacos's 15 s default). --metadata preserved.* keys win.",
     float],
]


def parse_push_port(value: Any) -> Optional[int]:
    """``--nacos-push-port``: a port number, 0 for any, or off/none/-1 for no push."""
    text = str(value if value is not None else "0").strip().lower()
    if text in ("off", "none", "no", "false", "-1"):
        return None
    try:
        port = int(text or "0")
    except ValueError:
        raise usage.UsageError(f"--nacos-push-port must be a port, 0 or 'off', not {value!r}")
    if not 0 <= port < 65536:
        raise usage.UsageError(f"--nacos-push-port out of range: {port}")
    return port


def read_password(path: Optional[str], environ: Mapping[str, str] = os.environ
                  ) -> Optional[str]:
    """From the file if one is named (without its trailing newline), else the environment."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise usage.UsageError(f"cannot read the Nacos password file: {e}")
    return environ.get(PASSWORD_ENV) or None


def from_options(reactor: Any, options: Mapping[str, Any]) -> NacosRegistry:
    user = options.get("nacos-user") or None
    password = read_password(options.get("nacos-password-file"))
    if user and password is None:
        raise usage.UsageError(f"--nacos-user needs --nacos-password-file or ${PASSWORD_ENV}")
    tls = TLSFiles(ca=options.get("nacos-ca") or None, cert=options.get("nacos-cert") or None,
                   key=options.get("nacos-key") or None)
    ttl = float(options.get("nacos-ttl", DEFAULT_TTL))
    if ttl and ttl < 1:
        raise usage.UsageError(f"--nacos-ttl must be 0 or at least 1 s, not {ttl:g}")
    numbers = {name: float(options.get(f"nacos-{name.replace('_', '-')}") or default)
               for name, default in (("refresh", DEFAULT_REFRESH),
                                     ("push_refresh", DEFAULT_PUSH_REFRESH),
                                     ("poll_budget", DEFAULT_POLL_BUDGET))}
    if min(numbers.values()) <= 0:
        raise usage.UsageError("--nacos-refresh, --nacos-push-refresh and --nacos-poll-budget "
                               "must be positive")
    api = str(options.get("nacos-api") or "auto").lower()
    if api not in API_CHOICES:
        raise usage.UsageError(f"--nacos-api must be one of {', '.join(API_CHOICES)}, "
                               f"not {api!r}")
    return NacosRegistry(
        reactor, options.get("nacos") or DEFAULT_SERVER, api=api,
        clusters=[c.strip() for c in str(options.get("nacos-clusters") or "").split(",")],
        namespace=options.get("nacos-namespace") or DEFAULT_NAMESPACE,
        group=options.get("nacos-group") or DEFAULT_GROUP,
        cluster=options.get("nacos-cluster") or DEFAULT_CLUSTER,
        username=user, password=password if user else None,
        tls=tls if tls.enabled else None,
        timeout=float(options.get("nacos-timeout") or DEFAULT_TIMEOUT), ttl=ttl,
        push_port=parse_push_port(options.get("nacos-push-port", "0")),
        push_host=options.get("nacos-push-host") or None, refresh=numbers["refresh"],
        push_refresh=numbers["push_refresh"], poll_budget=numbers["poll_budget"])


__all__ = ["NacosRegistry", "NacosApi", "V1", "V3", "API_CHOICES", "OPTIONS", "from_options", "read_password",
           "nacos_message", "error_for", "liveness_metadata", "parse_push_port", "BEAT_OK",
           "BEAT_UNKNOWN"]
