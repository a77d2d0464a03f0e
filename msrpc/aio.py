"""
msrpc and asyncio in one process.

**Serving** under ``twistd --reactor=asyncio msrpc`` (or ``--reactor=uvloop``): an
``async def`` handler runs as an asyncio ``Task`` on the reactor's loop, so it can await
asyncio-native libraries (aiohttp, asyncpg, redis.asyncio: anything that needs a running
task, ``asyncio.timeout`` included) and Deferreds (``self.client.call(...)``) alike.  A
deadline or a client's cancel cancels the task.  Under the other reactors handlers run as
before (``Deferred.fromCoroutine``), where awaiting an asyncio future is an error.

**Calling** from an asyncio program: ``msrpc.aio.Client`` starts Twisted's asyncio reactor
as a guest of the running loop (no second loop, no thread) and returns asyncio futures::

    import asyncio
    from msrpc import aio

    async def main():
        async with aio.Client() as client:           # the local registry by default
            print(await client.call("arith", "add", 1, 2))
            arith = client.proxy("arith")
            print(await arith.mul(6, 7))

    asyncio.run(main())

Bridging uses Twisted's ``Deferred.fromFuture`` one way; the other way (a Deferred awaited
inside a task) keeps the Deferred's own result in place for the coroutine that awaits it,
which ``Deferred.asFuture`` does not (it consumes it).  The asyncio futures are made with
txaio's asyncio API bound to the loop (``txaio.aio.with_config``): its Twisted-style
``canceller`` turns a cancelled future into a cancelled Deferred, and it leaves txaio's
process-wide framework choice alone.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import weakref
from typing import Any, Callable, Coroutine, Generator, Iterable, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.python.failure import Failure
from zope.interface import implementer

from msrpc.registry.interface import IRegistry

CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], "Deferred[Any]"]


def is_asyncio_reactor(reactor: Any) -> bool:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


def coroutine_runner(reactor: Any) -> CoroutineRunner:
    """How a server on ``reactor`` runs ``async def`` handlers: as asyncio tasks under an
    asyncio reactor, with ``Deferred.fromCoroutine`` otherwise."""
    return run_as_task if is_asyncio_reactor(reactor) else Deferred.fromCoroutine


_FUTURES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = \
    weakref.WeakKeyDictionary()


def _futures(loop: asyncio.AbstractEventLoop) -> Any:
    """txaio's asyncio API bound to ``loop`` (one per loop)."""
    futures = _FUTURES.get(loop)
    if futures is None:
        import txaio.aio

        futures = _FUTURES[loop] = txaio.aio.with_config(loop=loop)
    return futures


def wake_on(d: "Deferred[Any]", futures: Any) -> "asyncio.Future[None]":
    """
    A future that completes (with None) when ``d`` fires, leaving ``d``'s result for
    whoever awaits ``d`` itself.  Cancelling the future cancels ``d``; the failure that
    cancelling causes is then consumed (asyncio tells the task itself).
    """
    waiter = futures.create_future(canceller=lambda _: d.cancel())

    def fired(result: Any) -> Any:
        if waiter.cancelled():
            return None
        if not waiter.done():
            futures.resolve(waiter, None)
        return result

    d.addBoth(fired)
    return waiter  # type: ignore[no-any-return]


class _TaskBridge:
    """Drives a coroutine inside an asyncio task, turning each Deferred it awaits into a
    future the task can wait on; asyncio futures and bare yields pass straight through."""

    __slots__ = ("coro", "futures")

    def __init__(self, coro: Coroutine[Any, Any, Any], futures: Any) -> None:
        self.coro = coro
        self.futures = futures

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value: Any = None
        error: Optional[BaseException] = None
        while True:
            try:
                yielded = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                if isinstance(yielded, Deferred):
                    yield from wake_on(yielded, self.futures)
                else:
                    value = yield yielded
            except BaseException as e:  # the task was cancelled, or the future failed
                error = e


async def _bridged(coro: Coroutine[Any, Any, Any], futures: Any) -> Any:
    return await _TaskBridge(coro, futures)


def run_as_task(coro: Coroutine[Any, Any, Any]) -> "Deferred[Any]":
    """Run ``coro`` as an asyncio task on the running loop (see the module); cancelling the
    Deferred cancels the task."""
    loop = asyncio.get_running_loop()
    return Deferred.fromFuture(loop.create_task(_bridged(coro, _futures(loop))))


# --------------------------------------------------------------------------- reactor


