"""
``--workers``: the supervisor's pool on a fake process reactor (restarts, backoff, stop
order), the address it holds, the worker's endpoint, and the log relay.  Real processes:
``tests/test_workers_processes.py``.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, eventAsJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from msrpc.registry.instance import ServiceInstance
from msrpc.registry.static import StaticRegistry
from msrpc.workers import (
    CONTROL_FD, RESTART_INITIAL, RESTART_MAX, SOCKET_FD, STABLE_AFTER, WORKER_ENV,
    ListenAddress, Supervisor, WorkerEndpoint, WorkerPool, reactor_name, relay,
    worker_command,
)


class _FakeProcess:
    def __init__(self, protocol: Any, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def report(self, *services: str, port: int = 9112) -> None:
        instances = [ServiceInstance(service=s, host="127.0.0.1", port=port).to_dict()
                     for s in services]
        message = json.dumps({"pid": self.pid, "instances": instances}).encode()
        self.protocol.childDataReceived(CONTROL_FD, message[:5])  # pipes split anywhere
        self.protocol.childDataReceived(CONTROL_FD, message[5:] + b"\n")

    def end(self, code: Optional[int] = 0, signal: Optional[int] = None) -> None:
        reason: Exception = ProcessDone(0) if code == 0 and signal is None else \
            ProcessTerminated(code, signal)
        self.protocol.processEnded(Failure(reason))


class _ProcessReactor(Clock):
    """A Clock that spawns fake processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[_FakeProcess, list[str], dict, dict]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str],
                     env: Optional[dict] = None, childFDs: Optional[dict] = None,
                     **kwargs: Any) -> _FakeProcess:
        process = _FakeProcess(protocol, 100 + len(self.spawned))
        self.spawned.append((process, args, env or {}, childFDs or {}))
        protocol.makeConnection(process)
        return process

    def process(self, n: int) -> _FakeProcess:
        return self.spawned[n][0]


LOOPBACK = ListenAddress(socket.AF_INET, "127.0.0.1", 0)


