"""
The ``local`` registry, deterministically: a ``Clock`` for time, the inline executor instead
of threads, and a real SQLite file in a temporary directory.  Two registries on one file
stand for two processes; a registry whose clock is never advanced stands for a process that
was killed (its heartbeats never run again).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from msrpc.errors import RegistryError
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IRegistration, IRegistry, IServiceCatalog, IWatch
from msrpc.registry import local
from msrpc.registry.changes import ChangeWatcher, available, change_file, touch
from msrpc.registry.local import (DEFAULT_TTL, ENV_VAR, SCHEMA_VERSION, LocalRegistry,
                                  default_path, from_options, run_inline)
from msrpc.registry.options import registry_parameters
from tests.servers import run, under_ci, wait_for

TTL = 6.0
BEAT = TTL / 3
REFRESH = 1.0

ARITH = ServiceInstance(service="arith", host="127.0.0.1", port=9112, weight=5,
                        metadata={"zone": "a"}, namespace="ns", group="g", cluster="c")
ARITH2 = ServiceInstance(service="arith", host="127.0.0.1", port=9113)
ECHO = ServiceInstance(service="echo", host="10.0.0.5", port=7000, enabled=False)


class LocalTestCase(TestCase):
    """Gives each test a fresh registry file and builds registries ('processes') on it."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "registry.sqlite3"
        self.clock = Clock()
        self.clock.advance(1_000_000)  # wall-clock-like, and not zero

    def registry(self, clock: Clock | None = None, path: Path | None = None,
                 **kwargs: Any) -> LocalRegistry:
        kwargs.setdefault("ttl", TTL)
        kwargs.setdefault("refresh", REFRESH)
        registry = LocalRegistry(clock or self.clock, path or self.path, run=run_inline,
                                 **kwargs)
        self.addCleanup(registry.close)
        return registry

    def other_process(self) -> tuple[LocalRegistry, Clock]:
        """A registry with its own clock, starting at the same wall-clock time."""
        clock = Clock()
        clock.advance(self.clock.seconds())
        return self.registry(clock), clock

    def register(self, registry: LocalRegistry, instance: ServiceInstance) -> Any:
        return self.successResultOf(registry.register(instance))

    def lookup(self, registry: LocalRegistry, service: str) -> list[ServiceInstance]:
        return self.successResultOf(registry.lookup(service))

    def rows(self) -> list[tuple[str, str, float]]:
        """What any other process sees in the file, expired rows included."""
        with sqlite3.connect(self.path) as db:
            return db.execute("SELECT service, instance_id, expires_at FROM instances "
                              "ORDER BY service, instance_id").fetchall()

    def expires_at(self, instance: ServiceInstance) -> float:
        [expires] = [e for s, i, e in self.rows()
                     if (s, i) == (instance.service, instance.instance_id)]
        return expires


