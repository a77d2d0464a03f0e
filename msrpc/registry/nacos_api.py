"""
The HTTP dialects of Nacos's naming API that msrpc speaks, as data: request paths and
parameters, and what the answers mean.  No I/O here; ``nacos.py`` sends the requests.

``V1`` (``/nacos/v1/ns/...``, verified on 2.3.2 and 3.1.0): Nacos 1.x and 2.x, and 3.0/3.1
while ``nacos.core.api.compatibility.client.enabled`` is on (their default; off, the paths
answer 410).  Removed from 3.2 (404) unless the operator installs the legacy adapter.
Subscribes to UDP pushes.

``V3`` (``/nacos/v3/client/ns/...``, verified on 3.1.0): Nacos 3.x.  Answers come in the
``{"code", "message", "data"}`` envelope; a heartbeat is the register POST with
``heartBeat=true`` (code 21003: the server lost the instance); the instance list holds
unhealthy instances too and only the clusters it is asked for (``DEFAULT`` when none is
named: alibaba/nacos#14650); there is no push and no service list for HTTP clients (the
admin API has one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from msrpc.errors import RegistryError
from msrpc.registry.instance import ServiceInstance

BACKEND = "nacos"

BEAT_OK = 10200
BEAT_UNKNOWN = 20404      # v1 (NamingResponseCode.RESOURCE_NOT_FOUND): register again
V3_INSTANCE_NOT_FOUND = 21003
V3_OK = 0

#: The service a dialect probe lists (any name will do; it need not exist).
PROBE_SERVICE = "msrpc-api-probe"


@dataclass(frozen=True)
class Request:
    """One HTTP request, below the server's context path."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    form: bool = False  # parameters in a form body (else in the query string)


class Beat(NamedTuple):
    """A heartbeat's answer: does the server still know the instance, and the interval."""

    known: bool
    interval: Optional[float]  # seconds, if the server says


class Page(NamedTuple):
    names: list[str]
    total: int


def parse_json(body: bytes, what: str) -> Any:
    """A JSON answer, or a RegistryError quoting what came instead."""
    try:
        return json.loads(body)
    except ValueError:
        raise RegistryError(f"{what}: not JSON: {body[:200]!r}", backend=BACKEND)


def instance_key(instance: ServiceInstance) -> dict[str, str]:
    """The fields that name one instance on the server."""
    return {"serviceName": instance.service, "groupName": instance.group,
            "namespaceId": instance.namespace, "clusterName": instance.cluster,
            "ip": instance.host, "port": str(instance.port)}


def instance_body(instance: ServiceInstance) -> dict[str, str]:
    """Everything a registration publishes."""
    return {**instance_key(instance), "weight": repr(instance.weight),
            "enabled": str(instance.enabled).lower(), "healthy": "true", "ephemeral": "true",
            "metadata": json.dumps(dict(instance.metadata))}


class NacosApi:
    """One dialect.  ``pushes``: its instance list can subscribe to UDP pushes."""

    name = ""
    pushes = False
    #: Login paths in the order to try (a 404/410 moves to the next).
    login_paths: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<NacosApi {self.name}>"

    def register(self, instance: ServiceInstance) -> Request:
        raise NotImplementedError

    def beat(self, instance: ServiceInstance) -> Request:
        raise NotImplementedError

    def deregister(self, instance: ServiceInstance) -> Request:
        raise NotImplementedError

    def instances(self, service: str, group: str, namespace: str,
                  clusters: Sequence[str], extra: Mapping[str, str]) -> Request:
        raise NotImplementedError

    def services(self, group: str, namespace: str, page: int, size: int) -> Request:
        raise NotImplementedError

    def check_done(self, body: bytes, what: str) -> None:
        """A register or deregister answer: raise if it says it failed."""
        raise NotImplementedError

    def parse_beat(self, body: bytes, what: str) -> Beat:
        raise NotImplementedError

    def parse_instances(self, body: bytes, what: str) -> list[Mapping[str, Any]]:
        """The hosts of an instance-list answer (healthy or not; the caller filters)."""
        raise NotImplementedError

    def parse_services(self, body: bytes, group: str, what: str) -> Page:
        raise NotImplementedError


class _V1(NacosApi):
    name = "v1"
    pushes = True
    login_paths = ("/v1/auth/login",)
    INSTANCE = "/v1/ns/instance"

    def register(self, instance: ServiceInstance) -> Request:
        return Request("POST", self.INSTANCE, instance_body(instance), form=True)

    def beat(self, instance: ServiceInstance) -> Request:
        # Light beat: no instance body, so a forgotten instance answers 20404 instead of
        # being re-created (which could resurrect one whose beat raced its deregistration).
        return Request("PUT", "/v1/ns/instance/beat", instance_key(instance), form=True)

    def deregister(self, instance: ServiceInstance) -> Request:
        return Request("DELETE", self.INSTANCE, {**instance_key(instance), "ephemeral": "true"})

    def instances(self, service: str, group: str, namespace: str,
                  clusters: Sequence[str], extra: Mapping[str, str]) -> Request:
        params = {"serviceName": service, "groupName": group, "namespaceId": namespace,
                  "healthyOnly": "true", **extra}
        if clusters:
            params["clusters"] = ",".join(clusters)
        return Request("GET", "/v1/ns/instance/list", params)

    def services(self, group: str, namespace: str, page: int, size: int) -> Request:
        return Request("GET", "/v1/ns/service/list", {
            "pageNo": str(page), "pageSize": str(size), "groupName": group,
            "namespaceId": namespace})

    def check_done(self, body: bytes, what: str) -> None:
        pass  # "ok"; failures are HTTP errors

    def parse_beat(self, body: bytes, what: str) -> Beat:
        data = parse_json(body, what)
        if not isinstance(data, dict):
            raise RegistryError(f"{what}: unexpected answer {body[:200]!r}", backend=BACKEND)
        millis = data.get("clientBeatInterval")
        interval = float(millis) / 1000.0 if isinstance(millis, (int, float)) and millis > 0 \
            else None
        return Beat(int(data.get("code", BEAT_OK)) != BEAT_UNKNOWN, interval)

    def parse_instances(self, body: bytes, what: str) -> list[Mapping[str, Any]]:
        data = parse_json(body, what)
        hosts = data.get("hosts") if isinstance(data, dict) else None
        return [h for h in hosts or () if isinstance(h, dict)]

    def parse_services(self, body: bytes, group: str, what: str) -> Page:
        data = parse_json(body, what)
        if not isinstance(data, dict):
            raise RegistryError(f"{what}: unexpected answer {body[:200]!r}", backend=BACKEND)
        return Page([str(n) for n in data.get("doms") or ()], int(data.get("count") or 0))


