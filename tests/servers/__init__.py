"""
Real servers (etcd, Nacos) for the integration tests.

Each server module finds its installed binaries (see ``scripts/install-servers``), starts
them on loopback free ports with temporary data directories, waits until they answer, and
stops them afterwards.  Nothing here sleeps: readiness is polled with ``deferLater`` on the
running reactor so trial and pytest-twisted tests can simply return the Deferred.
"""

from __future__ import annotations

import functools
import os
import socket
import unittest
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, NoReturn, TypeVar, Union

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVERS_DIR = Path(os.environ.get("MSRPC_SERVERS_DIR", REPO_ROOT / ".servers"))


def under_ci() -> bool:
    """CI must never silently skip an integration test."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_unavailable(reason: str) -> NoReturn:
    """Skip locally when a server is not installed; fail under CI, where it must be."""
    if under_ci():
        raise AssertionError(f"integration server unavailable under CI: {reason}")
    raise unittest.SkipTest(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Several distinct free ports, all held open while choosing so none repeats."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


Check = Callable[[], Union[bool, Awaitable[bool]]]


def wait_for(reactor: IReactorTime, check: Check, timeout: float, what: str,
             interval: float = 0.05) -> defer.Deferred[None]:
    """Poll ``check`` (sync or async) on the reactor until it is true, or fail after ``timeout``."""

    async def poll() -> None:
        deadline = reactor.seconds() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
            except Exception as e:  # a server that is still starting refuses or resets
                last_error = e
            if reactor.seconds() >= deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.1f}s"
                                   + (f" (last error: {last_error!r})" if last_error else ""))
            await task.deferLater(reactor, interval, lambda: None)

    return defer.Deferred.fromCoroutine(poll())


T = TypeVar("T")


def run(test: Callable[[T], Coroutine[Any, Any, Any]]) -> Callable[[T], defer.Deferred[Any]]:
    """Let an ``async def`` test method run under trial and pytest alike."""

    @functools.wraps(test)
    def wrapper(self: T) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(test(self))

    return wrapper
