"""
Serving Go msgo clients on an msrpc server's own port.

A request frame whose serializer is 0 (gob) comes from a msgo client.  The dispatcher
serves it like any other request (the same admission, limits, checks and handler call)
through a :class:`MsgoRequest`: a view of the connection that reads ``MsRpcRequest``
(gzip, gob) and answers ``MsRpcResponse`` the same way, then closes the connection, as
msgo's one-request-per-connection exchange expects.

msgo passes arguments as the Go types its caller chose and expects results as the Go
types its caller asserts, so both follow the handler's annotations::

    class Goods:
        def Find(self, id: gob.Int64) -> Result:        # Go: Find(int64) *model.Result
            ...

An argument arrives as the annotated value class (``Int64``...), tuple or set; a result
goes as the return annotation's Go type (``-> gob.Int64``, ``-> list[str]``, a class
registered with :func:`msrpc.gob.register`), else as its Python value's default Go type.
Codes are msrpc's (200, 400, 404, 500, 503, 700...); ``Msg`` carries the message.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from msrpc import compress, gob
from msrpc.codec import DEFAULT_LIMITS, Limits
from msrpc.errors import DecodeError, EncodeError
from msrpc.gob import GobRegistry, GoType, Int16, Int64, default_registry, go_type, typed
from msrpc.gob.types import INTERFACE, _GoComplex, _GoFloat, _GoInt
from msrpc.msgo.messages import GOB, MsRpcRequest, MsRpcResponse
from msrpc.wire import RESPONSE, Serializer, encode_frame

if TYPE_CHECKING:
    import msrpc.server
    from msrpc.protocol import RpcProtocol
    from msrpc.service import Method

Converter = Callable[[Any], Any]
_GZIP = compress.GZIP
_NUMBER_CLASSES = (_GoInt, _GoFloat, _GoComplex)
_AWAITABLES = (Deferred, typing.Awaitable, typing.Coroutine)


class MethodTypes:
    """What a handler's annotations say to a msgo caller: how to convert each positional
    argument, and the Go type of the result."""

    def __init__(self, converters: Sequence[Optional[Converter]],
                 result: Optional[GoType]) -> None:
        self.converters = tuple(converters)
        self.result = result

    @classmethod
    def of(cls, fn: Callable[..., Any], registry: GobRegistry) -> "MethodTypes":
        try:
            signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:
            return cls((), None)
        converters = []
        for param in signature.parameters.values():
            if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                break
            converters.append(_converter(param.name, hints.get(param.name)))
        return cls(converters, _result_type(hints.get("return", None), registry))

    def arguments(self, args: list[Any]) -> list[Any]:
        converted = list(args)
        for index, convert in enumerate(self.converters[:len(args)]):
            if convert is not None:
                converted[index] = convert(args[index])
        return converted


def _unwrap(hint: Any) -> Any:
    """``Annotated[X, ...]`` and ``Optional[X]`` → ``X``."""
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif origin is typing.Union or origin is types.UnionType:
            rest = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(rest) != 1:
                return hint
            hint = rest[0]
        else:
            return hint


def _converter(name: str, hint: Any) -> Optional[Converter]:
    hint = _unwrap(hint)
    target = typing.get_origin(hint) or hint
    if isinstance(target, type) and issubclass(target, _NUMBER_CLASSES):
        base = next(b for b in (int, float, complex) if issubclass(target, b))

        def number(value: Any) -> Any:
            if not isinstance(value, base) or isinstance(value, bool):
                return value  # the argument check reports it
            try:
                return target(value)
            except OverflowError as e:
                raise DecodeError(f"argument {name!r}: {e}") from None

        return number
    if target in (tuple, set, frozenset):
        return lambda value: target(value) if isinstance(value, list) else value
    return None


def _result_type(hint: Any, registry: GobRegistry) -> Optional[GoType]:
    if hint is None or hint is type(None):
        return None
    hint = _unwrap(hint)
    if typing.get_origin(hint) in _AWAITABLES or hint in _AWAITABLES:
        arguments = typing.get_args(hint)
        hint = _unwrap(arguments[-1]) if arguments else None
        if hint is None or hint is type(None):
            return None
    try:
        found = go_type(hint, registry)
    except TypeError:
        return None
    return None if found is INTERFACE else found


class MsgoServer:
    """The msgo side of one ``Dispatcher``: per-method types, and a view per request."""

    log = Logger()

    def __init__(self, dispatcher: "msrpc.server.Dispatcher",
                 registry: GobRegistry = default_registry
                 ) -> None:
        self.dispatcher = dispatcher
        self.registry = registry
        self.request_type = registry.struct_for(MsRpcRequest)
        self._types: dict[tuple[str, str], MethodTypes] = {}

    def view(self, protocol: "RpcProtocol") -> "MsgoRequest":
        codec = protocol.settings.codecs.get(int(Serializer.MSGPACK))
        return MsgoRequest(self, protocol, getattr(codec, "limits", DEFAULT_LIMITS))

    def types(self, service: str, method: str) -> Optional[MethodTypes]:
        key = (service, method)
        found = self._types.get(key)
        if found is None:
            entry: Optional[Method] = self.dispatcher.methods.get(key)
            if entry is None:
                return None
            found = self._types[key] = MethodTypes.of(entry.fn, self.registry)
        return found


class MsgoRequest:
    """
    The dispatcher's view of a connection while it serves one msgo request: it decodes
    the ``MsRpcRequest`` into msrpc's request, and turns each reply into an
    ``MsRpcResponse`` frame (gob, gzip) after which the connection closes.
    """

    def __init__(self, server: MsgoServer, protocol: "RpcProtocol", limits: Limits) -> None:
        self.server = server
        self.protocol = protocol
        self.limits = limits
        self.settings = protocol.settings
        self.server_calls = protocol.server_calls
        self.peer = protocol.peer
        #: The dispatcher looks its codec up here; this view is it.
        self._codecs = {GOB: self}
        self.request_id = 0
        self.method_types: Optional[MethodTypes] = None

    @property
    def transport(self) -> Any:
        return self.protocol.transport

    # ------------------------------------------------------------------ in

    def decode_body(self, comp: int, ser: int, body: bytes) -> Any:
        return self.decode(compress.decompress(comp, body, self.settings.max_decompressed))

    def decode(self, body: bytes) -> Any:
        request = gob.decode(body, self.server.request_type, registry=self.server.registry,
                             limits=self.limits)
        self.request_id = int(request.RequestId)
        args = request.Args
        self.method_types = self.server.types(request.ServiceName, request.MethodName)
        if self.method_types is not None:
            args = self.method_types.arguments(args)
        return {"service": request.ServiceName, "method": request.MethodName, "args": args}

    # ------------------------------------------------------------------ out

    def reply_ok(self, rid: int, ser: int, codec: Any, data: Any) -> None:
        self.reply(rid, ser, 200, data)

    def refuse(self, rid: int, ser: int, code: int, data: Any = None, msg: str = "",
               details: Any = None) -> None:
        """A request refused before its handler ran (observed connections note why)."""
        note = getattr(self.protocol, "note_refusal", None)
        if note is not None:
            note(rid, code)
        self.reply(rid, ser, code, data, msg, details)

    def reply_counted(self, rid: int, ser: int, codec: Any, data: Any, tally: Any,
                      started: float, request: bytes) -> None:
        """A counted success: noted on the connection, which counts it when its
        response frame is written."""
        self.note_counted(rid, tally, started, len(request))
        self.reply(rid, ser, 200, data)

    def note_counted(self, rid: int, tally: Any, started: float, size: int) -> None:
        self.protocol.note_counted(rid, tally, started, size)

    def call_identified(self, rid: int, service: str, method: str, meta: Any,
                        started: float, size: int) -> None:
        self.protocol.call_identified(rid, service, method, meta, started, size)

    def call_cancelled(self, rid: int) -> None:
        self.protocol.call_cancelled(rid)

    def reply(self, rid: int, ser: int, code: int, data: Any = None, msg: str = "",
              details: Any = None) -> None:
        protocol = self.protocol
        if not protocol.connected:
            return
        result = self.method_types.result if self.method_types is not None else None
        if code == 200 and data is not None and result is not None:
            data = typed(data, result)
        try:
            body = self._encode(code, msg, data)
        except EncodeError as e:
            self.server.log.warn("answering a msgo client with 500: {error}", error=e)
            body = self._encode(500, f"result could not be encoded for Go: {e}", None)
        protocol.send_response_frame(rid, code, encode_frame(
            RESPONSE, _GZIP, GOB, rid, compress.compress(_GZIP, body)))
        # One request per connection, as msgo: close once this read's replies are out.
        clock = self.server.dispatcher.clock
        clock.callLater(0, protocol.close, clock)

    def _encode(self, code: int, msg: str, data: Any) -> bytes:
        response = MsRpcResponse(RequestId=Int64(self.request_id), Code=Int16(code), Msg=msg,
                                 Data=data)
        return gob.encode(response, registry=self.server.registry, limits=self.limits)