def guest_reactor() -> Any:
    """
    Twisted's reactor on the running asyncio loop: an ``AsyncioSelectorReactor`` is
    installed on it if no reactor is installed yet, and started without running a loop of
    its own (the loop already runs).  Host names are resolved on a daemon thread of msrpc's,
    so the program exits when its main coroutine returns.
    """
    loop = asyncio.get_running_loop()
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    # (The loop a reactor wraps is only readable privately; it is read for a clear error.)
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor) or \
            getattr(reactor, "_asyncioEventloop", loop) is not loop:
        raise RuntimeError("another Twisted reactor is installed in this process; "
                           "msrpc.aio needs Twisted's asyncio reactor on the running loop")
    if not reactor.running:
        # Twisted resolves names on its reactor thread pool, whose threads only stop at a
        # reactor shutdown a guest never has: they would keep the program from exiting.
        reactor.installNameResolver(LoopResolver(loop))
        reactor.startRunning(installSignalHandlers=False)
    return reactor


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str, task: "asyncio.Task[None]") -> None:
        self.name = name
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()


_FAMILIES = {frozenset([IPv4Address]): socket.AF_INET, frozenset([IPv6Address]): socket.AF_INET6}


@implementer(IHostnameResolver)
class LoopResolver:
    """Host names resolved with the loop's ``getaddrinfo`` (asyncio's executor, which
    ``asyncio.run`` shuts down when the program ends)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Optional[Iterable[type]] = None,
                        transportSemantics: str = "TCP") -> _Resolution:
        family = _FAMILIES.get(frozenset(addressTypes or ()), socket.AF_UNSPEC)
        kind = socket.SOCK_DGRAM if transportSemantics == "UDP" else socket.SOCK_STREAM

        async def resolve() -> None:
            try:
                found = await self.loop.getaddrinfo(hostName, portNumber, family=family,
                                                    type=kind)
            except OSError:
                found = []
            for af, _, _, _, sockaddr in found:
                address = IPv4Address if af == socket.AF_INET else IPv6Address
                resolutionReceiver.addressResolved(
                    address(transportSemantics, *sockaddr[:2]))  # type: ignore[arg-type]
            resolutionReceiver.resolutionComplete()

        task = self.loop.create_task(resolve())
        resolution = _Resolution(hostName, task)
        resolutionReceiver.resolutionBegan(resolution)
        return resolution


RegistryChoice = Union[None, IRegistry, Callable[[Any], IRegistry]]


class Proxy:
    """``client.proxy("arith").add(1, 2)`` → an awaitable future."""

    def __init__(self, client: "Client", service: str, options: dict[str, Any]) -> None:
        self._client = client
        self._service = service
        self._options = options

    def __getattr__(self, method: str) -> Callable[..., "asyncio.Future[Any]"]:
        if method.startswith("_"):
            raise AttributeError(method)

        def remote(*args: Any, **kwargs: Any) -> "asyncio.Future[Any]":
            return self._client.invoke(self._service, method, args, kwargs, **self._options)

        return remote


class Client:
    """
    ``msrpc.client.Client`` for asyncio programs: the same options, every call an asyncio
    future (cancel it to cancel the call).  ``registry`` is an ``IRegistry``, a function of
    the reactor returning one (``lambda reactor: EtcdRegistry(reactor, [...])``), or None
    for the local registry.  Create it inside the running loop; close it (or use
    ``async with``) to close the connections and, when it made it, the registry.
    """

    def __init__(self, registry: RegistryChoice = None, **options: Any) -> None:
        from msrpc.client import Client as TwistedClient

        self.reactor = guest_reactor()
        self._loop = asyncio.get_running_loop()
        self._futures = _futures(self._loop)
        self._owns_registry = not IRegistry.providedBy(registry)
        if registry is None:
            from msrpc.registry.local import LocalRegistry

            registry = LocalRegistry(self.reactor)
        elif not IRegistry.providedBy(registry):
            registry = registry(self.reactor)  # type: ignore[operator]
        self.registry: IRegistry = registry  # type: ignore[assignment]
        self.client = TwistedClient(self.reactor, self.registry, **options)

    def _future(self, d: "Deferred[Any]") -> "asyncio.Future[Any]":
        future = self._futures.create_future(canceller=lambda _: d.cancel())

        def succeeded(result: Any) -> None:
            if not future.done():
                self._futures.resolve(future, result)

        def failed(failure: Failure) -> None:
            if not future.done():
                self._futures.reject(future, failure.value)

        d.addCallbacks(succeeded, failed)
        return future  # type: ignore[no-any-return]

    def call(self, service: str, method: str, *args: Any,
             **kwargs: Any) -> "asyncio.Future[Any]":
        return self._future(self.client.call(service, method, *args, **kwargs))

    def invoke(self, service: str, method: str, args: Iterable[Any] = (),
               kwargs: Optional[dict[str, Any]] = None, **options: Any
               ) -> "asyncio.Future[Any]":
        """See ``msrpc.client.Client.invoke`` (timeout, key, idempotent, meta)."""
        return self._future(self.client.invoke(service, method, list(args), kwargs,
                                               **options))

    def proxy(self, service: str, **options: Any) -> Proxy:
        return Proxy(self, service, options)

    async def close(self) -> None:
        await self._future(self.client.close())
        if self._owns_registry:
            await self._future(self.registry.close())

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