class PoolTests(TestCase):
    def pool(self, count: int = 2, reuse_port: bool = True) -> tuple[WorkerPool,
                                                                      _ProcessReactor]:
        reactor = _ProcessReactor()
        pool = WorkerPool(reactor, LOOPBACK, ["python", "-m", "twisted", "msrpc"], count,
                          kill_timeout=15.0, reuse_port=reuse_port, env={"HOME": "/x"})
        self.addCleanup(lambda: pool._listening and pool._listening.close())
        return pool, reactor

    def started(self, count: int = 2) -> tuple[WorkerPool, _ProcessReactor]:
        pool, reactor = self.pool(count)
        d = pool.start()
        for n in range(count):
            reactor.process(n).report("echo", "arith", port=pool.listening.host.port)
        self.successResultOf(d)
        return pool, reactor

    def test_start_fires_once_every_worker_listens_and_keeps_what_they_publish(self) -> None:
        pool, reactor = self.pool()
        d = pool.start()
        reactor.process(0).report("echo")
        self.assertNoResult(d)
        reactor.process(1).report("echo")
        self.successResultOf(d)
        self.assertEqual([i.service for i in pool.instances], ["echo"])

    def test_each_worker_is_told_how_to_serve_on_the_address(self) -> None:
        for reuse_port in (True, False):
            pool, reactor = self.pool(reuse_port=reuse_port)
            pool.start()
            _, args, env, fds = reactor.spawned[0]
            spec = json.loads(env[WORKER_ENV])
            self.assertEqual(env["HOME"], "/x")
            self.assertEqual(fds[CONTROL_FD], "r")
            self.assertEqual(fds[0], "w")  # its stdin: closed when we are gone
            if reuse_port:
                self.assertEqual(spec["socket"], "reuseport")
                self.assertEqual(spec["port"], pool.listening.host.port)
                self.assertNotIn(SOCKET_FD, fds)
            else:
                self.assertEqual(spec["socket"], "inherited")
                self.assertEqual(fds[SOCKET_FD], pool.listening.socket.fileno())

    def test_a_worker_dying_before_it_listens_fails_the_start_and_stops_the_others(
            self) -> None:
        pool, reactor = self.pool()
        d = pool.start()
        reactor.process(1).report("echo")
        reactor.process(0).end(code=1)
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(reactor.process(1).signals, ["TERM"])
        self.assertEqual(len(reactor.spawned), 2)  # nothing restarted

    def test_a_crashed_worker_is_restarted_with_a_doubling_backoff(self) -> None:
        pool, reactor = self.started()
        delays = []
        crashed = reactor.process(0)
        for _ in range(8):
            spawned = len(reactor.spawned)
            crashed.end(code=3)
            delay = min(c.getTime() for c in reactor.getDelayedCalls()) - reactor.seconds()
            delays.append(delay)
            reactor.advance(delay)
            self.assertEqual(len(reactor.spawned), spawned + 1)
            crashed = reactor.spawned[-1][0]
            crashed.report("echo")
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, RESTART_MAX, RESTART_MAX])
        self.assertEqual(pool.restarts, 8)

    def test_a_worker_that_ran_a_while_is_restarted_soon_again(self) -> None:
        pool, reactor = self.started()
        reactor.process(0).end(code=3)
        reactor.advance(RESTART_INITIAL)
        reactor.advance(STABLE_AFTER)
        reactor.spawned[-1][0].end(signal=9)
        [restart] = reactor.getDelayedCalls()
        self.assertEqual(restart.getTime() - reactor.seconds(), RESTART_INITIAL)

    def test_stop_terms_every_worker_and_kills_the_stragglers(self) -> None:
        pool, reactor = self.started()
        listening = pool.listening.socket
        stopped = pool.stop()
        self.assertEqual([reactor.process(n).signals for n in (0, 1)], [["TERM"], ["TERM"]])
        reactor.process(0).end(signal=15)  # a graceful twist exit re-raises SIGTERM
        self.assertNoResult(stopped)
        reactor.advance(15.0)
        self.assertEqual(reactor.process(1).signals, ["TERM", "KILL"])
        reactor.process(1).end(signal=9)
        self.successResultOf(stopped)
        self.assertEqual(len(reactor.spawned), 2)  # stopping workers are not restarted
        self.assertEqual(listening.fileno(), -1)  # the address is let go

    def test_stop_cancels_a_pending_restart(self) -> None:
        pool, reactor = self.started()
        reactor.process(0).end(code=3)
        stopped = pool.stop()
        reactor.process(1).end()
        self.successResultOf(stopped)
        reactor.advance(RESTART_MAX)
        self.assertEqual(len(reactor.spawned), 2)

    def test_a_second_stop_signal_is_passed_on(self) -> None:
        pool, reactor = self.started()
        pool.stop()
        pool.hurry()
        self.assertEqual(reactor.process(0).signals, ["TERM", "TERM"])


class _Port:
    def __init__(self) -> None:
        self.host = None


