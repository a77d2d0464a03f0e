"""
The embedded ``local`` registry (the default): one SQLite file shared by every process of
a machine, so servers and clients on one host find each other without running a server.

Each registered instance is a row with a wall-clock ``expires_at`` that its process pushes
forward with a heartbeat every TTL/3.  A process that dies without deregistering (SIGKILL,
power cut) stops beating and its row stops being served once the TTL has passed; the next
write by anyone prunes it.  Timestamps are wall clock (``reactor.seconds()``) so that all
processes agree on them.

Watches learn of changes without polling SQLite often: every committed change touches a
change file next to the SQLite file, which ``msrpc.registry.changes`` watches with inotify
(Linux), so watches look again within milliseconds; they also look again when an instance
they list reaches its expiry (a killed process disappears on time), and poll every
``refresh`` seconds where there is no notification, every ``NOTIFIED_POLL_FACTOR`` times
that as a safety net where there is.

SQLite calls block, so they never run on the reactor thread: by default they go to one
dedicated thread (one connection, every statement serialized, in submission order).  Tests
pass ``run=run_inline`` and a ``Clock`` to get the same code synchronously and
deterministically, still on a real SQLite file.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from msrpc.errors import RegistryError
from msrpc.registry.changes import ChangeWatcher, change_file, touch
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import (IRegistration, IRegistry, IServiceCatalog, IWatch,
                                      WatchCallback)
from msrpc.observe import RegistryEvents
from msrpc.registry.polling import PollingWatch
from msrpc.registry.registration import CallbackWatch, Registration
from msrpc.threads import DaemonThreadPool

T = TypeVar("T")

#: Seconds an instance stays listed after its last heartbeat.  Six seconds with a beat every
#: two means a killed process disappears within 6 s, while a beat may be late or fail twice
#: in a row (a busy disk, a long GC pause) before a live instance drops out.
DEFAULT_TTL = 6.0
#: Seconds between two polls of a watch without change notification.
DEFAULT_REFRESH = 1.0
#: With change notification, watches still poll (a safety net) every this many refreshes.
NOTIFIED_POLL_FACTOR = 10
#: Seconds a statement waits for another process's write lock before failing.  Writes hold
#: the lock for microseconds; this only trips on a stuck writer.
DEFAULT_BUSY_TIMEOUT = 5.0
#: Environment variable naming the registry file; ``--local-path`` wins over it.
ENV_VAR = "MSRPC_LOCAL_REGISTRY"
#: Stored in ``PRAGMA user_version``; bump it and append to ``_MIGRATIONS`` to evolve.
SCHEMA_VERSION = 1

#: Runs a blocking callable away from the reactor and returns a Deferred of its result.  It
#: must run the callables one at a time, in the order they were submitted.
Run = Callable[[Callable[[], Any]], "Deferred[Any]"]


def run_inline(fn: Callable[[], T]) -> "Deferred[T]":
    """An executor for tests: run ``fn`` at once on the calling thread."""
    return maybeDeferred(fn)


def default_path(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$MSRPC_LOCAL_REGISTRY``, else the file in the user's XDG state directory."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec says to ignore relative paths
        home = env.get("HOME") or str(Path.home())
        state = os.path.join(home, ".local", "state")
    return Path(state) / "msrpc" / "registry.sqlite3"


# --------------------------------------------------------------------------- SQLite side


def _create_v1(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""")
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('file_id', ?)",
               (uuid.uuid4().hex,))
    db.execute("""
        CREATE TABLE IF NOT EXISTS instances (
            service     TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            host        TEXT NOT NULL,
            port        INTEGER NOT NULL,
            weight      REAL NOT NULL,
            metadata    TEXT NOT NULL,
            namespace   TEXT NOT NULL,
            group_name  TEXT NOT NULL,
            cluster     TEXT NOT NULL,
            enabled     INTEGER NOT NULL,
            pid         INTEGER NOT NULL,
            owner       TEXT NOT NULL,
            expires_at  REAL NOT NULL,
            PRIMARY KEY (service, instance_id)
        ) WITHOUT ROWID""")
    db.execute("CREATE INDEX IF NOT EXISTS instances_expiry ON instances (expires_at)")
    # Bumped by every visible change of a service, so an idle watch poll reads one row.
    db.execute("""
        CREATE TABLE IF NOT EXISTS generations (
            service TEXT PRIMARY KEY, generation INTEGER NOT NULL) WITHOUT ROWID""")


