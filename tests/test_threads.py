"""
Blocking handlers on handler threads (msrpc.threads): deterministic on a Clock with a
``ManualThreadPool``, then once with real threads.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from msrpc.client import Client, RetryPolicy
from msrpc.errors import BadRequest, CallTimeout, DeadlineExceeded, RemoteError, Unavailable
from msrpc.registry.static import StaticRegistry
from msrpc.server import Dispatcher, Server
from msrpc.service import expose
from msrpc.testing import ManualThreadPool, MemoryNetwork
from msrpc.threads import ThreadSettings, Threads
from tests.servers import run, wait_for


class Store:
    """Blocking methods, a plain one, and an async one."""

    def __init__(self, network: MemoryNetwork | None = None) -> None:
        self.network = network
        self.ran: list[str] = []
        self.on_thread: list[bool] = []

    @expose(blocking=True)
    def load(self, key: str) -> str:
        self.ran.append(key)
        return f"value of {key}"

    @expose(blocking=True)
    def slow(self, seconds: float) -> str:
        """Lets ``seconds`` pass on the test's clock while it runs."""
        assert self.network is not None
        self.network.clock.advance(seconds)
        self.ran.append("slow")
        return "done"

    @expose(blocking=True)
    def broken(self) -> None:
        raise ValueError("disk on fire")

    def plain(self) -> str:
        return "plain"

    @expose(blocking=False)
    def pinned(self) -> str:
        return "pinned"

    async def coro(self) -> str:
        return "coro"


class ThreadedCalls(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        self.store = Store(self.net)
        self.pool = ManualThreadPool()
        self.server = self.net.server({"store": self.store}, thread_pool=self.pool,
                                      threads=ThreadSettings(size=2, queue=1))
        self.threads = self.server.dispatcher.threads
        self.client = self.net.client(timeout=5.0, retry=RetryPolicy(max_attempts=1))

    def call(self, method: str, *args: Any, **options: Any) -> "defer.Deferred[Any]":
        d = self.client.invoke("store", method, args, **options)
        self.net.flush()
        return d

    def test_a_blocking_method_runs_on_the_pool_not_on_the_reactor(self) -> None:
        d = self.call("load", "k")
        self.assertNoResult(d)
        self.assertEqual((self.store.ran, self.server.dispatcher.in_flight), ([], 1))
        self.pool.run_next()
        self.net.flush()
        self.assertEqual(self.successResultOf(d), "value of k")
        self.assertEqual(self.server.dispatcher.in_flight, 0)

    def test_plain_and_async_methods_stay_on_the_reactor(self) -> None:
        for method in ("plain", "pinned", "coro"):
            self.assertEqual(self.successResultOf(self.call(method)), method)
        self.assertEqual(self.pool.queue, [])

    def test_a_deadline_passing_while_the_thread_runs_is_408_at_once(self) -> None:
        d = self.call("slow", 2.0, timeout=5.0, meta={"deadline": 1000})
        self.pool.run_next()  # the handler lets 2 s pass: the 1 s deadline fires meanwhile
        self.net.flush()
        error = self.failureResultOf(d, DeadlineExceeded).value
        self.assertEqual(error.code, 408)
        self.assertEqual((self.threads.late, self.store.ran), (1, ["slow"]))

    def test_a_call_dropped_while_queued_never_runs(self) -> None:
        d = self.call("load", "k", timeout=5.0, meta={"deadline": 1000})
        self.net.advance(1.5)
        self.assertEqual(self.failureResultOf(d, DeadlineExceeded).value.code, 408)
        self.pool.run_all()
        self.assertEqual((self.store.ran, self.threads.skipped), ([], 1))

    def test_a_cancelled_call_is_dropped_before_it_runs(self) -> None:
        d = self.call("load", "k")
        d.cancel()
        self.net.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.server.dispatcher.in_flight, 0)
        self.pool.run_all()
        self.assertEqual((self.store.ran, self.threads.skipped), ([], 1))

    def test_a_full_pool_and_queue_answer_503(self) -> None:
        calls = [self.call("load", str(i)) for i in range(3)]  # 2 threads + 1 queued
        self.assertEqual(self.threads.pending, 3)
        refused = self.call("load", "4")
        error = self.failureResultOf(refused, Unavailable).value
        self.assertEqual(error.code, 503)
        self.assertIn("thread queue is full", str(error))
        self.pool.run_all()
        self.net.flush()
        self.assertEqual([self.successResultOf(d) for d in calls],
                         ["value of 0", "value of 1", "value of 2"])
        self.assertEqual(self.threads.pending, 0)

    def test_wrong_arguments_are_400_and_a_raising_handler_500(self) -> None:
        wrong = self.call("load", "a", "b")
        broken = self.call("broken")
        self.pool.run_all()
        self.net.flush()
        self.assertIn("store.load", str(self.failureResultOf(wrong, BadRequest).value))
        error = self.failureResultOf(broken, RemoteError).value
        self.assertEqual((error.code, error.remote_type), (500, "ValueError"))
        self.flushLoggedErrors(ValueError)

    def test_the_drain_waits_for_calls_on_threads(self) -> None:
        self.call("load", "k")
        idle = self.server.dispatcher.when_idle()
        self.assertNoResult(idle)
        self.pool.run_all()
        self.net.flush()
        self.successResultOf(idle)