class _StubPool:
    """What the Supervisor needs of a WorkerPool, recording the order of events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.count = 2
        self.address = LOOPBACK
        self.instances: list[ServiceInstance] = []
        self.listening = _Port()
        self.stopping: Optional[defer.Deferred[None]] = None

    def start(self) -> "defer.Deferred[None]":
        self.instances = [ServiceInstance(service="echo", host="127.0.0.1", port=9112)]
        return defer.succeed(None)

    def stop(self) -> "defer.Deferred[None]":
        self.events.append("workers told to stop")
        self.stopping = defer.Deferred()
        return self.stopping

    def hurry(self) -> None:
        self.events.append("workers hurried")


class _RecordingRegistry(StaticRegistry):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def register(self, instance: ServiceInstance) -> Any:
        self.events.append(f"registered {instance.address}")
        d = super().register(instance)

        def record(registration: Any) -> Any:
            original = registration.deregister

            def deregister() -> Any:
                self.events.append("deregistered")
                return original()

            registration.deregister = deregister
            return registration

        return d.addCallback(record)


class SupervisorTests(TestCase):
    def test_publishes_once_and_stops_workers_only_after_deregistering(self) -> None:
        events: list[str] = []
        clock = Clock()
        pool = _StubPool(events)
        supervisor = Supervisor(clock, pool, registry=_RecordingRegistry(events),  # type: ignore[arg-type]
                                grace=2.0, drain_timeout=10.0)
        supervisor.startService()
        self.successResultOf(supervisor.ready)
        supervisor.hurry()  # not stopping: nothing to hurry
        self.assertEqual(events, ["registered 127.0.0.1:9112"])
        stopped = supervisor.stopService()
        self.assertEqual(events[1:], ["deregistered"])
        clock.advance(2.0)  # the grace period: clients drop us first
        self.assertEqual(events[2:], ["workers told to stop"])
        supervisor.hurry()
        self.assertEqual(events[3:], ["workers hurried"])
        self.assertNoResult(stopped)
        assert pool.stopping is not None
        pool.stopping.callback(None)
        self.successResultOf(stopped)


class AddressTests(TestCase):
    def test_tcp_endpoints(self) -> None:
        self.assertEqual(ListenAddress.parse("tcp:9112"),
                         ListenAddress(socket.AF_INET, "", 9112))
        self.assertEqual(ListenAddress.parse("tcp:port=0:interface=127.0.0.1:backlog=9"),
                         ListenAddress(socket.AF_INET, "127.0.0.1", 0, 9))
        self.assertEqual(ListenAddress.parse(r"tcp6:9112:interface=\:\:1"),
                         ListenAddress(socket.AF_INET6, "::1", 9112))

    def test_unix_endpoints(self) -> None:
        self.assertEqual(ListenAddress.parse("unix:/run/x.sock:mode=600"),
                         ListenAddress(socket.AF_UNIX, "/run/x.sock", 0, 50, 0o600))

    def test_endpoints_that_bring_their_own_tls_are_refused(self) -> None:
        error = self.assertRaises(ValueError, ListenAddress.parse,
                                  "ssl:9112:privateKey=k.pem")
        self.assertIn("--tls-cert", str(error))

    def test_a_worker_binds_the_supervisors_port_beside_the_others(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        self.addCleanup(held.close)
        port = held.getsockname()[1]
        spec = {"socket": "reuseport", "family": int(socket.AF_INET), "host": "127.0.0.1",
                "port": port, "backlog": 5}
        listening = [self.successResultOf(WorkerEndpoint(reactor, spec).listen(
            Factory.forProtocol(Protocol))) for _ in range(2)]
        for each in listening:
            self.addCleanup(each.stopListening)
            self.assertEqual(each.getHost().port, port)


class CommandAndLogTests(TestCase):
    def test_workers_run_the_same_options_with_json_logs(self) -> None:
        command = worker_command(["--listen", "tcp:9112", "--workers", "4"])
        self.assertEqual(command[1:5], ["-m", "twisted", "--log-format=json", "--log-file=-"])
        self.assertEqual(command[command.index("msrpc"):],
                         ["msrpc", "--listen", "tcp:9112", "--workers", "4", "--workers=1"])

    def test_workers_run_the_supervisors_reactor(self) -> None:
        from twisted.internet.testing import MemoryReactor

        class Parent(dict):
            pass

        class Options:
            parent = Parent(reactor="uvloop")

        self.assertEqual(reactor_name(Options(), MemoryReactor()), "uvloop")
        Options.parent = Parent(reactorName="asyncio")  # twist's name for it
        self.assertEqual(reactor_name(Options(), MemoryReactor()), "asyncio")
        self.assertIn("--reactor=uvloop", worker_command([], "uvloop"))
        self.assertEqual([a for a in worker_command([]) if a.startswith("--reactor")], [])

    def test_worker_log_events_keep_their_level_and_say_which_worker(self) -> None:
        from twisted.logger import Logger
        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        captured: list[dict] = []
        Logger(namespace="msrpc.server",
               observer=captured.append).warn("serving {what}", what="echo")
        relay(3, eventAsJSON(captured[0]))
        relay(3, "Traceback (most recent call last):", error=True)
        event, line = seen[-2:]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(event), "[worker 3] serving echo")
        self.assertEqual((line["log_level"], formatEvent(line)),
                         (LogLevel.warn, "[worker 3] Traceback (most recent call last):"))