#: ``_MIGRATIONS[n]`` brings a file from schema ``n`` to ``n + 1``.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_COLUMNS = ("service, instance_id, host, port, weight, metadata, namespace, group_name, "
            "cluster, enabled")

_PUT = f"""
    INSERT INTO instances ({_COLUMNS}, pid, owner, expires_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (service, instance_id) DO UPDATE SET
        host = excluded.host, port = excluded.port, weight = excluded.weight,
        metadata = excluded.metadata, namespace = excluded.namespace,
        group_name = excluded.group_name, cluster = excluded.cluster,
        enabled = excluded.enabled, pid = excluded.pid, owner = excluded.owner,
        expires_at = excluded.expires_at"""

_BUMP = """
    INSERT INTO generations (service, generation) VALUES (?, 1)
    ON CONFLICT (service) DO UPDATE SET generation = generation + 1"""


@dataclass(frozen=True)
class Lease:
    """What one process keeps alive: an instance, who owns its row, and until when."""

    instance: ServiceInstance
    owner: str
    pid: int
    expires_at: float

    def values(self) -> tuple[Any, ...]:
        i = self.instance
        return (i.service, i.instance_id, i.host, i.port, i.weight,
                json.dumps(dict(i.metadata), sort_keys=True), i.namespace, i.group,
                i.cluster, int(i.enabled), self.pid, self.owner, self.expires_at)


