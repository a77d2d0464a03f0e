"""
msgo's two messages, with the exact Go field names and types gob puts on the wire, and
the serializer-0 codec a client connection uses to send one and read the other.

    type MsRpcRequest struct { RequestId int64; ServiceName string; MethodName string;
                               Args []any }
    type MsRpcResponse struct { RequestId int64; Code int16; Msg string;
                                CompressType byte; SerializeType byte; Data any }

``Args`` and ``Data`` are Go interface values: each carries its Go type's registered name
(``"int"``, ``"int64"``, ``"*model.Goods"``...), and msgo calls methods with them as they
are, so a Python value must go as exactly the Go type the method takes (see
:mod:`msrpc.gob.types`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msrpc import gob
from msrpc.codec import DEFAULT_LIMITS, Limits
from msrpc.errors import DecodeError, EncodeError
from msrpc.gob import Int16, Int64, Uint8
from msrpc.wire import Serializer

#: Wire serializer id of gob.
GOB = int(Serializer.GOB)


@dataclass
class MsRpcRequest:
    RequestId: Int64 = Int64(0)
    ServiceName: str = ""
    MethodName: str = ""
    Args: list[Any] = field(default_factory=list)


@dataclass
class MsRpcResponse:
    RequestId: Int64 = Int64(0)
    Code: Int16 = Int16(0)
    Msg: str = ""
    CompressType: Uint8 = Uint8(0)
    SerializeType: Uint8 = Uint8(0)
    Data: Any = None


class MsgoClientCodec:
    """
    Serializer 0 of a client's msgo connection: msrpc's request body (service, method,
    args) goes out as an ``MsRpcRequest``, and an ``MsRpcResponse`` comes back as
    msrpc's response body (code, msg, data).  msgo has no keyword arguments and no
    metadata (deadline, token): the call's deadline is kept by the client alone.
    """

    serializer = GOB
    name = "gob"

    def __init__(self, registry: gob.GobRegistry = gob.default_registry,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.limits = limits
        self._response = registry.struct_for(MsRpcResponse)

    def encode(self, body: Any) -> bytes:
        if body.get("kwargs"):
            raise EncodeError("msgo methods take positional arguments only (no kwargs)")
        # A one-call connection: the request id is 1, as in the frame header.
        request = MsRpcRequest(Int64(1), body["service"], body["method"], list(body["args"]))
        return gob.encode(request, registry=self.registry, limits=self.limits)

    def decode(self, data: bytes) -> Any:
        response = gob.decode(data, self._response, registry=self.registry,
                              limits=self.limits)
        if not response.Code:
            # Gob matches structs by field name: any struct sharing one field with
            # MsRpcResponse decodes as one, with no code.
            raise DecodeError("the answer is not msgo's MsRpcResponse (it has no Code)")
        answer = {"code": int(response.Code), "msg": response.Msg, "data": response.Data}
        if answer["code"] == 500:
            answer["details"] = {"type": "error"}  # a Go error value: its text is all
        return answer
