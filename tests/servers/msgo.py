"""
A real Go msgo peer for the interop tests: ``tests/msgo_peer`` (standard library only),
built once per source version into ``.cache/`` with the machine's Go, offline
(``GOPROXY=off``), and run as a server (``serve``) or a client (``call``, ``bench``...).
Without Go the tests skip locally and fail under CI.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from tests.servers import REPO_ROOT, server_unavailable, wait_for
from tests.servers.process import LoggedProcess

PEER_SOURCE = REPO_ROOT / "tests" / "msgo_peer"
BUILD_DIR = REPO_ROOT / ".cache" / "msgo-peer"
_SERVING = re.compile(r"^serving on (\S+)$", re.M)


def go_command() -> str:
    """The ``go`` command: on the PATH, or where the Go tarball installs it, new enough for
    the peer's go.mod (an older Go would fail the build with less telling errors)."""
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    if found is None:
        server_unavailable("Go is not installed (run scripts/install-go)")
    have, need = _go_version(found), _needed_go_version()
    if have is None or have < need:
        server_unavailable(f"{found} is {'.'.join(map(str, have or ())) or 'unusable'}, older "
                           f"than the Go {'.'.join(map(str, need))} {PEER_SOURCE.name}/go.mod "
                           f"names (run scripts/install-go)")
    return found


_VERSION = re.compile(r"\bgo(\d+)\.(\d+)")


def _needed_go_version() -> tuple[int, ...]:
    match = re.search(r"^go (\d+)\.(\d+)", (PEER_SOURCE / "go.mod").read_text(), re.M)
    assert match is not None, "tests/msgo_peer/go.mod names no Go version"
    return tuple(map(int, match.groups()))


@functools.lru_cache(maxsize=None)
def _go_version(go: str) -> Optional[tuple[int, ...]]:
    """(1, 22) from ``go version go1.22.3 linux/amd64``; None if it does not run."""
    try:
        out = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30,
                             env=go_env()).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return tuple(map(int, match.groups())) if match else None


def go_env() -> dict[str, str]:
    """Build offline and keep Go's caches in .cache/, whatever the machine's HOME."""
    cache = REPO_ROOT / ".cache"
    return {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0", "GOCACHE": str(cache / "go-build"),
            "GOPATH": str(cache / "gopath")}


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PEER_SOURCE.rglob("*")):
        if path.is_file() and path.suffix in (".go", ".mod"):
            digest.update(str(path.relative_to(PEER_SOURCE)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def require_go() -> None:
    """Skip (or fail under CI) when Go is missing; call it in ``setUp``."""
    go_command()


_binary: Optional[Path] = None


def peer_binary(reactor: Any) -> "defer.Deferred[Path]":
    """The built peer (built on first use in this process, unless already in .cache/)."""
    async def binary() -> Path:
        global _binary
        if _binary is None or not _binary.exists():
            _binary = await _build(reactor)
        return _binary

    return defer.Deferred.fromCoroutine(binary())


async def _build(reactor: Any) -> Path:
    go = go_command()
    target = BUILD_DIR / f"msgo-peer-{_source_digest()}"
    if target.exists():
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    out, err, code = await utils.getProcessOutputAndValue(
        go, ["build", "-o", str(partial), "."], env=go_env(), path=str(PEER_SOURCE),
        reactor=reactor)
    if code != 0:
        raise RuntimeError(f"go build of {PEER_SOURCE} failed ({code}):\n"
                           f"{(out + err).decode(errors='replace')}")
    partial.replace(target)
    return target


async def peer_cli(reactor: Any, *args: str) -> tuple[str, str, int]:
    """Run the peer as a command: (stdout, stderr, exit code)."""
    binary = await peer_binary(reactor)
    out, err, code = await utils.getProcessOutputAndValue(
        str(binary), list(args), env=dict(os.environ), reactor=reactor)
    return out.decode(errors="replace"), err.decode(errors="replace"), code


class MsgoPeerServer:
    """``msgo-peer serve``: services calc and goods, msgo's way, logging to a file."""

    def __init__(self, reactor: Any, workdir: Path, args: Sequence[str],
                 name: str = "msgo-peer") -> None:
        self.reactor = reactor
        self.args = list(args)
        self.log_path = workdir / f"{name}.log"
        self.process: Optional[LoggedProcess] = None
        self.address = ""

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    async def start(self, registered: int = 0, timeout: float = 30.0) -> None:
        binary = await peer_binary(self.reactor)
        self.process = LoggedProcess(self.reactor, [str(binary), "serve", *self.args,
                                                    "127.0.0.1:0"], self.log_path)

        def ready() -> bool:
            text = self.log_text()
            if self.process is None or not self.process.running:
                raise RuntimeError(f"msgo-peer exited:\n{text[-3000:]}")
            match = _SERVING.search(text)
            if match is None or text.count("\nregistered ") < registered:
                return False
            self.address = match.group(1)
            return True

        await wait_for(self.reactor, ready, timeout, f"msgo-peer ({self.log_path})")

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    async def stop(self) -> None:
        """SIGTERM: it deregisters, then exits."""
        if self.process is not None and self.process.running:
            await self.process.terminate(self.reactor, 10.0)


def start_peer_server(test: TestCase, reactor: Any, workdir: Path, args: Sequence[str],
                      registered: int = 0, name: str = "msgo-peer"
                      ) -> "defer.Deferred[MsgoPeerServer]":
    """Start a Go msgo server stopped after the test (its log added to a failure)."""
    server = MsgoPeerServer(reactor, workdir, args, name)
    test.addCleanup(lambda: defer.Deferred.fromCoroutine(server.stop()))

    async def start() -> MsgoPeerServer:
        try:
            await server.start(registered)
        except Exception as e:
            e.args = (*e.args, server.log_text()[-3000:])
            raise
        return server

    return defer.Deferred.fromCoroutine(start())
