"""
A service for the ``--workers`` tests: it says which worker process answered, takes its
time when asked (calls in flight during a stop), and crashes its process on request.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import deferLater


class Worker:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def pid(self) -> int:
        return os.getpid()

    def slow(self, seconds: float) -> Any:
        """The serving pid, after ``seconds``."""
        return deferLater(self.reactor, seconds, os.getpid)

    def crash(self) -> None:
        """End this process at once, as a crash would (no reply, no cleanup)."""
        self.reactor.callLater(0, os._exit, 3)
