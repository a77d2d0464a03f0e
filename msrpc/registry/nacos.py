"""
The Nacos registry backend (``--registry nacos``), over Nacos's naming HTTP open API.

It speaks the **v1** API (``/nacos/v1/ns/...``), verified against Nacos 2.3.2 (see
docs/ref/nacos-api-verified.md): the same paths and bodies serve Nacos 1.x, 2.x and, by
default (``nacos.core.api.compatibility.client.enabled=true``), 3.x, whereas the v2 open API
exists only on 2.2+, wraps the same bodies in an envelope and wants ``group@@service`` in its
beat.  All paths live in one ``NacosApi`` value, so another dialect is a new value.

What it does, as the official clients do:

- ``register`` publishes an ephemeral instance and beats for it every ``clientBeatInterval``
  (the server's answer; 5 s by default).  Beats are *light* (no instance body), so a server
  that has forgotten the instance (it expired, or Nacos restarted) answers code 20404 and we
  register it again with its full data.  A full beat would let Nacos re-create it silently,
  but also resurrect an instance whose beat raced its deregistration.
- ``register`` also publishes the instance's liveness timing (``ttl``): Nacos marks an
  instance unhealthy when its beats stop for ``preserved.heart.beat.timeout`` and honours
  ``preserved.heart.beat.interval``/``preserved.ip.delete.timeout`` from its metadata
  (verified on 2.3.2), so a killed server leaves the healthy list within the TTL plus
  Nacos's beat-check period (5 s, fixed in the server) instead of 15-20 s.
- ``lookup`` lists healthy, enabled instances.  ``watch`` subscribes to Nacos's UDP push
  (``nacos_push``): a push makes the service be listed again at once, and polls every
  ``push_refresh`` seconds stay as a safety net (lost datagrams, a Nacos restart).  When a
  poll finds a change that no push announced, pushes are not arriving (a firewall) and
  watches poll every ``refresh`` seconds until a push arrives again.  All watches of a
  registry share one poll per service within ``poll_budget`` polls per second
  (``shared_polls``).  Nacos 2.x always answers ``checksum: ""`` and a fresh
  ``lastRefTime``, so changes are found by comparing the lists themselves.
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
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import treq
from twisted.internet.defer import Deferred, DeferredList, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from msrpc.errors import RegistryAuthError, RegistryError
from msrpc.registry.http import Endpoints, TLSFiles, make_http_client, make_pool, with_timeout
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.observe import RegistryEvents
from msrpc.registry.nacos_push import USER_AGENT, Push, PushListener
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

BEAT_OK = 10200
BEAT_UNKNOWN = 20404  # NamingResponseCode.RESOURCE_NOT_FOUND: register again


@dataclass(frozen=True)
class NacosApi:
    """The request paths of one Nacos HTTP API dialect, below the server's context path."""

    login: str
    instance: str        # POST register, DELETE deregister
    beat: str            # PUT
    instance_list: str   # GET
    service_list: str    # GET


V1 = NacosApi(login="/v1/auth/login", instance="/v1/ns/instance",
              beat="/v1/ns/instance/beat", instance_list="/v1/ns/instance/list",
              service_list="/v1/ns/service/list")


class _NotServing(ConnectionError):
    """A 502/503/504 answer: this server cannot serve now, so the next one is tried."""