@dataclass(frozen=True)
class Snapshot:
    """
    The live instances of a service as read at one moment.  It stays exact while the
    service's change token is the same and no instance has reached its expiry.
    """

    token: tuple[str, int]
    instances: tuple[ServiceInstance, ...]
    #: When each instance's row expires, in the order of ``instances``.
    expires_at: tuple[float, ...] = ()

    @property
    def valid_until(self) -> float:
        """The first expiry: from then on the snapshot may list a dead instance."""
        return min(self.expires_at, default=math.inf)


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn SQLite and file-system failures into a RegistryError naming the file."""

    @functools.wraps(method)
    def guarded(self: "Store", *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except RegistryError:
            raise
        except (sqlite3.Error, OSError) as e:
            self.close()  # start from a fresh connection next time
            hint = ""
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                hint = f" (still busy after {self._busy_timeout:g}s)"
            raise RegistryError(f"{self.path}: {e}{hint}", backend="local") from e

    return guarded


@contextmanager
def _transaction(db: sqlite3.Connection, immediate: bool = False) -> Iterator[None]:
    """``IMMEDIATE`` takes the write lock up front, so a writer never fails half-way."""
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    db.execute("COMMIT")


class Store:
    """
    The blocking SQLite side of the registry; call it only through the executor.

    It keeps one connection and reopens it when the file at ``path`` is no longer the one
    it opened (deleted or replaced by someone), so a heartbeat recreates a removed file.
    """

    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = path
        #: Touched after every committed change other processes should see at once.
        self.changes = change_file(path)
        self._busy_timeout = busy_timeout
        self._db: Optional[sqlite3.Connection] = None
        self._identity: Optional[tuple[int, int]] = None

    def _file_identity(self) -> Optional[tuple[int, int]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and self._file_identity() == self._identity:
            return self._db
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                             check_same_thread=False)  # one executor thread at a time
        try:
            db.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
            db.execute("PRAGMA synchronous = NORMAL")  # enough for a registry of leases
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db, self._identity = db, self._file_identity()
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with _transaction(db, immediate=True):  # re-read under the lock: one migrator
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path}: schema version {version} is newer than this msrpc "
                    f"understands ({SCHEMA_VERSION}); upgrade msrpc or use another file",
                    backend="local")
            for migrate in _MIGRATIONS[version:]:
                migrate(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @_guarded
    def put(self, lease: Lease, now: float) -> None:
        """Insert the row (or take it over), announce the change, prune expired rows."""
        db = self._connection()
        with _transaction(db, immediate=True):
            self._put(db, lease, now)
        touch(self.changes)

    @_guarded
    def beat(self, lease: Lease, now: float) -> bool:
        """
        Push the row's expiry forward; put it back if it vanished or had expired (True).
        A live row of the same id owned by another process is kept alive, not taken over.
        """
        i = lease.instance
        db = self._connection()
        with _transaction(db, immediate=True):
            refreshed = db.execute(
                "UPDATE instances SET expires_at = max(expires_at, ?) "
                "WHERE service = ? AND instance_id = ? AND expires_at > ?",
                (lease.expires_at, i.service, i.instance_id, now)).rowcount
            if not refreshed:
                self._put(db, lease, now)
        if not refreshed:
            touch(self.changes)
        return not refreshed

    @staticmethod
    def _put(db: sqlite3.Connection, lease: Lease, now: float) -> None:
        db.execute(_PUT, lease.values())
        db.execute(_BUMP, (lease.instance.service,))
        # Expired rows are invisible already: removing them changes nothing to announce.
        db.execute("DELETE FROM instances WHERE expires_at <= ?", (now,))

    @_guarded
    def delete(self, lease: Lease) -> None:
        """Remove the row if this lease still owns it (a newer owner keeps its row)."""
        i = lease.instance
        db = self._connection()
        with _transaction(db, immediate=True):
            deleted = db.execute(
                "DELETE FROM instances WHERE service = ? AND instance_id = ? AND owner = ?",
                (i.service, i.instance_id, lease.owner)).rowcount
            if deleted:
                db.execute(_BUMP, (i.service,))
        if deleted:
            touch(self.changes)

    @_guarded
    def snapshot(self, service: str, now: float, known: Optional[Snapshot] = None
                 ) -> Snapshot:
        """The live instances of ``service``; ``known`` itself when it is still exact."""
        db = self._connection()
        with _transaction(db):
            file_id, generation = db.execute(
                "SELECT (SELECT value FROM meta WHERE key = 'file_id'), "
                "(SELECT generation FROM generations WHERE service = ?)",
                (service,)).fetchone()
            token = (file_id, generation or 0)
            if known is not None and known.token == token and now < known.valid_until:
                return known
            rows = db.execute(
                f"SELECT {_COLUMNS}, expires_at FROM instances "
                "WHERE service = ? AND expires_at > ? ORDER BY instance_id",
                (service, now)).fetchall()
        return Snapshot(token=token,
                        instances=tuple(self._instance(row) for row in rows),
                        expires_at=tuple(row[-1] for row in rows))

    @_guarded
    def services(self, now: float) -> list[str]:
        """Names of the services with at least one live instance, sorted."""
        db = self._connection()
        with _transaction(db):
            rows = db.execute("SELECT DISTINCT service FROM instances WHERE expires_at > ? "
                              "ORDER BY service", (now,)).fetchall()
        return [row[0] for row in rows]

    def _instance(self, row: Sequence[Any]) -> ServiceInstance:
        (service, instance_id, host, port, weight, metadata, namespace, group, cluster,
         enabled, _expires_at) = row
        try:
            return ServiceInstance(
                service=service, instance_id=instance_id, host=host, port=port,
                weight=weight, metadata=json.loads(metadata), namespace=namespace,
                group=group, cluster=cluster, enabled=bool(enabled))
        except (ValueError, TypeError) as e:
            raise RegistryError(f"{self.path}: bad row for {service}/{instance_id}: {e}",
                                backend="local") from e

    def close(self) -> None:
        db, self._db, self._identity = self._db, None, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass  # a broken connection is being dropped anyway


# --------------------------------------------------------------------------- reactor side


class _ThreadExecutor:
    """
    One dedicated thread for all SQLite calls.  It starts when the reactor runs (so
    ``twistd`` may fork to daemonize after building the registry) and stops on ``close``
    or at reactor shutdown, whichever comes first.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        # Daemon threads: a program that forgets to close its registry still exits (the
        # heartbeat stops, the row expires by TTL, and SQLite's journal keeps the file
        # consistent even if a write is cut short).
        self._pool = DaemonThreadPool(minthreads=1, maxthreads=1,
                                      name="msrpc-local-registry")
        reactor.callWhenRunning(self._pool.start)
        self._trigger: Any = reactor.addSystemEventTrigger(
            "during", "shutdown", self._on_shutdown)

    def __call__(self, fn: Callable[[], T]) -> "Deferred[T]":
        return deferToThreadPool(self._reactor, self._pool, fn)

    def _on_shutdown(self) -> None:
        self._trigger = None  # the reactor has consumed it
        self.stop()

    def stop(self) -> None:
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        if not self._pool.joined:
            self._pool.stop()


