"""The registry contract (DESIGN.md section 5) that every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from msrpc.registry.instance import ServiceInstance

#: Called with the full current list of healthy instances, each time it changes.
WatchCallback = Callable[["Sequence[ServiceInstance]"], None]


class IRegistration(Interface):
    """One instance kept registered (and alive) until deregistered."""

    instance = Attribute("The registered ServiceInstance.")

    def deregister() -> "Deferred[None]":
        """Stop keeping the instance alive and remove it from the registry."""


class IWatch(Interface):
    """A subscription to one service's instance list."""

    def stop() -> None:
        """No more callbacks after this returns."""


class IRegistry(Interface):
    """
    msgo's ``MsRegister{CreateCli, RegisterService, GetInfo, Close}``, asynchronous and
    watchable.  Every method returns at once; nothing blocks the reactor.
    """

    name = Attribute("Short backend name for logs: 'etcd', 'nacos', 'local', 'static'.")

    def register(instance: "ServiceInstance") -> "Deferred[IRegistration]":
        """Publish ``instance`` and keep it alive (lease, beat, heartbeat) by itself."""

    def lookup(service: str) -> "Deferred[list[ServiceInstance]]":
        """
        The live, healthy instances of ``service``.  An empty list means the registry says
        there are none; a failure (RegistryError) means it could not say.
        """

    def watch(service: str, callback: WatchCallback) -> IWatch:
        """
        Call ``callback`` with the full instance list once it is known and after every
        change.  Errors are retried and logged inside; the callback only sees good lists.
        """

    def close() -> "Deferred[None]":
        """Deregister everything this registry registered, stop all watches and timers."""


class IServiceCatalog(Interface):
    """Optional: a registry that can list the services it knows (``msrpc ls``)."""

    def services() -> "Deferred[list[str]]":
        """Names of the services with at least one registered instance, sorted."""
