"""A ready-made ``IRegistration`` for backends whose deregistration is one callable."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistration, IWatch


@implementer(IRegistration)
class Registration:
    """Deregisters at most once, however often ``deregister`` is called."""

    def __init__(self, instance: ServiceInstance,
                 deregister: Callable[[], "Deferred[None]"]) -> None:
        self.instance = instance
        self._deregister: Callable[[], Deferred[None]] | None = deregister

    @property
    def active(self) -> bool:
        return self._deregister is not None

    def deregister(self) -> "Deferred[None]":
        action, self._deregister = self._deregister, None
        if action is None:
            return succeed(None)
        return action()

    def __repr__(self) -> str:
        state = "active" if self.active else "deregistered"
        return f"<Registration {self.instance.service}@{self.instance.address} {state}>"


@implementer(IWatch)
class CallbackWatch:
    """An ``IWatch`` whose ``stop`` runs one callable once."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self._on_stop: Callable[[], None] | None = on_stop

    @property
    def stopped(self) -> bool:
        return self._on_stop is None

    def stop(self) -> None:
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()
