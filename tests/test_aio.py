"""
msrpc and asyncio (msrpc.aio): the task bridge on a private asyncio loop, then real
``twistd --reactor=asyncio|uvloop msrpc`` processes whose handlers use aiohttp, and a
plain ``asyncio.run()`` program calling through ``msrpc.aio.Client``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from typing import Any, Coroutine

from twisted.internet import defer, reactor, utils
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from msrpc import aio
from msrpc.client import Client
from msrpc.errors import DeadlineExceeded
from msrpc.registry.local import LocalRegistry
from tests.servers import REPO_ROOT, run, server_unavailable
from tests.servers.msrpcd import child_env, start_daemon, workdir


def on_private_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a fresh asyncio loop (no reactor involved)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class TaskBridgeTests(TestCase):
    """``run_as_task``: a coroutine in an asyncio task that awaits Deferreds too."""

    def test_a_task_awaits_deferreds_and_asyncio_futures_alike(self) -> None:
        async def handler() -> list[Any]:
            loop = asyncio.get_running_loop()
            later: defer.Deferred[str] = defer.Deferred()
            loop.call_soon(later.callback, "deferred")
            got = [await later, await defer.succeed("fired")]
            await asyncio.sleep(0)
            got.append(asyncio.current_task() is not None)
            return got

        async def main() -> Any:
            return await run_as_future(handler())

        self.assertEqual(on_private_loop(main()), ["deferred", "fired", True])

    def test_a_failed_deferred_raises_inside_the_coroutine(self) -> None:
        async def handler() -> str:
            try:
                await defer.fail(KeyError("gone"))
            except KeyError:
                return "caught"
            return "not raised"

        async def main() -> Any:
            return await run_as_future(handler())

        self.assertEqual(on_private_loop(main()), "caught")

    def test_cancelling_the_deferred_cancels_the_task_and_what_it_awaits(self) -> None:
        seen: list[str] = []
        inner: defer.Deferred[None] = defer.Deferred(lambda d: seen.append("inner cancelled"))

        async def handler() -> None:
            try:
                await inner
            except asyncio.CancelledError:
                seen.append("task cancelled")
                raise

        async def main() -> None:
            d = aio.run_as_task(handler())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            d.cancel()
            failure = await as_future_result(d)
            seen.append(type(failure).__name__)

        on_private_loop(main())
        self.assertEqual(seen, ["inner cancelled", "task cancelled", "CancelledError"])

    def test_the_reactor_decides_how_coroutines_run(self) -> None:
        self.assertEqual(aio.coroutine_runner(reactor), defer.Deferred.fromCoroutine)


def run_as_future(coro: Coroutine[Any, Any, Any]) -> "asyncio.Future[Any]":
    return as_future_result(aio.run_as_task(coro))


def as_future_result(d: "defer.Deferred[Any]") -> "asyncio.Future[Any]":
    """A future with ``d``'s result (a failure's exception as the result, not raised)."""
    future = asyncio.get_running_loop().create_future()
    d.addCallbacks(future.set_result, lambda f: future.set_result(f.value))
    return future


class LoopResolverTests(TestCase):
    def test_names_resolve_through_the_loops_getaddrinfo(self) -> None:
        events: list[Any] = []

        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                events.append(("began", resolution.name))

            def addressResolved(self, address: Any) -> None:
                events.append(address)

            def resolutionComplete(self) -> None:
                events.append("complete")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            aio.LoopResolver(loop).resolveHostName(Receiver(), "localhost", 80,
                                                   [IPv4Address])
            while "complete" not in events:
                await asyncio.sleep(0)

        on_private_loop(main())
        self.assertEqual(events[0], ("began", "localhost"))
        self.assertIn(IPv4Address("TCP", "127.0.0.1", 80), events)
        self.assertEqual(events[-1], "complete")


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"served by twisted.web to aiohttp"


def uvloop_or_skip() -> None:
    if importlib.util.find_spec("uvloop") is None:
        server_unavailable("uvloop is not installed (pip install msrpc[uvloop])")


class AsyncioReactorProcessTests(TestCase):
    """A real ``twistd --reactor=... msrpc`` serving tests.aio_service."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = workdir(self)
        self.path = self.dir / "registry.sqlite3"
        port = reactor.listenTCP(0, server.Site(Page()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/page"

    async def serve(self, twistd_reactor: str) -> Client:
        await start_daemon(self, reactor, self.dir,
                           ["--registry", "local", "--local-path", str(self.path),
                            "--grace", "0", "--service", "fetch=tests.aio_service:Fetch"],
                           registered=1, twistd_args=[f"--reactor={twistd_reactor}"])
        registry = LocalRegistry(reactor, self.path)
        client = Client(reactor, registry, timeout=20)
        self.addCleanup(registry.close)
        self.addCleanup(client.close)
        return client

    async def check_handlers(self, client: Client, loop_module: str) -> None:
        self.assertEqual(await client.call("fetch", "get", self.url),
                         {"status": 200, "body": "served by twisted.web to aiohttp"})
        self.assertEqual(await client.call("fetch", "mixed"),
                         {"loop": loop_module, "in_task": True})
        with self.assertRaises(DeadlineExceeded):
            await client.invoke("fetch", "hang", meta={"deadline": 200})
        self.assertEqual(await client.call("fetch", "cancellations"), 1)

    @run
    async def test_async_handlers_use_aiohttp_under_the_asyncio_reactor(self) -> None:
        await self.check_handlers(await self.serve("asyncio"), "asyncio.unix_events")

    @run
    async def test_async_handlers_use_aiohttp_under_uvloop(self) -> None:
        uvloop_or_skip()
        await self.check_handlers(await self.serve("uvloop"), "uvloop")


class AsyncioProgramTests(TestCase):
    """A plain ``asyncio.run()`` program calls a real server through ``msrpc.aio``."""

    timeout = 60

    @run
    async def test_an_asyncio_program_calls_through_msrpc_aio(self) -> None:
        directory = workdir(self)
        path = directory / "registry.sqlite3"
        await start_daemon(self, reactor, directory,
                           ["--registry", "local", "--local-path", str(path), "--grace", "0"],
                           registered=2)
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "tests.aio_client", str(path)], env=child_env(),
            path=str(REPO_ROOT))
        self.assertEqual(code, 0, err.decode()[-3000:])
        self.assertEqual(json.loads(out), [
            3, 42, [1, 2, 3, 4, 5], "timed out", "BadRequest: division by zero"])
        self.assertNotIn(b"Traceback", err)
