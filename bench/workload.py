"""
The workload every system runs: echo of one small dict, or of a payload.

Per call the client encodes the request and decodes the reply, and the server
decodes the request into Python objects and encodes the reply, with msgpack in
every system; only the framing and the RPC machinery around it differ.

With a payload configured (``bench.run --payload``), each request carries the
same prebuilt ``bytes`` or ``str`` of the given size next to its id, and the
client checks the echo byte for byte.  The payload is text-like (words from a
small vocabulary), so gzip and zstd shrink it about as much as they would
shrink JSON or logs; random bytes would make compression pure cost.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Callable, Union

HOST = "127.0.0.1"
COMPRESSIONS = ("none", "gzip", "zstd")
#: Bodies smaller than this travel uncompressed (msrpc's default threshold).
COMPRESSION_THRESHOLD = 4096

Payload = Union[bytes, str]

_payload: Payload | None = None
_compression = "none"
#: Servers bind with SO_REUSEPORT, so that several processes serve one port
#: (``bench.workers``); set by the worker.
REUSE_PORT = False
#: Environment variable: KiB a server hashes per call (``bench.workers --work-kib``).
WORK_ENV = "BENCH_WORK_KIB"

_WORDS = (
    "service instance registry lease watch balance deadline retry frame header body "
    "request response error timeout connection server client call method value id name "
    "status ok failed pending 0 1 2 3 4 5 6 7 8 9 alpha beta gamma delta host port"
).split()


def parse_size(text: str) -> int:
    """``"1k"`` / ``"64KiB"`` / ``"1m"`` / ``"512"`` → bytes (powers of 1024)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    size = int(float(number) * scale)
    if size < 1:
        raise ValueError(f"payload size must be at least 1 byte, got {text!r}")
    return size


def size_label(size: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def make_payload(size: int, kind: str = "bytes") -> Payload:
    """``size`` bytes of text-like ASCII (the same for a given size), as bytes or str."""
    rng = random.Random(size)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    text = " ".join(words)[:size]
    if kind == "bytes":
        return text.encode("ascii")
    if kind == "str":
        return text
    raise ValueError(f"payload kind must be bytes or str, got {kind!r}")


def configure(size: int | None = None, kind: str = "bytes",
              compression: str = "none") -> None:
    """Set this process's workload (the worker calls it before the system runs)."""
    global _payload, _compression
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    _payload = make_payload(size, kind) if size else None
    _compression = compression


def payload() -> Payload | None:
    return _payload


def compression() -> str:
    """The compression the systems should use for bodies >= COMPRESSION_THRESHOLD."""
    return _compression


def request(i: int) -> dict[str, Any]:
    """
    The request of call number C{i}: a fresh dict per call.
    """
    if _payload is None:
        return {"id": i, "name": "msrpc", "tags": ["a", "b"], "value": 3.14}
    return {"id": i, "payload": _payload}


def is_echo(reply: Any, i: int) -> bool:
    """
    A cheap check that C{reply} is the echo of call C{i}'s request (the payload, when
    there is one, compared whole: a framing bug must not pass as speed).
    """
    return type(reply) is dict and reply.get("id") == i and (
        _payload is None or reply.get("payload") == _payload)


def work_kib() -> int:
    """KiB of SHA-256 each server handler computes per call (0: none), so that servers
    rather than the clients sharing their machine are the bottleneck."""
    return int(os.environ.get(WORK_ENV, "0") or 0)


def worker(kib: int) -> Callable[[], bytes]:
    """The fixed work of one call: SHA-256 over ``kib`` KiB (about 2 to 4 µs a KiB)."""
    data = b"w" * (kib * 1024)
    return lambda: hashlib.sha256(data).digest()
