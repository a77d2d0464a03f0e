"""
The workload every system runs: echo of one small dict.

Per call the client encodes the request and decodes the reply, and the server
decodes the request into Python objects and encodes the reply, with msgpack in
every system; only the framing and the RPC machinery around it differ.
"""

from __future__ import annotations

from typing import Any

HOST = "127.0.0.1"


def request(i: int) -> dict[str, Any]:
    """
    The request of call number C{i}: a fresh dict per call.
    """
    return {"id": i, "name": "msrpc", "tags": ["a", "b"], "value": 3.14}


def is_echo(reply: Any, i: int) -> bool:
    """
    A cheap check that C{reply} is the echo of call C{i}'s request.
    """
    return type(reply) is dict and reply.get("id") == i
