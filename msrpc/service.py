"""
Turning plain service objects into callable RPC methods.

Any public callable attribute of a service object is a method.  ``@expose`` renames a
method or marks it idempotent; ``@hidden`` keeps a public method off the wire.  Argument
annotations are checked cheaply on every call (precomputed ``isinstance`` tests), so a
caller sending a ``str`` where an ``int`` is declared gets a 400, not a crash deep inside.
"""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import types
import typing
import uuid
from decimal import Decimal
from typing import Any, Callable, Optional, Sequence

from msrpc.limits import TokenBucket

_EXPOSE_ATTR = "__msrpc_expose__"
_HIDDEN_ATTR = "__msrpc_hidden__"

Checker = Callable[[Sequence[Any], dict], Optional[str]]


def expose(name: Optional[str] = None, *, idempotent: bool = False,
           blocking: Optional[bool] = None) -> Callable[[Any], Any]:
    """
    Publish a method under ``name``, declare it idempotent (safe to retry), and/or say
    whether it blocks: ``blocking=True`` runs it on the server's handler threads
    (``msrpc.threads``), ``False`` on the reactor even when the server's default is to
    run plain handlers on threads; None follows that default.
    """

    def mark(fn: Any) -> Any:
        setattr(fn, _EXPOSE_ATTR, {"name": name, "idempotent": idempotent,
                                   "blocking": blocking})
        return fn

    return mark


def hidden(fn: Any) -> Any:
    """Keep a public method of a service object off the wire."""
    setattr(fn, _HIDDEN_ATTR, True)
    return fn


class Method:
    """One callable RPC method and what is checked before calling it."""

    __slots__ = ("service", "name", "fn", "checker", "limiter", "idempotent", "blocking",
                 "tally")

    def __init__(self, service: str, name: str, fn: Callable[..., Any],
                 idempotent: bool = False, check_types: bool = True,
                 blocking: bool = False) -> None:
        self.service = service
        self.name = name
        self.fn = fn
        self.idempotent = idempotent
        #: Called on a handler thread (an execution policy, like ``limiter``).
        self.blocking = blocking
        self.checker: Optional[Checker] = make_checker(fn) if check_types else None
        self.limiter: Optional[TokenBucket] = None
        #: Where the server counts this method's calls (``msrpc.observe.Tally``), when
        #: it counts them (metrics): found once, not per call.
        self.tally: Any = None

    def __repr__(self) -> str:
        return f"<Method {self.service}.{self.name}>"


def methods_of(service: str, obj: Any, check_types: bool = True,
               blocking: bool = False) -> dict[str, Method]:
    """The RPC methods a service object offers, by wire name.  ``blocking`` is the default
    for plain (non-``async``) handlers that do not say with ``@expose(blocking=...)``."""
    found: dict[str, Method] = {}
    for attr_name in dir(obj):
        if attr_name.startswith("_"):
            continue
        try:
            fn = getattr(obj, attr_name)
        except AttributeError:
            continue
        if not callable(fn) or isinstance(fn, type) or getattr(fn, _HIDDEN_ATTR, False):
            continue
        marks = getattr(fn, _EXPOSE_ATTR, None) or {}
        wire_name = marks.get("name") or attr_name
        is_async = inspect.iscoroutinefunction(fn)
        runs_on_thread = marks.get("blocking")
        if runs_on_thread is None:
            runs_on_thread = blocking and not is_async
        elif runs_on_thread and is_async:
            raise ValueError(f"{service}.{wire_name} is async def: it runs on the reactor "
                             "and cannot be blocking=True")
        found[wire_name] = Method(service, wire_name, fn, bool(marks.get("idempotent")),
                                  check_types, bool(runs_on_thread))
    return found


# --------------------------------------------------------------------------- annotations

_SIMPLE: dict[Any, tuple[type, ...]] = {
    int: (int,), float: (float, int), complex: (complex, float, int), str: (str,),
    bytes: (bytes,), bool: (bool,), list: (list,), dict: (dict,), tuple: (tuple,),
    set: (set,), frozenset: (frozenset,), dt.datetime: (dt.datetime,), dt.date: (dt.date,),
    dt.time: (dt.time,), dt.timedelta: (dt.timedelta,), uuid.UUID: (uuid.UUID,),
    Decimal: (Decimal,), type(None): (type(None),),
}


_NUMBERS_AND_TEXT = (int, float, complex, str, bytes)


def _accepted(hint: Any) -> Optional[tuple[type, ...]]:
    """The runtime types a hint allows, or None when it cannot be checked cheaply."""
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _accepted(typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        accepted: list[type] = []
        for arg in typing.get_args(hint):
            one = _accepted(arg)
            if one is None:
                return None
            accepted.extend(one)
        return tuple(accepted)
    if origin in _SIMPLE:
        return _SIMPLE[origin]
    if isinstance(hint, type) and not issubclass(hint, enum.Enum):
        for base in _NUMBERS_AND_TEXT:
            if issubclass(hint, base):
                # A subclass (msrpc.gob.Int64...) travels as its base over msgpack and
                # JSON: the base is what arrives.
                return _SIMPLE[base]
    if isinstance(hint, type) and hint.__module__ not in ("typing", "builtins"):
        return (hint,)  # dataclasses, attrs classes, enums: arrive as that class
    return None


def make_checker(fn: Callable[..., Any]) -> Optional[Checker]:
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        return None
    checks: list[tuple[int, str, tuple[type, ...], str]] = []
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            break
        hint = hints.get(param.name)
        accepted = _accepted(hint) if hint is not None else None
        if accepted is None:
            continue
        position = index if param.kind != param.KEYWORD_ONLY else 1 << 30
        checks.append((position, param.name, accepted, _describe(hint)))
    if not checks:
        return None

    def check(args: Sequence[Any], kwargs: dict) -> Optional[str]:
        n = len(args)
        for position, name, accepted, wanted in checks:
            if position < n:
                value = args[position]
            elif name in kwargs:
                value = kwargs[name]
            else:
                continue
            if not isinstance(value, accepted) or (
                    accepted[0] is int and value.__class__ is bool and bool not in accepted):
                return (f"argument {name!r} must be {wanted}, "
                        f"got {type(value).__name__}")
        return None

    return check


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