class PolicyTests(TestCase):
    def methods(self, blocking: bool) -> dict[str, bool]:
        dispatcher = Dispatcher(MemoryNetwork().clock, blocking=blocking)
        dispatcher.add_service("store", Store())
        return {name: m.blocking for (_, name), m in dispatcher.methods.items()}

    def test_the_server_default_moves_plain_handlers_only(self) -> None:
        self.assertEqual(self.methods(blocking=True), {
            "load": True, "slow": True, "broken": True, "plain": True, "pinned": False,
            "coro": False})
        self.assertEqual(self.methods(blocking=False)["plain"], False)

    def test_an_async_handler_cannot_be_blocking(self) -> None:
        class Wrong:
            @expose(blocking=True)
            async def nope(self) -> None:
                pass

        error = self.assertRaises(ValueError, Dispatcher(MemoryNetwork().clock).add_service,
                                  "wrong", Wrong())
        self.assertIn("async def", str(error))

    def test_settings_are_checked(self) -> None:
        self.assertRaises(ValueError, ThreadSettings, size=0)
        self.assertRaises(ValueError, ThreadSettings, queue=-1)

    def test_the_pool_stops_once_its_threads_are_idle(self) -> None:
        pool = ManualThreadPool()
        threads = Threads(lambda f, *a: f(*a), ThreadSettings(), pool)
        threads.start()
        threads.submit(lambda: 1, (), {}, "x.y")
        threads.stop()
        self.assertFalse(pool.stopped)  # a handler still runs
        pool.run_all()
        self.assertTrue(pool.stopped)


class Gate:
    """A blocking handler that waits for the test to open its gate, and a fast method."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.thread_names: list[str] = []

    @expose(blocking=True)
    def wait(self) -> str:
        self.thread_names.append(threading.current_thread().name)
        self.gate.wait(30)
        return "opened"

    def fast(self) -> str:
        return "fast"


class RealThreadTests(TestCase):
    """A real server, real threads, a real client over loopback."""

    timeout = 30

    def setUp(self) -> "defer.Deferred[Any]":
        self.service = Gate()
        self.server = Server(reactor, "tcp:0:interface=127.0.0.1",
                             services={"gate": self.service}, grace=0,
                             threads=ThreadSettings(size=2))
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.addCleanup(self.service.gate.set)  # never leave a thread waiting
        return self.server.ready.addCallback(self._connect)

    def _connect(self, address: Any) -> None:
        registry = StaticRegistry({"gate": [f"127.0.0.1:{address.port}"]})
        self.client = Client(reactor, registry, timeout=10)
        self.addCleanup(self.client.close)

    @run
    async def test_a_blocked_handler_thread_does_not_stall_other_calls(self) -> None:
        waiting = self.client.call("gate", "wait")
        self.assertEqual(await self.client.call("gate", "fast"), "fast")
        threads = self.server.dispatcher.threads
        assert threads is not None
        self.assertEqual(threads.pending, 1)  # still blocked while the fast call answered
        self.service.gate.set()
        self.assertEqual(await waiting, "opened")
        self.assertTrue(self.service.thread_names[0].startswith("PoolThread-msrpc-handlers"))

    @run
    async def test_a_deadline_passing_on_a_real_thread_is_answered_408(self) -> None:
        waiting = self.client.invoke("gate", "wait", meta={"deadline": 100})
        with self.assertRaises(DeadlineExceeded) as caught:
            await waiting
        self.assertNotIsInstance(caught.exception, CallTimeout)  # the server's 408
        threads = self.server.dispatcher.threads
        assert threads is not None
        self.assertEqual((threads.pending, threads.late), (1, 0))
        self.service.gate.set()
        await wait_for(reactor, lambda: threads.late == 1, 10, "the late result")
        self.assertEqual(threads.pending, 0)
