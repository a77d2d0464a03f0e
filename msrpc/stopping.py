"""
How a ``twistd msrpc`` process stops: its parts one after the other, and at once when
asked twice.

Twisted's ``MultiService`` stops all children at the same moment, so the shared client and
the registry would close while the server is still deregistering and draining (and the
services it drains could no longer call anyone).  ``SequentialMultiService`` stops them
one at a time, last added first.

Twisted handles SIGTERM/SIGINT by stopping the reactor; a second signal during a long
graceful drain stops it again, which logs ``ReactorNotRunning`` and changes nothing.
``SecondSignal`` takes over those signals once the shutdown has begun: the second one
calls ``hurry`` (cut the drain short), a third ends the process on the spot.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

log = Logger()


class SequentialMultiService(MultiService):
    """A ``MultiService`` that stops its children one after the other, last added first."""

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=child)


#: What ``signal.signal`` and ``signal.getsignal`` look like, so tests can pass fakes.
SignalInstaller = Callable[[int, Any], Any]


class SecondSignal(Service):
    """
    Once the reactor begins to shut down, SIGTERM and SIGINT (where the reactor installed
    its own handlers for them) call ``hurry`` the second time and exit the process with
    status 128 + signal the third time.  Nothing is changed before the shutdown begins.
    """

    def __init__(self, reactor: Any, hurry: Callable[[], None],
                 signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                 install: SignalInstaller = signal.signal,
                 current: Callable[[int], Any] = signal.getsignal,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.reactor = reactor
        self.hurry = hurry
        self.signals = tuple(signals)
        self._install = install
        self._current = current
        self._exit = exit
        self._trigger: Optional[Any] = None
        self.armed = False
        self.received = 0

    def startService(self) -> None:
        Service.startService(self)
        self._trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.arm)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._trigger is not None and not self.armed:  # stopped without a shutdown
            self.reactor.removeSystemEventTrigger(self._trigger)
        self._trigger = None

    def arm(self) -> None:
        """The shutdown has begun (the first signal, or any other stop)."""
        self.armed = True
        for signum in self.signals:
            handler = self._current(signum)
            if getattr(handler, "__self__", None) is self.reactor:
                self._install(signum, self._signalled)

    def _signalled(self, signum: int, frame: Any = None) -> None:
        # In a signal handler: hand over to the reactor thread, as Twisted itself does.
        self.reactor.callFromThread(self.again, signum)

    def again(self, signum: int) -> None:
        """A stop signal while already stopping."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            log.warn("{signal} again while stopping: stopping now, without waiting for "
                     "calls in flight (once more exits at once)", signal=name)
            self.hurry()
        else:
            log.warn("{signal} a third time: exiting now", signal=name)
            self._exit(128 + signum)