class ContractTests(LocalTestCase):

    def test_provides_the_registry_interfaces(self) -> None:
        registry = self.registry()
        verifyObject(IRegistry, registry)
        verifyObject(IServiceCatalog, registry)
        verifyObject(IRegistration, self.register(registry, ARITH))
        verifyObject(IWatch, registry.watch("arith", lambda instances: None))

    def test_registered_instance_is_looked_up_with_all_its_fields(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.assertEqual(self.lookup(registry, "arith"), [ARITH])

    def test_disabled_instance_is_listed_as_disabled(self) -> None:
        registry = self.registry()
        self.register(registry, ECHO)
        [echo] = self.lookup(registry, "echo")
        self.assertFalse(echo.enabled)

    def test_lookup_only_returns_the_asked_service(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.register(registry, ECHO)
        self.assertEqual(self.lookup(registry, "echo"), [ECHO])
        self.assertEqual(self.lookup(registry, "nothing"), [])

    def test_services_lists_names_with_live_instances(self) -> None:
        registry = self.registry()
        self.register(registry, ECHO)
        self.register(registry, ARITH)
        self.register(registry, ARITH2)
        self.assertEqual(self.successResultOf(registry.services()), ["arith", "echo"])

    def test_services_leaves_out_expired_instances(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        other, other_clock = self.other_process()
        other_clock.advance(TTL + 1)  # this process's heartbeats never ran for that long
        self.assertEqual(self.successResultOf(other.services()), [])

    def test_another_process_sees_the_instances(self) -> None:
        self.register(self.registry(), ARITH)
        other, _ = self.other_process()
        self.assertEqual(self.lookup(other, "arith"), [ARITH])

    def test_registering_again_updates_the_row(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.register(registry, ARITH.with_changes(weight=1))
        [arith] = self.lookup(registry, "arith")
        self.assertEqual(arith.weight, 1)

    def test_deregister_removes_the_instance(self) -> None:
        registry = self.registry()
        registration = self.register(registry, ARITH)
        self.register(registry, ARITH2)
        self.successResultOf(registration.deregister())
        self.assertEqual(self.lookup(registry, "arith"), [ARITH2])
        self.assertEqual([i for s, i, e in self.rows()], [ARITH2.instance_id])

    def test_deregister_stops_the_heartbeat(self) -> None:
        registry = self.registry()
        registration = self.register(registry, ARITH)
        self.successResultOf(registration.deregister())
        self.clock.advance(BEAT * 5)  # a running heartbeat would put the row back
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deregister_leaves_a_row_taken_over_by_another_process(self) -> None:
        registration = self.register(self.registry(), ARITH)
        other, _ = self.other_process()
        self.register(other, ARITH)  # e.g. a restarted server on the same address
        self.successResultOf(registration.deregister())
        self.assertEqual(self.lookup(other, "arith"), [ARITH])

    def test_close_deregisters_everything_and_stops_timers(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.register(registry, ECHO)
        registry.watch("arith", lambda instances: None)
        self.successResultOf(registry.close())
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_twice_is_harmless(self) -> None:
        registry = self.registry()
        self.successResultOf(registry.close())
        self.successResultOf(registry.close())

    def test_deregister_after_close_is_harmless(self) -> None:
        registry = self.registry()
        registration = self.register(registry, ARITH)
        self.successResultOf(registry.close())
        self.successResultOf(registration.deregister())

    def test_closed_registry_refuses_work(self) -> None:
        registry = self.registry()
        self.successResultOf(registry.close())
        self.failureResultOf(registry.lookup("arith"), RegistryError)
        self.failureResultOf(registry.register(ARITH), RegistryError)
        self.assertRaises(RegistryError, registry.watch, "arith", lambda instances: None)


class HeartbeatTests(LocalTestCase):

    def test_heartbeat_refreshes_the_expiry_every_third_of_the_ttl(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        registered = self.clock.seconds()
        self.assertEqual(self.expires_at(ARITH), registered + TTL)
        self.clock.advance(BEAT - 0.01)
        self.assertEqual(self.expires_at(ARITH), registered + TTL)
        self.clock.advance(0.01)
        self.assertEqual(self.expires_at(ARITH), registered + BEAT + TTL)

    def test_heartbeating_instance_outlives_its_ttl(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.clock.pump([BEAT] * 10)
        self.assertEqual(self.lookup(registry, "arith"), [ARITH])

    def test_instance_expires_when_its_heartbeats_stop(self) -> None:
        self.register(self.registry(), ARITH)  # this process's clock stands still: dead
        other, clock = self.other_process()
        clock.advance(TTL - 0.01)
        self.assertEqual(self.lookup(other, "arith"), [ARITH])
        clock.advance(0.01)
        self.assertEqual(self.lookup(other, "arith"), [])

    def test_expired_rows_are_pruned_by_the_next_write(self) -> None:
        self.register(self.registry(), ARITH)
        other, clock = self.other_process()
        clock.advance(TTL)
        self.assertEqual(len(self.rows()), 1)  # expired but still stored: lookups only read
        self.register(other, ECHO)
        self.assertEqual([s for s, i, e in self.rows()], ["echo"])

    def test_heartbeat_puts_back_a_vanished_row(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        with sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM instances")
        self.clock.advance(BEAT)
        self.assertEqual(self.lookup(registry, "arith"), [ARITH])

    def test_heartbeat_revives_an_expired_row(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        with sqlite3.connect(self.path) as db:  # as if the beats had been late
            db.execute("UPDATE instances SET expires_at = 0")
        self.clock.advance(BEAT)
        self.assertEqual(self.lookup(registry, "arith"), [ARITH])

    def test_heartbeat_recreates_a_deleted_file(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        for name in os.listdir(self.dir):  # rm registry.sqlite3*
            os.unlink(self.dir / name)
        self.clock.advance(BEAT)
        fresh = self.registry()
        self.assertEqual(self.lookup(fresh, "arith"), [ARITH])

    def test_failing_heartbeat_logs_once_and_keeps_trying(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        for name in os.listdir(self.dir):
            os.unlink(self.dir / name)
        self.path.write_bytes(b"this is not a database" * 100)
        with capturedLogs() as events:
            self.clock.pump([BEAT] * 3)
            self.path.unlink()
            self.clock.advance(BEAT)
        failures = [e for e in events if "failed, will keep trying" in e["log_format"]]
        self.assertEqual(len(failures), 1)
        self.assertIn(str(self.path), failures[0]["error"])
        self.assertTrue(any("works again" in e["log_format"] for e in events))
        self.assertEqual(self.lookup(registry, "arith"), [ARITH])


class WatchTests(LocalTestCase):

    def watch(self, registry: LocalRegistry, service: str) -> list[list[ServiceInstance]]:
        calls: list[list[ServiceInstance]] = []

        def record(instances: Sequence[ServiceInstance]) -> None:
            calls.append(sorted(instances, key=lambda i: i.instance_id))

        registry.watch(service, record)
        return calls

    def test_watch_gets_the_initial_list(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        self.assertEqual(self.watch(registry, "arith"), [[ARITH]])

    def test_watch_sees_an_added_instance(self) -> None:
        registry = self.registry()
        calls = self.watch(registry, "arith")
        other, _ = self.other_process()
        self.register(other, ARITH)
        self.clock.advance(REFRESH)
        self.assertEqual(calls, [[], [ARITH]])

    def test_watch_sees_a_removed_instance(self) -> None:
        registry = self.registry()
        other, _ = self.other_process()
        registration = self.register(other, ARITH)
        self.register(other, ARITH2)
        calls = self.watch(registry, "arith")
        self.successResultOf(registration.deregister())
        self.clock.advance(REFRESH)
        self.assertEqual(calls, [[ARITH, ARITH2], [ARITH2]])

    def test_watch_sees_an_instance_expire(self) -> None:
        self.register(self.registry(), ARITH)  # frozen clock: a killed process
        other, clock = self.other_process()
        calls: list[Sequence[ServiceInstance]] = []
        other.watch("arith", calls.append)
        clock.pump([REFRESH] * int(TTL / REFRESH))
        self.assertEqual(calls, [[ARITH], []])

    def test_watch_is_quiet_while_nothing_changes(self) -> None:
        registry = self.registry()
        self.register(registry, ARITH)
        calls = self.watch(registry, "arith")
        self.clock.pump([REFRESH] * 20)  # heartbeats run meanwhile
        self.assertEqual(calls, [[ARITH]])

    def test_stopped_watch_gets_no_more_calls(self) -> None:
        registry = self.registry()
        calls: list[Sequence[ServiceInstance]] = []
        registry.watch("arith", calls.append).stop()
        self.register(registry, ARITH)
        self.clock.advance(REFRESH * 3)
        self.assertEqual(calls, [[]])

    def remove_file(self) -> None:
        for name in os.listdir(self.dir):  # rm registry.sqlite3*
            os.unlink(self.dir / name)

    def test_watch_keeps_instances_of_a_deleted_file_until_they_beat_again(self) -> None:
        self.register(self.registry(), ARITH)
        calls = self.watch(self.registry(), "arith")
        self.remove_file()
        self.clock.pump([REFRESH] * 4)  # the heartbeat puts the row back meanwhile
        self.assertEqual(calls, [[ARITH]])
        self.assertEqual([s for s, i, e in self.rows()], ["arith"])

    def test_watch_keeps_instances_of_a_replaced_file_until_they_beat_again(self) -> None:
        self.register(self.registry(), ARITH)
        calls = self.watch(self.registry(), "arith")
        self.remove_file()
        sqlite3.connect(self.dir / "fresh.sqlite3").close()
        os.replace(self.dir / "fresh.sqlite3", self.path)  # an empty database
        self.clock.pump([REFRESH] * 4)
        self.assertEqual(calls, [[ARITH]])

    def test_instance_of_a_deleted_file_that_never_beats_again_expires_as_before(
            self) -> None:
        registration_time = self.clock.seconds()
        self.register(self.registry(), ARITH)  # frozen clock: a killed process
        other, clock = self.other_process()
        calls: list[Sequence[ServiceInstance]] = []
        other.watch("arith", calls.append)
        self.remove_file()
        clock.pump([REFRESH] * int(TTL / REFRESH - 1))
        self.assertEqual(calls, [[ARITH]])  # listed until the expiry the old file gave it
        clock.advance(REFRESH)
        self.assertEqual(clock.seconds(), registration_time + TTL)
        self.assertEqual(calls, [[ARITH], []])


class ExpiryAndAnnouncementTests(LocalTestCase):
    """Watches look again at each listed instance's expiry; writers announce changes."""

    def test_watch_drops_a_killed_instance_at_its_expiry_without_polling(self) -> None:
        self.register(self.registry(), ARITH)  # frozen clock: a killed process
        clock = Clock()
        clock.advance(self.clock.seconds())
        calls: list[Sequence[ServiceInstance]] = []
        self.registry(clock, refresh=1000).watch("arith", calls.append)
        clock.advance(TTL - 0.01)
        self.assertEqual(calls, [[ARITH]])
        clock.advance(0.01)
        self.assertEqual(calls, [[ARITH], []])

    def test_watch_of_a_live_instance_rereads_about_once_per_two_thirds_ttl(self) -> None:
        registry = self.registry(refresh=1000)
        self.register(registry, ARITH)
        reads: list[float] = []
        store = registry.store
        original = store.snapshot

        def counting(*args: Any) -> Any:
            reads.append(self.clock.seconds())
            return original(*args)

        self.patch(store, "snapshot", counting)
        calls: list[Sequence[ServiceInstance]] = []
        registry.watch("arith", calls.append)
        self.clock.pump([0.5] * int(10 * TTL))
        self.assertEqual(calls, [[ARITH]])
        self.assertLessEqual(len(reads), 1 + 10 * 3 // 2 + 1)

    def test_changes_are_announced_and_plain_heartbeats_are_not(self) -> None:
        touched: list[Path] = []
        self.patch(local, "touch", touched.append)
        registry = self.registry()
        registration = self.register(registry, ARITH)
        self.assertEqual(touched, [self.dir / "registry.sqlite3-changes"])
        self.clock.pump([BEAT] * 6)  # heartbeats that only push the expiry forward
        self.assertEqual(len(touched), 1)
        with sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM instances")
        self.clock.advance(BEAT)  # this heartbeat puts the row back: a change
        self.assertEqual(len(touched), 2)
        self.successResultOf(registration.deregister())
        self.assertEqual(len(touched), 3)

    def test_without_notification_watches_poll_every_refresh(self) -> None:
        registry = self.registry(notify=False)
        calls = []
        registry.watch("arith", calls.append)
        other, _ = self.other_process()
        self.register(other, ARITH)
        self.clock.advance(REFRESH)
        self.assertEqual(calls, [[], [ARITH]])


class SnapshotTests(LocalTestCase):
    """The cheap path of watch polls, on the Store itself."""

    def setUp(self) -> None:
        super().setUp()
        self.registry_ = self.registry()
        self.register(self.registry_, ARITH)
        self.store = self.registry_.store
        self.first = self.store.snapshot("arith", self.clock.seconds())

    def test_unchanged_service_returns_the_known_snapshot(self) -> None:
        again = self.store.snapshot("arith", self.clock.seconds() + 1, self.first)
        self.assertIs(again, self.first)

    def test_heartbeat_alone_is_no_change(self) -> None:
        self.clock.advance(BEAT)
        self.assertIs(self.store.snapshot("arith", self.clock.seconds(), self.first),
                      self.first)

    def test_change_of_another_service_is_no_change(self) -> None:
        self.register(self.registry_, ECHO)
        self.assertIs(self.store.snapshot("arith", self.clock.seconds(), self.first),
                      self.first)

    def test_registration_invalidates_the_snapshot(self) -> None:
        self.register(self.registry_, ARITH2)
        again = self.store.snapshot("arith", self.clock.seconds(), self.first)
        self.assertEqual(again.instances, (ARITH, ARITH2))

    def test_reaching_an_expiry_invalidates_the_snapshot(self) -> None:
        later = self.store.snapshot("arith", self.clock.seconds() + TTL, self.first)
        self.assertEqual(later.instances, ())

    def test_replaced_file_invalidates_the_snapshot(self) -> None:
        for name in os.listdir(self.dir):
            os.unlink(self.dir / name)
        fresh = self.store.snapshot("arith", self.clock.seconds(), self.first)
        self.assertEqual(fresh.instances, ())


class ErrorTests(LocalTestCase):

    def assertRegistryError(self, d: Any) -> RegistryError:
        error = self.failureResultOf(d, RegistryError).value
        self.assertIn(str(self.path), str(error))
        self.assertEqual(error.backend, "local")
        return error

    def test_garbage_file_is_a_registry_error(self) -> None:
        self.path.write_bytes(b"garbage, not SQLite" * 100)
        registry = self.registry()
        self.assertRegistryError(registry.lookup("arith"))
        self.assertRegistryError(registry.register(ARITH))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no heartbeat for a failure

    def test_uncreatable_directory_is_a_registry_error(self) -> None:
        (self.dir / "file").write_text("a file, not a directory")
        self.path = self.dir / "file" / "msrpc" / "registry.sqlite3"
        self.assertRegistryError(self.registry().register(ARITH))

    def test_lock_held_beyond_the_busy_timeout_is_a_registry_error(self) -> None:
        registry = self.registry(busy_timeout=0)
        self.successResultOf(registry.lookup("arith"))  # creates the file
        holder = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        error = self.assertRegistryError(registry.register(ARITH))
        self.assertIn("locked", str(error))
        holder.execute("ROLLBACK")
        self.register(registry, ARITH)

    def test_newer_schema_is_a_registry_error(self) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        error = self.assertRegistryError(self.registry().lookup("arith"))
        self.assertIn("newer", str(error))

    def test_schema_is_created_versioned_and_in_wal_mode(self) -> None:
        self.successResultOf(self.registry().lookup("arith"))
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0],
                             SCHEMA_VERSION)
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_invalid_settings_are_refused(self) -> None:
        for bad in ({"ttl": 0}, {"refresh": -1}, {"busy_timeout": -1}):
            self.assertRaises(ValueError, LocalRegistry, self.clock, self.path,
                              run=run_inline, **bad)


class PathTests(TestCase):

    def test_default_path_is_in_the_xdg_state_directory(self) -> None:
        self.assertEqual(default_path({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}),
                         Path("/x/state/msrpc/registry.sqlite3"))

    def test_default_path_falls_back_to_local_state_in_home(self) -> None:
        self.assertEqual(default_path({"HOME": "/home/u"}),
                         Path("/home/u/.local/state/msrpc/registry.sqlite3"))

    def test_relative_xdg_state_home_is_ignored(self) -> None:
        self.assertEqual(default_path({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}),
                         Path("/home/u/.local/state/msrpc/registry.sqlite3"))

    def test_environment_variable_overrides_the_default(self) -> None:
        self.assertEqual(default_path({ENV_VAR: "/tmp/r.db", "XDG_STATE_HOME": "/x"}),
                         Path("/tmp/r.db"))

    def test_missing_parent_directories_are_created(self) -> None:
        path = Path(self.mktemp()) / "a" / "b" / "registry.sqlite3"
        registry = LocalRegistry(Clock(), path, run=run_inline)
        self.addCleanup(registry.close)
        self.successResultOf(registry.lookup("arith"))
        self.assertTrue(path.is_file())


class _Options(usage.Options):
    optParameters = registry_parameters()


class OptionsTests(TestCase):
    """``from_options`` builds the real thing: real reactor, real thread."""

    def from_args(self, *args: str) -> LocalRegistry:
        options = _Options()
        options.parseOptions(list(args))
        registry = from_options(reactor, options)
        self.addCleanup(registry.close)
        return registry

    def test_options_configure_the_registry(self) -> None:
        path = os.path.abspath(self.mktemp())
        registry = self.from_args("--local-path", path, "--local-ttl", "3",
                                  "--local-refresh", "0.5")
        self.assertEqual((registry.path, registry.ttl, registry.refresh),
                         (Path(path), 3.0, 0.5))

    def test_local_is_the_default_backend_with_default_settings(self) -> None:
        path = os.path.abspath(self.mktemp())
        self.patch(os, "environ", {**os.environ, ENV_VAR: path})
        options = _Options()
        options.parseOptions([])
        self.assertEqual(options["registry"], "local")
        registry = self.from_args()
        self.assertEqual((registry.path, registry.ttl), (Path(path), DEFAULT_TTL))

    def test_nonpositive_ttl_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, _Options().parseOptions, ["--local-ttl", "0"])

    def test_thread_executor_works_and_stops_with_close(self) -> Deferred[None]:
        registry = self.from_args("--local-path", os.path.abspath(self.mktemp()))

        def registry_threads() -> list[str]:
            return [t.name for t in threading.enumerate() if "msrpc-local-registry" in t.name]

        async def scenario() -> None:
            await registry.register(ARITH)
            self.assertEqual(await registry.lookup("arith"), [ARITH])
            self.assertEqual(len(registry_threads()), 1)
            await registry.close()
            self.assertEqual(registry_threads(), [])
            other = LocalRegistry(Clock(), registry.path, run=run_inline)
            self.addCleanup(other.close)
            self.assertEqual(await other.lookup("arith"), [])  # close deregistered

        return Deferred.fromCoroutine(scenario())



class ChangeNotificationTests(TestCase):
    """
    Real inotify on the real reactor, two registries on one file standing for two
    processes.  Polls are far apart (30 s; TTL 60 s), so a watch that sees a change within
    the test's few seconds was woken by the notification.
    """

    timeout = 30

    def setUp(self) -> None:
        if not available(reactor):
            if under_ci():
                raise AssertionError("inotify must work on the CI machine (Linux)")
            raise SkipTest("no inotify here: watches poll")
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        self.path = self.dir / "registry.sqlite3"

    def registry(self) -> LocalRegistry:
        registry = LocalRegistry(reactor, self.path, ttl=60, refresh=30)
        self.addCleanup(registry.close)
        return registry

    def watch(self, registry: LocalRegistry, service: str) -> list[list[str]]:
        seen: list[list[str]] = []
        registry.watch(service, lambda instances: seen.append(
            sorted(i.address for i in instances)))
        return seen

    @run
    async def test_registration_and_deregistration_wake_another_process_watch(
            self) -> None:
        seen = self.watch(self.registry(), "arith")
        await wait_for(reactor, lambda: seen == [[]], 5.0, "the first list")
        registration = await self.registry().register(ARITH)
        await wait_for(reactor, lambda: seen[-1] == [ARITH.address], 5.0,
                       "the registration, notified")
        await registration.deregister()
        await wait_for(reactor, lambda: seen[-1] == [], 5.0, "the deregistration, notified")

    @run
    async def test_replaced_file_wakes_the_watch_which_keeps_its_instances(self) -> None:
        writer = self.registry()
        await writer.register(ARITH)
        reader = self.registry()
        seen = self.watch(reader, "arith")
        await wait_for(reactor, lambda: seen == [[ARITH.address]], 5.0, "the first list")
        snapshots: list[Any] = []
        original = reader.store.snapshot
        self.patch(reader.store, "snapshot",
                   lambda *args: snapshots.append(args) or original(*args))
        for name in os.listdir(self.dir):
            os.unlink(self.dir / name)
        await wait_for(reactor, lambda: bool(snapshots), 5.0, "a look after the deletion")
        self.assertEqual(seen, [[ARITH.address]])  # carried until it beats again

    @run
    async def test_watcher_ignores_other_files_and_restarts_after_its_directory_goes(
            self) -> None:
        changes: list[int] = []
        watcher = ChangeWatcher(reactor, self.path, lambda: changes.append(1))
        self.addCleanup(watcher.stop)
        touch(change_file(self.path))  # exists: touching it is one event (no creation)
        self.assertTrue(watcher.start())
        (self.dir / "registry.sqlite3-wal").write_bytes(b"x")  # SQLite's own files
        (self.dir / "unrelated").write_bytes(b"x")
        touch(change_file(self.path))
        await wait_for(reactor, lambda: changes == [1], 5.0, "the change file's event")
        shutil.rmtree(self.dir)  # inotify drops the watch: look once, then poll
        await wait_for(reactor, lambda: not watcher.active, 5.0, "the lost watch")
        self.assertGreater(len(changes), 1)  # told (its deletion, the lost watch)
        self.dir.mkdir()
        self.assertTrue(watcher.start())
        before = len(changes)
        touch(change_file(self.path))
        await wait_for(reactor, lambda: len(changes) > before, 5.0, "events again")

    def test_a_reactor_without_descriptors_gets_no_notification(self) -> None:
        self.assertFalse(available(Clock()))
        self.assertFalse(ChangeWatcher(Clock(), self.path, lambda: None).start())
