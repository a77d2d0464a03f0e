"""
Blocking handlers on a thread pool, so they never stall the reactor.

Most Python service code blocks (SQLAlchemy, ``requests``, psycopg, file I/O, CPU work).
A method marked ``@expose(blocking=True)`` (or every plain ``def`` handler, with the
server-wide ``blocking`` default) is called on a worker thread; its result hops back to
the reactor with ``callFromThread`` and is answered like any async handler's, under the
same deadline and cancellation rules:

- a call whose deadline passes while its thread runs is answered 408 at once; a client's
  cancel or a lost connection drops the call; the thread cannot be interrupted, so its
  late result is dropped and counted (``Threads.late``);
- a call still queued when it is dropped never runs (``Threads.skipped``);
- at most ``size`` calls run and ``queue`` more wait; beyond that a call is answered 503
  (safe to retry elsewhere: nothing ran).

Each server has its own ``twisted.python.threadpool.ThreadPool`` rather than the reactor's:
the reactor's pool also resolves host names (``getaddrinfo``) and runs other libraries'
``deferToThread`` work, so blocking handlers filling it would stall connects and
registries, and sizing it (``suggestThreadPoolSize``) would change them too.  A dedicated
pool is sized by ``--threads`` alone, its queue bound is exact, and it stops with the
server.  Its threads are daemon threads: a handler still stuck after the drain timeout
cannot keep the process from exiting.
"""

from __future__ import annotations

import contextvars

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from msrpc.errors import BadRequest

log = Logger()


@dataclass(frozen=True)
class ThreadSettings:
    """``--threads``, ``--thread-queue`` and ``--blocking``."""

    size: int = 10            # threads running blocking handlers at once
    queue: int = 1000         # calls waiting for a thread; more are answered 503
    blocking: bool = False    # run every plain (non-async) handler on a thread

    def __post_init__(self) -> None:
        if self.size < 1 or self.queue < 0:
            raise ValueError("a handler thread pool needs size >= 1 and queue >= 0")


class Pool(Protocol):
    """What ``Threads`` needs of a thread pool (``ThreadPool``, or a test's fake)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def callInThreadWithCallback(self, onResult: Optional[Callable[[bool, Any], object]],
                                 func: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


class DaemonThreadPool(ThreadPool):
    """Twisted's ``ThreadPool`` with daemon threads: they never keep the interpreter alive
    (handler threads stuck past the drain, the local registry's SQLite thread of a
    program that forgot to close it)."""

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]


_SKIPPED = object()


class _Job:
    """One call handed to a thread; ``dropped`` is set on the reactor thread, read on the
    worker (a plain attribute: a stale read only means a dropped call runs anyway)."""

    __slots__ = ("dropped", "deferred")

    def __init__(self) -> None:
        self.dropped = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, deferred: "Deferred[Any]") -> None:
        self.dropped = True  # the Deferred then fails with CancelledError at once

    def run(self, fn: Callable[..., Any], args: Any, kwargs: Any, label: str) -> Any:
        """On a worker thread."""
        if self.dropped:
            return _SKIPPED
        try:
            return fn(*args, **kwargs)
        except TypeError as e:
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                # Raised by the call itself, not inside the handler: wrong arguments.
                raise BadRequest(f"{label}: {e}") from None
            raise


class Threads:
    """
    Runs blocking handlers on ``pool`` and reports each result back on the reactor thread
    through ``call_from_thread`` (``reactor.callFromThread``).
    """

    def __init__(self, call_from_thread: Callable[..., Any],
                 settings: ThreadSettings = ThreadSettings(),
                 pool: Optional[Pool] = None) -> None:
        self.settings = settings
        self.pool: Pool = pool if pool is not None else DaemonThreadPool(
            0, settings.size, name="msrpc-handlers")
        self._call_from_thread = call_from_thread
        self._capacity = settings.size + settings.queue
        #: Calls handed to the pool whose thread has not finished (queued or running).
        self.pending = 0
        #: Results that came back after their call was answered (408, cancel, lost).
        self.late = 0
        #: Queued calls that never ran because they were dropped first.
        self.skipped = 0
        self.started = False
        self._stopping = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.pool.start()

    def submit(self, fn: Callable[..., Any], args: Any, kwargs: Any,
               label: str) -> Optional["Deferred[Any]"]:
        """A Deferred for ``fn(*args, **kwargs)`` run on a thread; None when the pool and
        its queue are full.  Cancelling the Deferred drops the call (see the module)."""
        if self.pending >= self._capacity:
            return None
        job = _Job()
        self.pending += 1
        # The handler runs in a copy of the caller's context (contextvars): a trace
        # context current while the request was dispatched is current on the thread too.
        self.pool.callInThreadWithCallback(
            lambda ok, result: self._call_from_thread(self._finished, job, ok, result),
            contextvars.copy_context().run, job.run, fn, args, kwargs, label)
        return job.deferred

    def _finished(self, job: _Job, ok: bool, result: Any) -> None:
        """Back on the reactor thread."""
        self.pending -= 1
        if self._stopping and self.pending == 0:
            self._stop_pool()
        if result is _SKIPPED:
            self.skipped += 1
        elif job.deferred.called:
            self.late += 1  # answered already: 408, cancelled, or its connection lost
        elif ok:
            job.deferred.callback(result)
        else:
            job.deferred.errback(result if isinstance(result, Failure) else Failure(result))

    def stop(self) -> None:
        """Stop the pool once its threads are idle (now, when they are)."""
        if not self.started or self._stopping:
            return
        self._stopping = True
        if self.pending == 0:
            self._stop_pool()
        else:
            log.warn("{n} blocking handler(s) still running after the drain; their results "
                     "will be dropped", n=self.pending)

    def _stop_pool(self) -> None:
        self.started = False
        self.pool.stop()
