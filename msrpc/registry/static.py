"""
A registry of fixed addresses from configuration, for tests and simple setups.

Instances registered in this process are added to the same table, so one process can serve
and call through it; nothing is shared with other processes (use ``local`` for that).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from msrpc.observe import RegistryEvents
from msrpc.registry.instance import ServiceInstance, parse_address
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.registry.registration import CallbackWatch, Registration


@implementer(IRegistry, IServiceCatalog)
class StaticRegistry:
    name = "static"

    def __init__(self, services: Mapping[str, Sequence[str | ServiceInstance]] | None = None
                 ) -> None:
        self._instances: dict[str, list[ServiceInstance]] = {}
        self._watchers: dict[str, list[WatchCallback]] = {}
        self._registrations: list[Registration] = []
        #: Never reports anything (nothing can fail); there for uniformity.
        self.events = RegistryEvents(self.name)
        for service, addresses in (services or {}).items():
            self._instances[service] = [_as_instance(service, a) for a in addresses]

    def register(self, instance: ServiceInstance) -> "Deferred[IRegistration]":
        self._instances.setdefault(instance.service, []).append(instance)
        self._notify(instance.service)

        def deregister() -> "Deferred[None]":
            listed = self._instances.get(instance.service, [])
            if instance in listed:
                listed.remove(instance)
                self._notify(instance.service)
            return succeed(None)

        registration = Registration(instance, deregister)
        self._registrations.append(registration)
        return succeed(registration)

    def lookup(self, service: str) -> "Deferred[list[ServiceInstance]]":
        return succeed(list(self._instances.get(service, [])))

    def services(self) -> "Deferred[list[str]]":
        return succeed(sorted(name for name, listed in self._instances.items() if listed))

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        callbacks = self._watchers.setdefault(service, [])
        callbacks.append(callback)
        callback(list(self._instances.get(service, [])))
        return CallbackWatch(lambda: callbacks.remove(callback))

    def close(self) -> "Deferred[None]":
        for registration in self._registrations:
            registration.deregister()
        self._registrations.clear()
        self._watchers.clear()
        return succeed(None)

    def _notify(self, service: str) -> None:
        current = list(self._instances.get(service, []))
        for callback in list(self._watchers.get(service, [])):
            callback(current)


def _as_instance(service: str, address: str | ServiceInstance) -> ServiceInstance:
    if isinstance(address, ServiceInstance):
        return address
    host, port = parse_address(address)
    return ServiceInstance(service=service, host=host, port=port)


def parse_static_spec(spec: str) -> dict[str, list[str]]:
    """``"arith=127.0.0.1:9112,127.0.0.1:9113;echo=h:1"`` → {service: [addresses]}."""
    services: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        service, sep, addresses = part.partition("=")
        if not sep or not service.strip():
            raise ValueError(f"static registry entry must be service=host:port,...: {part!r}")
        for address in filter(None, (a.strip() for a in addresses.split(","))):
            parse_address(address)  # validate early, with a clear message
            services.setdefault(service.strip(), []).append(address)
    return services


OPTIONS = [
    ["static", None, "", "Static registry: 'service=host:port[,host:port][;service=...]'."],
]


def from_options(reactor: Any, options: Mapping[str, Any]) -> StaticRegistry:
    return StaticRegistry(parse_static_spec(options.get("static") or ""))
