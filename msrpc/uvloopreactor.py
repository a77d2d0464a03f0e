"""
``twistd --reactor=uvloop``: Twisted's asyncio reactor on a uvloop event loop (the
``uvloop`` extra: ``pip install msrpc[uvloop]``).  Registered as a reactor plugin in
``twisted/plugins/msrpc_reactors.py``; like ``twisted.internet.asyncioreactor``, this module
only installs.
"""

from __future__ import annotations


def install() -> None:
    """Install an ``AsyncioSelectorReactor`` on a new uvloop loop as the reactor."""
    import asyncio

    import uvloop
    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