class _Heartbeat:
    """Keeps one instance's row alive until stopped, then removes it."""

    log = Logger()

    def __init__(self, registry: "LocalRegistry", instance: ServiceInstance) -> None:
        self.instance = instance
        self._registry = registry
        self._owner = f"{os.getpid()}:{uuid.uuid4().hex}"
        self._loop = LoopingCall(self._beat)
        self._loop.clock = registry.clock
        self._failing = False
        self.stopped = False

    def lease(self, now: float) -> Lease:
        return Lease(self.instance, self._owner, os.getpid(), now + self._registry.ttl)

    def start(self) -> None:
        if not self.stopped:
            self._loop.start(self._registry.ttl / 3, now=False)

    def _beat(self) -> "Deferred[None]":
        now = self._registry.clock.seconds()
        return self._registry.call(
            self._registry.store.beat, self.lease(now), now).addCallbacks(
            self._beat_ok, self._beat_failed)

    def _beat_ok(self, reinserted: bool) -> None:
        if self._failing:
            self._failing = False
            self.log.info("heartbeat of {service} at {address} works again",
                          service=self.instance.service, address=self.instance.address)
        if reinserted:
            self.log.info("re-registered {service} at {address} in {path}: its row had "
                          "vanished or expired", service=self.instance.service,
                          address=self.instance.address, path=self._registry.path)

    def _beat_failed(self, failure: Any) -> None:
        # Never let the failure reach the LoopingCall: that would stop the beats for good.
        self._registry.events.error("keepalive", failure.value)
        if not self._failing:
            self._failing = True
            self.log.warn("heartbeat of {service} at {address} failed, will keep trying: "
                          "{error}", service=self.instance.service,
                          address=self.instance.address, error=failure.getErrorMessage())

    def stop(self) -> "Deferred[None]":
        """Stop beating and delete the row (if this process still owns it); once only."""
        if self.stopped:
            return succeed(None)
        self.stopped = True
        if self._loop.running:
            self._loop.stop()
        self._registry.forget(self)
        d = self._registry.call(self._registry.store.delete,
                                self.lease(self._registry.clock.seconds()))
        return d.addCallback(lambda _: self.log.info(
            "deregistered {service} at {address}", service=self.instance.service,
            address=self.instance.address))


class _CachedLookup:
    """
    A watch's lookup: remembers its last snapshot so an idle poll reads one row.

    When the file is deleted or replaced, the rows of live processes come back only with
    their next heartbeats (within TTL/3).  Until then the watch goes on listing what the
    old file listed, each instance until the expiry it had there: losing the file shortens
    no lease, so callers are not left without instances meanwhile, and an instance whose
    process is gone drops out when it would have anyway.
    """

    def __init__(self, registry: "LocalRegistry") -> None:
        self._registry = registry
        self._last: Optional[Snapshot] = None
        #: instance id → (instance, expiry) listed by a file that is gone.
        self._carried: dict[str, tuple[ServiceInstance, float]] = {}

    def __call__(self, service: str) -> "Deferred[list[ServiceInstance]]":
        now = self._registry.clock.seconds()
        d = self._registry.call(self._registry.store.snapshot, service, now, self._last)
        return d.addCallback(self._remember, now)

    def due(self) -> Optional[float]:
        """When the list may next change without anyone writing: the first expiry of an
        instance it holds (a process that died without deregistering)."""
        first = self._last.valid_until if self._last is not None else math.inf
        for _, expires_at in self._carried.values():
            first = min(first, expires_at)
        return first if first < math.inf else None

    def _remember(self, snapshot: Snapshot, now: float) -> list[ServiceInstance]:
        previous, self._last = self._last, snapshot
        if previous is not None and previous.token[0] != snapshot.token[0]:
            for instance, expires_at in zip(previous.instances, previous.expires_at):
                self._carried[instance.instance_id] = (instance, expires_at)
        instances = list(snapshot.instances)
        if self._carried:
            listed = {instance.instance_id for instance in instances}
            self._carried = {key: (instance, expires_at)
                             for key, (instance, expires_at) in self._carried.items()
                             if key not in listed and expires_at > now}
            instances.extend(instance for instance, _ in self._carried.values())
        return instances


