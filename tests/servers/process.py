"""
Child processes for integration tests: output to a log file, signals by pid, a Deferred for
the exit, and an ``atexit`` safety net so no server outlives the test run, whatever happens.
"""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: pid → process, for every child still running.
_RUNNING: dict[int, "LoggedProcess"] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_RUNNING):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class _Exit(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[Optional[int]] = defer.Deferred()
        self.code: Optional[int] = None
        self.signal: Optional[int] = None

    def processEnded(self, reason: Failure) -> None:
        self.code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(self.code)


class LoggedProcess:
    """One child whose stdout and stderr go (appended) to ``log_path``."""

    def __init__(self, reactor: Any, argv: Sequence[str], log_path: Path,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._protocol = _Exit()
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            log.write(f"\n--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._transport = reactor.spawnProcess(
                self._protocol, self.argv[0], self.argv,
                env=dict(os.environ if env is None else env), path=cwd,
                childFDs={0: devnull.fileno(), 1: log.fileno(), 2: log.fileno()})
        self.pid: int = self._transport.pid
        _RUNNING[self.pid] = self
        self.ended = self._protocol.ended
        self.ended.addBoth(self._forget)

    def _forget(self, result: Any) -> Any:
        _RUNNING.pop(self.pid, None)
        return result

    @property
    def running(self) -> bool:
        return not self.ended.called

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code (None while running, or when a signal ended the process)."""
        return self._protocol.code

    @property
    def exit_signal(self) -> Optional[int]:
        """The signal that ended the process (None while running or after an exit)."""
        return self._protocol.signal

    def signal(self, signum: int) -> None:
        if self.running:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    async def terminate(self, reactor: Any, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        killer = reactor.callLater(grace, self.signal, signal.SIGKILL)
        try:
            await _wait(self.ended)
        finally:
            if killer.active():
                killer.cancel()

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await _wait(self.ended)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _wait(d: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
    """A new Deferred with ``d``'s result, leaving ``d`` itself intact for other waiters."""
    waiter: defer.Deferred[Any] = defer.Deferred()

    def relay(result: Any) -> Any:
        waiter.callback(result)
        return result

    d.addBoth(relay)
    return waiter
