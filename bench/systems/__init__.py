"""
The systems under test, one module each: C{bench/systems/<name>.py}.

Every module exposes two entry points, each run in its own process by
C{bench.worker}::

    def serve(host: str, port: int, ready: Callable[[int], None]) -> None:
        '''Serve the echo workload on host:port (0: any free port) until the
        process is killed; call ready(bound_port) once accepting.'''

    def load(host: str, port: int, rec: bench.stats.Recorder,
             concurrency: int) -> None:
        '''Open ONE connection to host:port, call rec.start(), then keep
        `concurrency` echo calls in flight, accounted through rec, until rec
        says stop; return when all calls have completed.'''

Twisted-based systems write only C{listen} and C{connect} and get both entry
points from L{bench.twisted_harness.entry_points}.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Run order within a round, and the default selection.  The first is the
# baseline the others are compared with.
DEFAULT = ("baseline", "msrpc", "msrpc_metrics", "msrpc_tracing", "amp", "grpc_aio")


def load_system(name: str) -> ModuleType:
    """
    Import C{bench.systems.<name>}.
    """
    if not name.isidentifier():
        raise ValueError(f"bad system name {name!r}")
    return importlib.import_module(f"bench.systems.{name}")