class _V3(NacosApi):
    name = "v3"
    pushes = False
    login_paths = ("/v3/auth/user/login", "/v1/auth/login")
    INSTANCE = "/v3/client/ns/instance"

    def register(self, instance: ServiceInstance) -> Request:
        return Request("POST", self.INSTANCE, instance_body(instance), form=True)

    def beat(self, instance: ServiceInstance) -> Request:
        return Request("POST", self.INSTANCE, {**instance_key(instance), "heartBeat": "true",
                                               "ephemeral": "true"}, form=True)

    def deregister(self, instance: ServiceInstance) -> Request:
        return Request("DELETE", self.INSTANCE, {**instance_key(instance), "ephemeral": "true"})

    def instances(self, service: str, group: str, namespace: str,
                  clusters: Sequence[str], extra: Mapping[str, str]) -> Request:
        return Request("GET", "/v3/client/ns/instance/list", {
            "serviceName": service, "groupName": group, "namespaceId": namespace,
            "clusterName": ",".join(clusters)})

    def services(self, group: str, namespace: str, page: int, size: int) -> Request:
        return Request("GET", "/v3/admin/ns/service/list", {
            "pageNo": str(page), "pageSize": str(size), "groupNameParam": group,
            "namespaceId": namespace, "ignoreEmptyService": "true"})

    def _envelope(self, body: bytes, what: str, accept: tuple[int, ...] = (V3_OK,)
                  ) -> dict[str, Any]:
        """The ``{"code", "message", "data"}`` answer; raise unless its code is accepted."""
        envelope = parse_json(body, what)
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise RegistryError(f"{what}: not a Nacos v3 answer: {body[:200]!r}",
                                backend=BACKEND)
        if envelope["code"] not in accept:
            message = envelope.get("message") or ""
            detail = envelope.get("data")
            if isinstance(detail, str) and detail:
                message = f"{message}: {detail}"
            raise RegistryError(f"{what}: {message} (code {envelope['code']})",
                                backend=BACKEND, details=envelope)
        return envelope

    def _data(self, body: bytes, what: str) -> Any:
        return self._envelope(body, what).get("data")

    def check_done(self, body: bytes, what: str) -> None:
        self._data(body, what)

    def parse_beat(self, body: bytes, what: str) -> Beat:
        envelope = self._envelope(body, what, accept=(V3_OK, V3_INSTANCE_NOT_FOUND))
        return Beat(envelope["code"] == V3_OK, None)

    def parse_instances(self, body: bytes, what: str) -> list[Mapping[str, Any]]:
        data = self._data(body, what)
        return [h for h in data or () if isinstance(h, dict)] if isinstance(data, list) else []

    def parse_services(self, body: bytes, group: str, what: str) -> Page:
        data = self._data(body, what)
        if not isinstance(data, dict):
            raise RegistryError(f"{what}: unexpected answer {body[:200]!r}", backend=BACKEND)
        items = [i for i in data.get("pageItems") or () if isinstance(i, dict)]
        # groupNameParam matches by pattern: keep our group only
        names = [str(i.get("name")) for i in items if i.get("groupName") == group]
        return Page(names, int(data.get("totalCount") or 0))


V1: NacosApi = _V1()
V3: NacosApi = _V3()
DIALECTS: dict[str, NacosApi] = {"v1": V1, "v3": V3}


def probe_request() -> Request:
    """Lists a service the v3 way: only a Nacos that has the v3 client API knows the path."""
    return Request("GET", "/v3/client/ns/instance/list", {"serviceName": PROBE_SERVICE})


def dialect_from_probe(status: int, body: bytes) -> Optional[NacosApi]:
    """
    What a probe's answer says: v3 if the path exists (200 in the envelope, or 401/403 from
    an auth filter that found a handler), v1 if it does not (404, and 410 when the operator
    switched v3 off, which no release does); None when the answer says neither.
    """
    if status in (401, 403):
        return V3
    if status == 200:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return V3 if isinstance(data, dict) and "code" in data else None
    if status in (404, 405, 410, 501):
        return V1
    return None


__all__ = ["NacosApi", "Request", "Beat", "Page", "parse_json", "V1", "V3", "DIALECTS", "BEAT_OK",
           "BEAT_UNKNOWN", "V3_INSTANCE_NOT_FOUND", "probe_request", "dialect_from_probe",
           "instance_key", "instance_body"]
