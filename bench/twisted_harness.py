"""
The shared server runner and load generator of every Twisted-based system.

A Twisted system module only says how to listen and how to connect::

    def listen(reactor, host, port) -> Deferred[int]        # the bound port
    def connect(reactor, host, port) -> Deferred[Call]      # Call: obj -> Deferred[reply]

    serve, load = twisted_harness.entry_points(listen, connect)

The load generator keeps C{concurrency} calls in flight on the one connection
C{connect} made (or spread over C{connections} of them): each completion
issues the next call from its callback.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from bench.stats import Recorder
from bench.workload import is_echo, request

Call = Callable[[Any], Deferred]
Listen = Callable[[Any, str, int], Deferred]
Connect = Callable[[Any, str, int], Deferred]


class _Slots:
    """
    C{concurrency} independent call chains, spread over the connections'
    C{calls}; fires C{done} when all stopped.
    """

    def __init__(self, calls: list[Call], rec: Recorder, concurrency: int) -> None:
        self.rec = rec
        self.active = concurrency
        self.done: Deferred[None] = Deferred()
        for slot in range(concurrency):
            self.issue(calls[slot % len(calls)])

    def issue(self, call: Call) -> None:
        i = self.rec.next_call()
        if i is None:
            self.stopped()
            return
        t0 = perf_counter()
        call(request(i)).addCallbacks(
            self.succeeded, self.failed, callbackArgs=(i, t0, call)
        )

    def succeeded(self, reply: Any, i: int, t0: float, call: Call) -> None:
        t1 = perf_counter()
        if not is_echo(reply, i):
            self.rec.failed(f"call {i}: not an echo: {reply!r}")
            self.stopped()
        elif self.rec.completed(t0, t1):
            self.issue(call)
        else:
            self.stopped()

    def failed(self, reason: Failure) -> None:
        self.rec.failed(reason.value)
        self.stopped()

    def stopped(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.done.callback(None)


def _run(reactor: Any, main: Callable[[], Deferred]) -> None:
    """
    Run the reactor until C{main()} fires; re-raise its failure, if any.
    """
    outcome: list[Any] = []

    def finish(result: Any) -> None:
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    def begin() -> None:
        main().addBoth(finish)

    reactor.callWhenRunning(begin)
    reactor.run()
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()


def entry_points(
    listen: Listen, connect: Connect
) -> tuple[Callable[[str, int, Callable[[int], None]], None], Callable[..., None]]:
    """
    Build the C{serve} and C{load} entry points of a Twisted system.
    """

    def serve(host: str, port: int, ready: Callable[[int], None]) -> None:
        from twisted.internet import reactor

        async def main() -> None:
            bound = await listen(reactor, host, port)
            ready(bound)
            await Deferred()  # until the process is stopped

        _run(reactor, lambda: ensureDeferred(main()))

    def load(host: str, port: int, rec: Recorder, concurrency: int,
             connections: int = 1) -> None:
        from twisted.internet import reactor

        async def main() -> None:
            calls = [await connect(reactor, host, port) for _ in range(connections)]
            rec.start()
            await _Slots(calls, rec, concurrency).done

        _run(reactor, lambda: ensureDeferred(main()))

    return serve, load
