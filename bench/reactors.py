"""
Reactors a benchmark process can run on: ``--systems msrpc@uvloop`` runs both the server and
the client of ``msrpc`` on that reactor (``bench.run``); the plain name runs on Twisted's
default (epoll on Linux).
"""

from __future__ import annotations

from typing import Callable


def _epoll() -> None:
    from twisted.internet import epollreactor

    epollreactor.install()


def _asyncio() -> None:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def _uvloop() -> None:
    from msrpc import uvloopreactor

    uvloopreactor.install()


INSTALLERS: dict[str, Callable[[], None]] = {
    "epoll": _epoll,
    "asyncio": _asyncio,
    "uvloop": _uvloop,
}


def split(name: str) -> tuple[str, str | None]:
    """``"msrpc@uvloop"`` → ``("msrpc", "uvloop")``; ``"msrpc"`` → ``("msrpc", None)``."""
    system, _, reactor = name.partition("@")
    return system, reactor or None


def install(reactor: str | None) -> None:
    """Install the named reactor (before anything imports ``twisted.internet.reactor``)."""
    if reactor is not None:
        INSTALLERS[reactor]()
