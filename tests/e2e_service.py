"""
A user service for the end-to-end tests, served by a real ``twistd msrpc`` with
``--service whoami=tests.e2e_service:Whoami``: it says which process answered, greets,
fails on request, and sends large replies on request.
"""

from __future__ import annotations

import os

from msrpc.service import expose


class Whoami:
    @expose(idempotent=True)
    def pid(self) -> int:
        """The id of the serving process, so a caller can tell instances apart."""
        return os.getpid()

    def greet(self, name: str) -> str:
        return f"hello, {name}"

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def blob(self, size: int) -> bytes:
        """``size`` bytes: a small request with a large reply (back-pressure tests)."""
        return b"x" * size
