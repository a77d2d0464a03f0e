"""The ``twistd msrpc`` plugin: nothing but a pointer at ``msrpc.tap``."""

from twisted.application.service import ServiceMaker

msrpc = ServiceMaker(
    "msrpc",
    "msrpc.tap",
    "An msrpc server: serves services, registers them, resolves the ones it calls.",
    "msrpc",
)