def nacos_message(body: bytes) -> str:
    """Nacos's own words from an error body: plain text, Spring's JSON error, or v2's envelope."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict):
        return text
    message = data.get("message") or data.get("msg") or data.get("error") or ""
    detail = data.get("data")
    if isinstance(detail, str) and detail and detail != message:
        message = f"{message}: {detail}" if message else detail
    return str(message) or text


def error_for(status: int, body: bytes, what: str, login: bool = False) -> RegistryError:
    """The RegistryError for one Nacos error answer, carrying its message and status."""
    message = nacos_message(body) or f"HTTP {status}"
    # A wrong password is a 403; an unknown user is a 500 "caused: User x not found;".
    rejected = status in (401, 403) or (login and "not found" in message.lower())
    cls = RegistryAuthError if rejected else RegistryError
    return cls(f"{what}: {message}", backend=BACKEND, status=status, details=message)


def _with_context(url: str, context: str) -> str:
    """``http://h:8848`` → ``http://h:8848/nacos``; a URL with its own path keeps it."""
    return url if urlsplit(url).path.strip("/") else url.rstrip("/") + context


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise RegistryError(f"{what}: not JSON: {body[:200]!r}", backend=BACKEND)


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
            code, interval = await self._registry._send_beat(instance)
            if code == BEAT_UNKNOWN and self.running:
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
    reactor) drives beats, polls and request timeouts.
    """

    name = BACKEND

    def __init__(self, reactor: Any, servers: str | Sequence[str] = DEFAULT_SERVER, *,
                 clock: Optional[IReactorTime] = None, http: Any = None,
                 namespace: str = DEFAULT_NAMESPACE, group: str = DEFAULT_GROUP,
                 cluster: str = DEFAULT_CLUSTER, username: Optional[str] = None,
                 password: Optional[str] = None, tls: Optional[TLSFiles] = None,
                 timeout: float = DEFAULT_TIMEOUT, refresh: float = DEFAULT_REFRESH,
                 context_path: str = DEFAULT_CONTEXT, api: NacosApi = V1,
                 ttl: float = DEFAULT_TTL, push_port: Optional[int] = 0,
                 push_host: Optional[str] = None,
                 push_refresh: float = DEFAULT_PUSH_REFRESH,
                 poll_budget: float = DEFAULT_POLL_BUDGET) -> None:
        if username and password is None:
            raise ValueError("a Nacos username needs a password")
        if ttl and ttl < 1:
            raise ValueError(f"the Nacos TTL must be 0 (Nacos's default) or >= 1 s, got {ttl}")
        if refresh <= 0 or push_refresh <= 0 or poll_budget <= 0:
            raise ValueError("Nacos poll intervals and the poll budget must be positive")
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
        self.timeout = timeout
        self.refresh = refresh
        self.push_refresh = push_refresh
        self.ttl = ttl
        self.api = api
        #: Counters for benchmarks, tests and metrics: "requests" (HTTP requests sent),
        #: "changes.pushed"/"changes.polled" (list changes found after a push / by a poll).
        self.stats: Counter[str] = Counter()
        self._in_flight: set[Deferred[Any]] = set()
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
        return (f"<NacosRegistry {','.join(self.endpoints.urls)} namespace={self.namespace} "
                f"group={self.group}{user}>")

    # ------------------------------------------------------------------ IRegistry

    def register(self, instance: ServiceInstance) -> "Deferred[IRegistration]":
        return Deferred.fromCoroutine(self._register(instance))

    def lookup(self, service: str, clusters: Sequence[str] = ()
               ) -> "Deferred[list[ServiceInstance]]":
        """
        Healthy, enabled instances of ``service`` (in ``clusters`` only, if given).  A lookup
        of the whole service also subscribes to its pushes, as a watch usually follows.
        """
        self._start_push()
        return Deferred.fromCoroutine(self._lookup(service, clusters))

    def services(self) -> "Deferred[list[str]]":
        """The services of our namespace and group (Nacos's service list, paged)."""
        async def services() -> list[str]:
            names: list[str] = []
            page = 1
            while True:
                what = "service list"
                data = _json(await self._call("GET", self.api.service_list, {
                    "pageNo": str(page), "pageSize": "500", "groupName": self.group,
                    "namespaceId": self.namespace}, what), what)
                batch = data.get("doms") or []
                names.extend(str(n) for n in batch)
                if not batch or len(names) >= int(data.get("count") or 0):
                    return sorted(set(names))
                page += 1

        return Deferred.fromCoroutine(services())

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        self._start_push()
        return self._polls.watch(service, callback)

    # ------------------------------------------------------------------ push

    def _start_push(self) -> None:
        if self.push is not None and self.push_working is None:
            self.push_working = False
            self.push.start().addCallback(self._push_started)

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
            self.push_working = False
            self._polls.interval = self.refresh

    def close(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._close())

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
        await self._call("DELETE", self.api.instance,
                         {**self._instance_key(instance), "ephemeral": "true"},
                         f"deregister {instance.service} at {instance.address}")
        log.info("deregistered {service} at {address} from nacos",
                 service=instance.service, address=instance.address)

    def _lookup_all(self, service: str) -> "Deferred[list[ServiceInstance]]":
        return Deferred.fromCoroutine(self._lookup(service, ()))

    async def _lookup(self, service: str, clusters: Sequence[str]) -> list[ServiceInstance]:
        params = {"serviceName": service, "groupName": self.group,
                  "namespaceId": self.namespace, "healthyOnly": "true"}
        if clusters:
            params["clusters"] = ",".join(clusters)
        elif self.push is not None:
            params.update(self.push.params)
        what = f"lookup of {service}"
        data = _json(await self._call("GET", self.api.instance_list, params, what), what)
        group = str(data.get("groupName") or self.group)
        found = []
        for host in data.get("hosts") or ():
            instance = self._to_instance(service, group, host)
            if instance is not None and instance.healthy and instance.enabled:
                found.append(instance)
        return found

    def _to_instance(self, service: str, group: str, host: Mapping[str, Any]
                     ) -> Optional[ServiceInstance]:
        try:
            return ServiceInstance(
                service=service, host=str(host["ip"]), port=int(host["port"]),
                weight=float(host.get("weight", 1.0)),
                metadata={str(k): str(v) for k, v in (host.get("metadata") or {}).items()},
                instance_id=str(host.get("instanceId") or ""), namespace=self.namespace,
                group=group, cluster=str(host.get("clusterName") or ""),
                enabled=bool(host.get("enabled", True)),
                healthy=bool(host.get("healthy", True)))
        except (KeyError, TypeError, ValueError) as e:
            log.warn("ignoring a malformed instance of {service} from nacos: {host!r} ({error})",
                     service=service, host=host, error=e)
            return None

    async def _close(self) -> None:
        self._polls.stop()
        self._suspects.clear()
        if self.push is not None:
            await self.push.stop()
        registrations, self._registrations = self._registrations, []
        for _, beater in registrations:
            beater.stop()
        results: list[tuple[bool, Any]] = await DeferredList(
            [r.deregister() for r, _ in registrations], consumeErrors=True)
        for (registration, _), (ok, result) in zip(registrations, results):
            if not ok:
                log.warn("could not deregister {address} from nacos on close: {error}",
                         address=registration.instance.address, error=result.getErrorMessage())
        for request in list(self._in_flight):  # e.g. a beat sent before close
            request.cancel()
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # ------------------------------------------------------------------ requests

    def _instance_key(self, instance: ServiceInstance) -> dict[str, str]:
        return {"serviceName": instance.service, "groupName": instance.group,
                "namespaceId": instance.namespace, "clusterName": instance.cluster,
                "ip": instance.host, "port": str(instance.port)}

    async def _send_register(self, instance: ServiceInstance) -> None:
        params = {**self._instance_key(instance), "weight": repr(instance.weight),
                  "enabled": str(instance.enabled).lower(), "healthy": "true",
                  "ephemeral": "true", "metadata": json.dumps(dict(instance.metadata))}
        await self._call("POST", self.api.instance, params,
                         f"register {instance.service} at {instance.address}", form=True)

    async def _send_beat(self, instance: ServiceInstance) -> tuple[int, Optional[float]]:
        """One light beat → (Nacos's code, its beat interval in seconds if it said one)."""
        what = f"beat for {instance.service} at {instance.address}"
        data = _json(await self._call("PUT", self.api.beat, self._instance_key(instance),
                                      what, form=True), what)
        millis = data.get("clientBeatInterval")
        interval = float(millis) / 1000.0 if isinstance(millis, (int, float)) and millis > 0 \
            else None
        return int(data.get("code", BEAT_OK)), interval

    async def _call(self, method: str, path: str, params: Mapping[str, str], what: str, *,
                    form: bool = False, login: bool = False) -> bytes:
        """One API request with failover, the token, and one fresh login after a 403."""
        authenticated = self.username is not None and not login
        for attempt in (1, 2):
            headers = {}
            if authenticated:
                headers["Authorization"] = f"Bearer {await self._access_token()}"
            status, body = await self.endpoints.attempt(
                lambda base: self._send(method, base + path, params, headers, form),
                what, BACKEND)
            if status == 403 and authenticated and attempt == 1:
                log.info("nacos refused our token for {what}: logging in again", what=what)
                self._token = None
                continue
            if status >= 400:
                raise error_for(status, body, what, login=login)
            return body
        raise AssertionError("unreachable")  # pragma: no cover

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

        d = with_timeout(Deferred.fromCoroutine(send()), self.timeout, self.clock)
        self._in_flight.add(d)
        return d.addBoth(self._landed, d)

    def _landed(self, result: Any, request: "Deferred[Any]") -> Any:
        self._in_flight.discard(request)
        return result

    async def _access_token(self) -> str:
        """The current token: a login when there is none or its lifetime is nearly over."""
        async with self._login_lock:
            if self._token is None or self.clock.seconds() >= self._token_renew_at:
                await self._login()
            assert self._token is not None
            return self._token

    async def _login(self) -> None:
        what = f"login to nacos as {self.username}"
        body = await self._call("POST", self.api.login,
                                {"username": self.username or "",
                                 "password": self.__password or ""},
                                what, form=True, login=True)
        data = _json(body, what)
        token = data.get("accessToken") if isinstance(data, dict) else None
        if not token:
            raise RegistryAuthError(f"{what}: no accessToken in the answer", backend=BACKEND)
        ttl = float(data.get("tokenTtl") or 18000)
        self._token = str(token)
        self._token_renew_at = self.clock.seconds() + ttl * (1 - TOKEN_RENEW_SHARE)
        log.info("logged in to nacos as {user} (token valid {ttl:.0f} s)",
                 user=self.username, ttl=ttl)


# --------------------------------------------------------------------------- CLI / twistd

OPTIONS = [
    ["nacos", None, DEFAULT_SERVER,
     "Nacos servers, comma-separated: http[s]://host:port[/context] (context /nacos)."],
    ["nacos-namespace", None, DEFAULT_NAMESPACE, "Nacos namespace id."],
    ["nacos-group", None, DEFAULT_GROUP, "Nacos group of the services."],
    ["nacos-cluster", None, DEFAULT_CLUSTER, "Nacos cluster of the instances we register."],
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
    return NacosRegistry(
        reactor, options.get("nacos") or DEFAULT_SERVER,
        namespace=options.get("nacos-namespace") or DEFAULT_NAMESPACE,
        group=options.get("nacos-group") or DEFAULT_GROUP,
        cluster=options.get("nacos-cluster") or DEFAULT_CLUSTER,
        username=user, password=password if user else None,
        tls=tls if tls.enabled else None,
        timeout=float(options.get("nacos-timeout") or DEFAULT_TIMEOUT), ttl=ttl,
        push_port=parse_push_port(options.get("nacos-push-port", "0")),
        push_host=options.get("nacos-push-host") or None, refresh=numbers["refresh"],
        push_refresh=numbers["push_refresh"], poll_budget=numbers["poll_budget"])


__all__ = ["NacosRegistry", "NacosApi", "V1", "OPTIONS", "from_options", "read_password",
           "nacos_message", "error_for", "liveness_metadata", "parse_push_port", "BEAT_OK",
           "BEAT_UNKNOWN"]