@implementer(IRegistry, IServiceCatalog)
class LocalRegistry:
    """
    The ``local`` backend.  ``reactor`` provides the clock (wall-clock seconds: processes
    compare each other's timestamps) and, unless ``run`` is given, the thread pool hooks.
    """

    name = "local"
    log = Logger()

    def __init__(self, reactor: IReactorTime, path: "str | os.PathLike[str] | None" = None,
                 *, ttl: float = DEFAULT_TTL, refresh: float = DEFAULT_REFRESH,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 run: Optional[Run] = None, notify: bool = True) -> None:
        if not ttl > 0:
            raise ValueError(f"local registry ttl must be > 0, got {ttl!r}")
        if not refresh > 0:
            raise ValueError(f"local registry refresh must be > 0, got {refresh!r}")
        if not busy_timeout >= 0:
            raise ValueError(f"local registry busy timeout must be >= 0, got {busy_timeout!r}")
        self.clock = reactor
        self.path = Path(path).expanduser() if path else default_path()
        self.ttl = float(ttl)
        self.refresh = float(refresh)
        self.store = Store(self.path, busy_timeout)
        self._executor: Optional[_ThreadExecutor] = None
        if run is None:
            self._executor = run = _ThreadExecutor(reactor)
        self._run: Run = run
        self._heartbeats: set[_Heartbeat] = set()
        self._watches: set[IWatch] = set()
        self._polls: set[PollingWatch] = set()
        #: Wakes the watches when any process changes the registry (None: ``notify=False``).
        self._changes = ChangeWatcher(reactor, self.path, self._changed) if notify else None
        self._closing: Optional[Deferred[None]] = None
        self._closed = False
        #: Errors and watch reconnects, for observers (``msrpc.observe``).
        self.events = RegistryEvents(self.name)

    def call(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Run a blocking ``Store`` method on the executor (an error once it is gone)."""
        if self._closed:
            return fail(self._closed_error())
        return self._run(functools.partial(fn, *args))

    def _closed_error(self) -> RegistryError:
        return RegistryError(f"{self.path}: the registry is closed", backend="local")

    def register(self, instance: ServiceInstance) -> "Deferred[IRegistration]":
        if self._closing is not None:
            return fail(self._closed_error())
        heartbeat = _Heartbeat(self, instance)
        self._heartbeats.add(heartbeat)

        def started(_: None) -> IRegistration:
            if heartbeat.stopped:  # close() ran while the row was being written
                raise self._closed_error()
            heartbeat.start()
            self.log.info("registered {service} at {address} in {path} (ttl {ttl:g}s)",
                          service=instance.service, address=instance.address,
                          path=self.path, ttl=self.ttl)
            return Registration(instance, heartbeat.stop)

        def failed(failure: Any) -> Any:
            self.forget(heartbeat)
            return failure

        now = self.clock.seconds()
        return self.call(self.store.put, heartbeat.lease(now), now).addCallbacks(started,
                                                                                 failed)

    def forget(self, heartbeat: _Heartbeat) -> None:
        self._heartbeats.discard(heartbeat)

    def lookup(self, service: str) -> "Deferred[list[ServiceInstance]]":
        if self._closing is not None:
            return fail(self._closed_error())
        d = self.call(self.store.snapshot, service, self.clock.seconds())
        return d.addCallback(lambda snapshot: list(snapshot.instances))

    def services(self) -> "Deferred[list[str]]":
        if self._closing is not None:
            return fail(self._closed_error())
        return self.call(self.store.services, self.clock.seconds())

    def watch(self, service: str, callback: WatchCallback) -> IWatch:
        if self._closing is not None:
            raise self._closed_error()
        self._notified()  # start listening before the first look, so nothing slips by
        lookup = _CachedLookup(self)
        poll = PollingWatch(self.clock, lookup, service, callback, self._poll_interval,
                            due=lookup.due, events=self.events)
        self._polls.add(poll)

        def stopped() -> None:
            poll.stop()
            self._polls.discard(poll)
            self._watches.discard(watch)

        watch = CallbackWatch(stopped)
        self._watches.add(watch)
        return watch

    def _notified(self) -> bool:
        """Whether change notification works (started, or restarted, now if it can)."""
        return self._changes is not None and self._changes.start()

    def _poll_interval(self) -> float:
        """A watch's next poll: a slow safety net when changes are notified."""
        return self.refresh * NOTIFIED_POLL_FACTOR if self._notified() else self.refresh

    def _changed(self) -> None:
        """A process changed the registry (or its file went away): every watch looks."""
        for poll in list(self._polls):
            poll.poll_now()

    def close(self) -> "Deferred[None]":
        """Deregister everything, stop watches and the thread; safe to call again."""
        if self._closing is None:
            self._closing = Deferred.fromCoroutine(self._close())
        done: Deferred[None] = Deferred()
        self._closing.addBoth(lambda result: done.callback(None))
        return done

    async def _close(self) -> None:
        for watch in list(self._watches):
            watch.stop()
        if self._changes is not None:
            await self._changes.stop()
        await gatherResults(
            [maybeDeferred(heartbeat.stop).addErrback(self._deregister_failed, heartbeat)
             for heartbeat in list(self._heartbeats)])
        try:
            await self.call(self.store.close)
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.stop()

    def _deregister_failed(self, failure: Any, heartbeat: _Heartbeat) -> None:
        self.log.warn("could not deregister {service} at {address}; it expires within "
                      "{ttl:g}s: {error}", service=heartbeat.instance.service,
                      address=heartbeat.instance.address, ttl=self.ttl,
                      error=failure.getErrorMessage())

    def __repr__(self) -> str:
        return f"<LocalRegistry {self.path} ttl={self.ttl:g}s>"


# --------------------------------------------------------------------------- options


def _positive_float(value: "str | float") -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


_positive_float.coerceDoc = "Seconds, > 0."  # type: ignore[attr-defined]

OPTIONS = [
    ["local-path", None, "",
     f"Local registry: the SQLite file shared by this machine's processes "
     f"(default: ${ENV_VAR}, else $XDG_STATE_HOME/msrpc/registry.sqlite3)."],
    ["local-ttl", None, DEFAULT_TTL,
     "Local registry: seconds an instance stays listed without a heartbeat; "
     "heartbeats run every TTL/3.", _positive_float],
    ["local-refresh", None, DEFAULT_REFRESH,
     "Local registry: seconds between two polls of a watch where changes are not "
     f"notified (inotify, Linux); {NOTIFIED_POLL_FACTOR} times that where they are.",
     _positive_float],
]


def from_options(reactor: Any, options: Mapping[str, Any]) -> LocalRegistry:
    return LocalRegistry(
        reactor, options.get("local-path") or None,
        ttl=_positive_float(options.get("local-ttl", DEFAULT_TTL)),
        refresh=_positive_float(options.get("local-refresh", DEFAULT_REFRESH)))


__all__ = ["LocalRegistry", "Store", "Lease", "Snapshot", "run_inline", "default_path",
           "from_options", "OPTIONS", "DEFAULT_TTL", "DEFAULT_REFRESH", "ENV_VAR",
           "SCHEMA_VERSION", "NOTIFIED_POLL_FACTOR"]
