"""W3C trace context in request meta (msrpc.tracecontext), without a tracing library."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from msrpc import tracecontext
from msrpc.client import Client
from msrpc.observe import ICallContext
from msrpc.testing import MemoryNetwork
from msrpc.tracecontext import TraceContext, TraceContextPropagation

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class ParseTests(TestCase):
    def test_a_valid_traceparent_and_its_parts(self) -> None:
        context = TraceContext.parse(VALID, "congo=t61rcWkgMzE")
        assert context is not None
        self.assertEqual((context.trace_id, context.parent_id, context.sampled),
                         ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True))
        self.assertEqual(context.tracestate, "congo=t61rcWkgMzE")

    def test_invalid_traceparents_are_ignored(self) -> None:
        for bad in (None, 42, "", VALID.upper(), VALID[:-1], VALID + "-x",
                    "ff" + VALID[2:], "00-" + "0" * 32 + VALID[35:],
                    VALID[:36] + "0" * 16 + VALID[52:], VALID.replace("-", "_"),
                    VALID[:10] + "-" + VALID[11:], VALID[:10] + "g" + VALID[11:],
                    VALID[:53] + "-" + VALID[54:], "00-" + VALID[3:35] + "--" + VALID[38:],
                    VALID[:54] + "\u0661", VALID[:3] + " " * 32 + VALID[35:]):
            self.assertIsNone(TraceContext.parse(bad), repr(bad))

    def test_a_later_version_may_add_fields(self) -> None:
        context = TraceContext.parse("01" + VALID[2:] + "-what-comes-next")
        assert context is not None
        self.assertEqual(context.traceparent, "01" + VALID[2:])

    def test_an_oversized_or_odd_tracestate_is_dropped_not_the_trace(self) -> None:
        for state in ("x" * 513, 7):
            context = TraceContext.parse(VALID, state)
            assert context is not None
            self.assertEqual(context.tracestate, "")

    def test_new_traces_are_valid_and_distinct(self) -> None:
        a, b = TraceContext.new(), TraceContext.new(sampled=True)
        self.assertEqual(TraceContext.parse(a.traceparent), a)
        self.assertNotEqual(a.trace_id, b.trace_id)
        self.assertEqual((a.sampled, b.sampled), (False, True))

    def test_all_zero_ids_are_drawn_again(self) -> None:
        draws = iter([0, 1 << 64, 1, (2 << 64) | 3])  # no trace id; no parent id; ...
        self.patch(tracecontext, "_random_bits", lambda bits: next(draws))
        self.assertEqual(TraceContext.new().traceparent,
                         f"00-{2:032x}-{3:016x}-00")

    def test_use_sets_and_restores_the_current_context(self) -> None:
        context = TraceContext.new()
        self.assertIsNone(tracecontext.current())
        with tracecontext.use(context):
            self.assertIs(tracecontext.current(), context)
        self.assertIsNone(tracecontext.current())


class Backend:
    """The second hop: tells what trace context its handler runs in."""

    def seen(self) -> Optional[str]:
        context = tracecontext.current()
        return context.traceparent if context else None


class Frontend:
    """The first hop: calls the backend from its handler, synchronously and after awaits."""

    def __init__(self, client: Client, net: MemoryNetwork) -> None:
        self.client = client
        self.net = net

    def relay(self) -> "defer.Deferred[Any]":
        return self.client.call("backend", "seen")

    async def relay_later(self) -> Any:
        await deferLater(self.net.clock, 1.0, lambda: None)
        return await self.client.call("backend", "seen")


class PropagationTests(TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork()
        propagation = TraceContextPropagation()
        self.net.server({"backend": Backend()}, observers=[propagation])
        inner = self.net.client(observers=[propagation])
        self.net.server({"frontend": Frontend(inner, self.net)}, observers=[propagation])
        self.client = self.net.client(observers=[propagation])

    def call(self, method: str) -> Any:
        d = self.client.call("frontend", method)
        self.net.advance(1.0)
        return self.successResultOf(d)

    def test_the_observer_keeps_the_contract(self) -> None:
        verifyObject(ICallContext, TraceContextPropagation())

    def test_two_hops_share_the_callers_trace(self) -> None:
        root = TraceContext.new(sampled=True)
        with tracecontext.use(root):
            d = self.client.call("frontend", "relay")
        self.net.flush()
        self.assertEqual(self.successResultOf(d), root.traceparent)

    def test_the_trace_survives_awaits_in_async_handlers(self) -> None:
        root = TraceContext.new()
        with tracecontext.use(root):
            d = self.client.call("frontend", "relay_later")
        self.net.advance(1.0)
        self.assertEqual(self.successResultOf(d), root.traceparent)

    def test_a_call_outside_any_trace_starts_one_that_reaches_the_last_hop(self) -> None:
        seen = self.call("relay")
        context = TraceContext.parse(seen)
        assert context is not None
        self.assertFalse(context.sampled)

    def test_concurrent_requests_keep_their_own_traces(self) -> None:
        roots = [TraceContext.new() for _ in range(3)]
        calls = []
        for root in roots:
            with tracecontext.use(root):
                calls.append(self.client.call("frontend", "relay_later"))
        self.net.advance(1.0)
        self.assertEqual([self.successResultOf(d) for d in calls],
                         [r.traceparent for r in roots])
        self.assertIsNone(tracecontext.current())  # nothing leaked into the reactor's context

    def test_an_explicit_traceparent_in_meta_wins(self) -> None:
        d = self.client.invoke("backend", "seen", meta={"traceparent": VALID})
        self.net.flush()
        self.assertEqual(self.successResultOf(d), VALID)

    def test_an_invalid_incoming_traceparent_is_not_passed_on(self) -> None:
        d = self.client.invoke("backend", "seen", meta={"traceparent": "garbage"})
        self.net.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_servers_without_propagation_ignore_trace_context(self) -> None:
        net = MemoryNetwork()
        net.server({"backend": Backend()})
        with tracecontext.use(TraceContext.new()):
            d = net.client(observers=[TraceContextPropagation()]).call("backend", "seen")
        net.flush()
        self.assertIsNone(self.successResultOf(d))


class ThreadTests(TestCase):
    def test_blocking_handlers_run_in_the_requests_trace_context(self) -> None:
        from twisted.internet import reactor

        from msrpc.threads import Threads

        threads = Threads(reactor.callFromThread)
        threads.start()
        self.addCleanup(threads.stop)
        root = TraceContext.new()
        with tracecontext.use(root):
            d = threads.submit(tracecontext.current, (), {}, "current")
        assert d is not None
        return d.addCallback(self.assertIs, root)
