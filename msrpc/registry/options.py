"""
Registry selection shared by ``twistd msrpc`` and the ``msrpc`` CLI.

Each backend module exposes ``OPTIONS`` (``usage.Options`` optParameters rows) and
``from_options(reactor, options) -> IRegistry``; this module only collects them.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from twisted.python import usage

from msrpc.registry.interface import IRegistry

#: backend name → module implementing it.
BACKENDS: dict[str, str] = {
    "etcd": "msrpc.registry.etcd",
    "local": "msrpc.registry.local",
    "nacos": "msrpc.registry.nacos",
    "static": "msrpc.registry.static",
}

DEFAULT_BACKEND = "local"


def backend_module(name: str) -> Any:
    try:
        module_name = BACKENDS[name]
    except KeyError:
        raise usage.UsageError(
            f"unknown registry {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(module_name)


def registry_parameters() -> list[list[Any]]:
    """``--registry`` plus every backend's own options, for an Options class."""
    rows: list[list[Any]] = [
        ["registry", "r", DEFAULT_BACKEND,
         f"Service registry backend: {', '.join(sorted(BACKENDS))}."],
    ]
    for name in BACKENDS:
        rows.extend(backend_module(name).OPTIONS)
    return rows


def check_registry_options(options: Mapping[str, Any]) -> None:
    """
    Refuse another backend's options (``--etcd URL`` while ``--registry`` is ``local``):
    they would be silently ignored and the process would quietly use the wrong registry.
    """
    chosen = options.get("registry") or DEFAULT_BACKEND
    backend_module(chosen)  # an unknown name is a usage error of its own
    for name in BACKENDS:
        if name == chosen:
            continue
        for row in backend_module(name).OPTIONS:
            option, default = row[0], row[2]
            if option in options and options[option] != default:
                raise usage.UsageError(f"--{option} is an option of the {name} registry, "
                                       f"but the registry is {chosen}: add --registry "
                                       f"{name}, or drop --{option}")


def make_registry(reactor: Any, options: Mapping[str, Any]) -> IRegistry:
    """Build the registry the options name."""
    module = backend_module(options.get("registry") or DEFAULT_BACKEND)
    return module.from_options(reactor, options)
