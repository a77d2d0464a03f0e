"""
Per-call auth tokens, read from files or the environment, never from the command line
(where any user of the machine could read them in the process list).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

TOKENS_ENV = "MSRPC_TOKENS"   # server: accepted tokens, comma-separated
TOKEN_ENV = "MSRPC_TOKEN"     # client: the token to send


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read token file {path}: {e.strerror}") from None


def accepted_tokens(path: Optional[str] = None,
                    environ: Mapping[str, str] = os.environ) -> list[str]:
    """A server's accepted tokens: one per line of ``path`` ('#' starts a comment), plus the
    comma-separated ``MSRPC_TOKENS``.  Empty means no token is required."""
    tokens: list[str] = []
    if path:
        for line in _read(path).splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.append(line)
    tokens.extend(t.strip() for t in environ.get(TOKENS_ENV, "").split(",") if t.strip())
    return tokens


def client_token(path: Optional[str] = None,
                 environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The token a client sends: the first line of ``path``, else ``MSRPC_TOKEN``."""
    if path:
        first = _read(path).strip().splitlines()
        return first[0].strip() if first else None
    return environ.get(TOKEN_ENV) or None
