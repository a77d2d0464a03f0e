# An msrpc server as a .tac file:   twistd -ny tac/server.tac
#
# Serves the demo services (echo, arith) on 127.0.0.1:9112, registers them in the local
# registry (one SQLite file shared by this machine's processes), and stops gracefully:
# deregister, wait the grace period, stop accepting, drain in-flight calls, close.
# Then, from another shell:   msrpc call arith.add 1 2
#
# Environment (a .tac file takes no options):
#   MSRPC_LISTEN            endpoint to listen on (default tcp:9112:interface=127.0.0.1;
#                           tcp:0:interface=127.0.0.1 lets the OS pick a free port)
#   MSRPC_LOCAL_REGISTRY    the registry file (default $XDG_STATE_HOME/msrpc/registry.sqlite3)

import os

from twisted.application import service
from twisted.internet import reactor

from msrpc.demo import default_services
from msrpc.registry.local import LocalRegistry
from msrpc.server import Server
from msrpc.stopping import SecondSignal, SequentialMultiService
from msrpc.tap import Closing

application = service.Application("msrpc-demo")
# Stopped one after the other, last added first: the server drains, then the registry
# closes.  A second SIGTERM or Ctrl-C cuts the drain short.
parts = SequentialMultiService()
parts.setServiceParent(application)

registry = LocalRegistry(reactor)
Closing("registry", registry.close).setServiceParent(parts)

server = Server(reactor, os.environ.get("MSRPC_LISTEN", "tcp:9112:interface=127.0.0.1"),
                registry=registry, services=default_services(reactor), grace=1.0)
server.setServiceParent(parts)
SecondSignal(reactor, server.hurry).setServiceParent(parts)
