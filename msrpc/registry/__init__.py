"""Service registries: the ``IRegistry`` contract and its backends."""

from msrpc.registry.instance import ServiceInstance, parse_address
from msrpc.registry.interface import (
    IRegistration, IRegistry, IServiceCatalog, IWatch, WatchCallback,
)
from msrpc.registry.registration import CallbackWatch, Registration

__all__ = [
    "ServiceInstance", "parse_address", "IRegistration", "IRegistry", "IServiceCatalog", "IWatch",
    "WatchCallback", "Registration", "CallbackWatch",
]
