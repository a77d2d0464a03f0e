"""``twistd --reactor=uvloop``: nothing but a pointer at ``msrpc.uvloopreactor``."""

from twisted.application.reactors import Reactor

uvloop = Reactor("uvloop", "msrpc.uvloopreactor",
                 "asyncio reactor on uvloop (pip install msrpc[uvloop])")
