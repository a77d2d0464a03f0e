"""
Change notification for the ``local`` registry, across the processes sharing its file.

Every visible change (a registration, a deregistration, a row put back) touches a *change
file* next to the SQLite file (``registry.sqlite3-changes``) once it is committed.  A
``ChangeWatcher`` watches that directory with Linux inotify (``twisted.internet.inotify``)
and calls back when the change file is written or the registry file itself is deleted or
replaced, so watches look again within milliseconds instead of polling SQLite often.
Where inotify is unavailable (other platforms, a reactor without file descriptors, the
per-user inotify limit reached) there is no notification and watches keep polling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

try:
    from twisted.internet import inotify
except ImportError:  # not Linux: no inotify in libc
    inotify = None  # type: ignore[assignment]

#: Appended to the registry file's name, as SQLite names its ``-wal`` and ``-shm`` files.
SUFFIX = "-changes"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def change_file(registry: Path) -> Path:
    """The change file of the registry file ``registry``."""
    return registry.with_name(registry.name + SUFFIX)


def touch(path: Path) -> None:
    """
    Announce a committed change (blocking: runs on the registry's SQLite thread).  Opening
    the file for writing and closing it is the event (``IN_CLOSE_WRITE``); nothing is
    written.  Best effort: a watcher that misses it still polls.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o666))
    except OSError:
        pass


def available(reactor: Any) -> bool:
    """Whether ``ChangeWatcher`` can work here: inotify and a reactor of descriptors."""
    return inotify is not None and IReactorFDSet.providedBy(reactor)


if inotify is not None:

    class _INotify(inotify.INotify):
        """Twisted's notifier, telling us when it closes (it closes itself for good
        when the watched directory is deleted)."""

        def __init__(self, reactor: Any, on_closed: Callable[[Any], None]) -> None:
            super().__init__(reactor)
            self._on_closed = on_closed
            self.closed: Deferred[None] = Deferred()

        def connectionLost(self, reason: Failure) -> None:
            super().connectionLost(reason)
            self._on_closed(self)
            self.closed.callback(None)

    _MASK = (inotify.IN_CLOSE_WRITE | inotify.IN_CREATE | inotify.IN_DELETE |
             inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO)


class ChangeWatcher:
    """
    Calls ``on_change()`` when a process announces a change of the registry at ``path``
    (or deletes or replaces its file).  ``start`` says whether notification works now; it
    may be called again later (after the directory was recreated, say).
    """

    log = Logger()

    def __init__(self, reactor: Any, path: Path, on_change: Callable[[], None]) -> None:
        self.reactor = reactor
        self.path = path
        self.on_change = on_change
        self._names = {os.fsencode(path.name), os.fsencode(change_file(path).name)}
        self._notifier: Any = None
        self._warned = False

    @property
    def active(self) -> bool:
        return self._notifier is not None

    def start(self) -> bool:
        """Watch the registry's directory; False (and polling only) when that fails."""
        if self._notifier is not None:
            return True
        if not available(self.reactor):
            return False
        notifier = None
        try:
            notifier = _INotify(self.reactor, self._closed)
            notifier.watch(FilePath(os.fsencode(self.path.parent)), mask=_MASK,
                           callbacks=[self._event])
            notifier.startReading()
        except (inotify.INotifyError, OSError) as e:
            if notifier is not None:
                notifier.loseConnection()
            if not self._warned:
                self._warned = True
                self.log.info("no change notification for {path}, watches poll: {error}",
                              path=self.path, error=e)
            return False
        self._notifier = notifier
        self._warned = False
        return True

    def _event(self, ignored: Any, path: FilePath[bytes], mask: int) -> None:
        if path.basename() in self._names:
            self.on_change()

    def _closed(self, notifier: Any) -> None:
        if self._notifier is notifier:
            self._notifier = None
            self.on_change()  # the directory went away: look, then poll until restarted

    def stop(self) -> "Deferred[None]":
        """Stop watching; fires once the inotify descriptor is closed."""
        notifier, self._notifier = self._notifier, None
        if notifier is None:
            return succeed(None)
        notifier.loseConnection()
        closed: Deferred[None] = notifier.closed
        return closed


__all__ = ["ChangeWatcher", "change_file", "touch", "available", "SUFFIX"]
