"""
Real ``twistd msrpc`` server processes and the ``msrpc`` command, for end-to-end tests.

Servers listen on ``tcp:0`` (the OS picks a free port, so nothing races for one); the port is
read from the server's own log line.  Every process is killed at exit at the latest.

``twistd`` and ``msrpc`` run with this checkout first on ``PYTHONPATH``, so they import its
``msrpc`` package and find its ``twisted/plugins/msrpc_plugin.py``, whatever is installed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from tests.servers import REPO_ROOT, wait_for
from tests.servers.process import LoggedProcess

BIN = Path(sys.executable).parent
_SERVING = re.compile(r"msrpc serving .* on .*port=(\d+)")
#: The server's own line per registered instance (registries log their own lines too); with
#: ``--workers``, the supervisor's.
_REGISTERED = re.compile(r"\[msrpc\.(server\.Server|workers\.Supervisor)#info\] registered ")


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Our environment, with this checkout first on the path (its twisted/plugins too)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def twistd() -> str:
    path = BIN / "twistd"
    return str(path) if path.exists() else "twistd"


class MsrpcDaemon:
    """
    ``twistd -n msrpc ...`` in the foreground, logging to a file in ``workdir``; or, given
    ``tac``, ``twistd -ny TAC`` (``args`` are then ignored: a .tac file takes no options).
    """

    def __init__(self, reactor: Any, workdir: Path, args: Sequence[str],
                 env: Optional[dict[str, str]] = None, name: str = "msrpcd",
                 tac: Optional[Path] = None, twistd_args: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.workdir = workdir
        self.args = list(args)
        self.tac = tac
        #: twistd's own options (``--reactor=asyncio``), before the plugin name.
        self.twistd_args = list(twistd_args)
        self.env = child_env(env)
        self.log_path = workdir / f"{name}.log"
        self.process: Optional[LoggedProcess] = None
        self.port: Optional[int] = None

    def argv(self) -> list[str]:
        base = [twistd(), "-n", "--pidfile=", "--logfile=-", *self.twistd_args]
        if self.tac is not None:
            return [*base, "-y", str(self.tac)]
        return [*base, "msrpc", "--listen", "tcp:0:interface=127.0.0.1", *self.args]

    def start(self, registered: int = 0, timeout: float = 30.0) -> "defer.Deferred[None]":
        """Spawn, then wait until it serves (and has made ``registered`` registrations)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = LoggedProcess(self.reactor, self.argv(), self.log_path, self.env,
                                     cwd=str(self.workdir))

        def ready() -> bool:
            text = self.log_path.read_text(errors="replace")[offset:]
            if not self.process or not self.process.running:
                raise RuntimeError(f"twistd msrpc exited:\n{text[-3000:]}")
            match = _SERVING.search(text)
            if match is None or len(_REGISTERED.findall(text)) < registered:
                return False
            self.port = int(match.group(1))
            return True

        return wait_for(self.reactor, ready, timeout, f"twistd msrpc ({self.log_path})")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def terminate(self, grace: float = 15.0) -> "defer.Deferred[None]":
        """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds."""
        assert self.process is not None
        return defer.Deferred.fromCoroutine(self.process.terminate(self.reactor, grace))

    def kill(self) -> "defer.Deferred[None]":
        """SIGKILL, as in a crash: nothing is deregistered."""
        assert self.process is not None
        return defer.Deferred.fromCoroutine(self.process.kill())

    def exit_status(self) -> str:
        """
        How the process ended: ``"exit N"``, or the signal's name.  After a clean shutdown
        on SIGTERM, twistd re-raises that SIGTERM on itself (``twisted.scripts.twistd.
        runApp``), so a graceful stop ends as ``"SIGTERM"`` (143 in a shell), not exit 0.
        """
        assert self.process is not None and not self.process.running
        if self.process.exit_signal is not None:
            return signal.Signals(self.process.exit_signal).name
        return f"exit {self.process.exit_code}"

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""


def workdir(test: TestCase) -> Path:
    """A temporary directory removed after the test (outside the source tree)."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="msrpc-e2e-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


def start_daemon(test: TestCase, reactor: Any, directory: Path, args: Sequence[str],
                 registered: int = 0, env: Optional[dict[str, str]] = None,
                 name: str = "msrpcd", tac: Optional[Path] = None,
                 twistd_args: Sequence[str] = ()) -> "defer.Deferred[MsrpcDaemon]":
    """Start a daemon stopped (SIGTERM, then SIGKILL) after the test; its log on failure."""
    daemon = MsrpcDaemon(reactor, directory, args, env, name, tac, twistd_args)

    def cleanup() -> "defer.Deferred[None]":
        if daemon.process is not None and daemon.process.running:
            return daemon.terminate()
        return defer.succeed(None)

    test.addCleanup(cleanup)
    d = daemon.start(registered)

    def explain(failure: Any) -> Any:
        failure.value.args = (*failure.value.args, daemon.log_text()[-3000:])
        return failure

    return d.addCallbacks(lambda _: daemon, explain)


def msrpc_argv() -> list[str]:
    """How to run the installed ``msrpc`` command."""
    script = BIN / "msrpc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "msrpc.cli"]


def msrpc_cli(reactor: Any, *args: str, env: Optional[dict[str, str]] = None,
              cwd: Optional[Path] = None) -> "defer.Deferred[tuple[str, str, int]]":
    """Run the installed ``msrpc`` command: (stdout, stderr, exit code)."""
    argv = msrpc_argv()
    d = utils.getProcessOutputAndValue(argv[0], argv[1:] + list(args), env=child_env(env),
                                       path=str(cwd) if cwd else None, reactor=reactor)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


def ls_entries(output: str) -> list[tuple[str, str]]:
    """``msrpc ls`` output → one (service, address) per instance line, in order."""
    return [(fields[0], fields[1]) for fields in
            (line.split("\t") for line in output.splitlines())]
