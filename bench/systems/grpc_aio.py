"""
grpc_aio: grpcio's asyncio API, one unary-unary method with msgpack as the
(de)serializers, registered the way grpcio-tools' generated code does it.

The client runs C{concurrency} asyncio tasks, each awaiting one call after the
other, on one channel (one HTTP/2 connection).
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Callable

import grpc
import msgpack

from bench.stats import Recorder
from bench.workload import is_echo, request

SERVICE = "bench.Echo"
#: grpc's default largest received message is 4 MiB.
MAX_PAYLOAD = 4_000_000
METHOD = f"/{SERVICE}/Echo"


async def _echo(obj: Any, context: grpc.aio.ServicerContext) -> Any:
    return obj


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(
            _echo,
            request_deserializer=msgpack.unpackb,
            response_serializer=msgpack.packb,
        )
    }


async def _serve(host: str, port: int, ready: Callable[[int], None]) -> None:
    server = grpc.aio.server()
    handlers = _handlers()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    server.add_registered_method_handlers(SERVICE, handlers)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    ready(bound)
    await server.wait_for_termination()


def serve(host: str, port: int, ready: Callable[[int], None]) -> None:
    asyncio.run(_serve(host, port, ready))


async def _slot(echo: Any, rec: Recorder) -> None:
    while (i := rec.next_call()) is not None:
        t0 = perf_counter()
        try:
            reply = await echo(request(i))
        except grpc.RpcError as e:
            rec.failed(e)
            return
        t1 = perf_counter()
        if not is_echo(reply, i):
            rec.failed(f"call {i}: not an echo: {reply!r}")
            return
        if not rec.completed(t0, t1):
            return


async def _load(host: str, port: int, rec: Recorder, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        await channel.channel_ready()
        echo = channel.unary_unary(
            METHOD,
            request_serializer=msgpack.packb,
            response_deserializer=msgpack.unpackb,
            _registered_method=True,
        )
        rec.start()
        await asyncio.gather(*(_slot(echo, rec) for _ in range(concurrency)))


def load(host: str, port: int, rec: Recorder, concurrency: int) -> None:
    asyncio.run(_load(host, port, rec, concurrency))
