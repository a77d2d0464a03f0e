"""
Service name → live instances, kept in a cache that calls read synchronously.

The first call for a service looks it up; from then on the registry's watch keeps the cache
current.  Registry trouble never empties a cache: a failed lookup with a cached list keeps
the list, and watches only ever deliver good lists.  So registry work stays off the call path.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Optional, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from msrpc.balance import Balancer, Member
from msrpc.errors import NoInstances
from msrpc.observe import registry_events
from msrpc.pool import Endpoint, Pool
from msrpc.registry.instance import DIALECT_KEY, ServiceInstance
from msrpc.registry.interface import IRegistry, IWatch


class ServiceView:
    """The cached, callable instances of one service and the balancer that picks among them."""

    log = Logger()

    def __init__(self, service: str, pool: Pool, balancer: Balancer,
                 registry_name: str, dialect: Optional[str] = None) -> None:
        self.service = service
        self.pool = pool
        self.balancer = balancer
        self.registry_name = registry_name
        #: The dialect the client was told this service speaks (None: as its instances'
        #: metadata says).
        self.dialect = dialect
        self.instances: list[ServiceInstance] = []
        self.members: list[Member] = []
        self.ready = False
        self.closed = False
        self.watch: Optional[IWatch] = None
        self._waiters: list[Deferred["ServiceView"]] = []

    def __repr__(self) -> str:
        return f"<ServiceView {self.service} {len(self.members)} member(s)>"

    # -- hot path
    def pick(self, key: Any = None) -> Member:
        try:
            return self.balancer.pick(key)
        except NoInstances:
            raise self._none() from None

    def pick_excluding(self, tried: Collection[Endpoint], key: Any = None) -> Member:
        try:
            return self.balancer.pick_excluding(tried, key)
        except NoInstances:
            raise self._none() from None

    def _none(self) -> NoInstances:
        listed = len(self.instances)
        detail = f" ({listed} listed, none callable)" if listed else ""
        return NoInstances(f"no live instance of {self.service!r} in the "
                           f"{self.registry_name} registry{detail}")

    # -- updates
    def update(self, instances: Sequence[ServiceInstance]) -> None:
        """Take a new full list (from a lookup or the watch)."""
        old = {(m.endpoint.key, m.instance): m for m in self.members}
        members = []
        for instance in instances:
            if not instance.selectable:
                continue
            member = old.pop(((instance.host, instance.port), instance), None)
            if member is None:
                member = Member(instance, self.pool.acquire(
                    instance.host, instance.port, instance.metadata.get("tls") == "1",
                    self.dialect or instance.metadata.get(DIALECT_KEY)))
            members.append(member)
        for gone in old.values():
            self.pool.release(gone.endpoint)
        changed = [m.instance for m in members] != [m.instance for m in self.members]
        self.instances = list(instances)
        self.members = members
        self.refresh()
        if changed and self.ready:
            self.log.info("{service}: {n} callable instance(s): {addresses}",
                          service=self.service, n=len(members),
                          addresses=", ".join(m.endpoint.address for m in members))
        if not self.ready:
            self.ready = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(self)

    def refresh(self) -> None:
        """Hand the balancer the members it may pick now (ejected ones left out)."""
        now = self.pool.clock.seconds()
        active = [m for m in self.members if m.endpoint.ejected_until <= now]
        self.balancer.update(active or self.members)  # never eject the last one

    def wait(self) -> "Deferred[ServiceView]":
        if self.ready:
            return defer.succeed(self)
        d: Deferred[ServiceView] = Deferred()
        self._waiters.append(d)
        return d

    def fail_waiters(self, failure: Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def close(self) -> None:
        self.closed = True
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        for member in self.members:
            self.pool.release(member.endpoint)
        self.members = []


class Resolver:
    log = Logger()

    def __init__(self, registry: IRegistry, pool: Pool,
                 balancer_for: Callable[[str], Balancer],
                 dialect_for: Callable[[str], Optional[str]] = lambda service: None) -> None:
        self.registry = registry
        self.pool = pool
        self.balancer_for = balancer_for
        self.dialect_for = dialect_for
        #: Ready views, read by the client's hot path.
        self.views: dict[str, ServiceView] = {}
        self._pending: dict[str, ServiceView] = {}

    def resolve(self, service: str) -> "Deferred[ServiceView]":
        """The ready view of ``service``: cached, or after its first lookup."""
        view = self.views.get(service)
        if view is not None:
            return defer.succeed(view)
        view = self._pending.get(service)
        if view is not None:
            return view.wait()
        view = ServiceView(service, self.pool, self.balancer_for(service),
                           getattr(self.registry, "name", "?"), self.dialect_for(service))
        self._pending[service] = view
        d = view.wait()
        self.registry.lookup(service).addCallbacks(
            self._looked_up, self._lookup_failed, callbackArgs=(view,), errbackArgs=(view,))
        return d

    def _looked_up(self, instances: list[ServiceInstance], view: ServiceView) -> None:
        if self._pending.pop(view.service, None) is not view:
            return  # closed meanwhile
        self.views[view.service] = view
        # Watch first: ``update`` wakes the waiting calls, and whatever they do next (say,
        # close the client and its registry at once, as ``msrpc call`` does after
        # NoInstances) must find the watch in place to stop it, not have it started
        # afterwards on a closed registry.  A watch may deliver a list at once (static).
        try:
            watch = self.registry.watch(view.service, view.update)
        except Exception as e:  # the registry failed or was closed under us
            self.log.warn("cannot watch {service} in {registry}: {error}",
                          service=view.service, registry=view.registry_name, error=e)
            watch = None
        if view.closed:
            if watch is not None:
                watch.stop()
            return
        view.watch = watch
        if not view.ready:
            view.update(instances)

    def _lookup_failed(self, failure: Failure, view: ServiceView) -> None:
        # No cache yet: this call fails with the registry's error; the next one retries.
        self._pending.pop(view.service, None)
        events = registry_events(self.registry)
        if events is not None:
            events.error("lookup", failure.value)
        self.log.warn("lookup of {service} in {registry} failed: {error}",
                      service=view.service, registry=view.registry_name,
                      error=failure.getErrorMessage())
        view.fail_waiters(failure)

    def views_with(self, endpoint: Endpoint) -> list[ServiceView]:
        return [v for v in self.views.values() if any(m.endpoint is endpoint
                                                      for m in v.members)]

    def close(self) -> None:
        for view in list(self.views.values()) + list(self._pending.values()):
            view.close()
        self.views.clear()
        self._pending.clear()
