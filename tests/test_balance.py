"""Balancers: weights honoured, zero weights excluded, hashing stable, retries elsewhere."""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import TestCase

from msrpc.balance import (
    BALANCERS, ConsistentHash, LeastOutstanding, Member, RoundRobin, WeightedRandom,
    make_balancer,
)
from msrpc.errors import NoInstances
from msrpc.registry.instance import ServiceInstance


class FakeEndpoint:
    def __init__(self, address: str) -> None:
        self.address = address
        self.outstanding = 0


def members(*weights: float) -> list[Member]:
    return [Member(ServiceInstance("svc", f"10.0.0.{i}", 7000, weight=w),
                   FakeEndpoint(f"10.0.0.{i}:7000"))  # type: ignore[arg-type]
            for i, w in enumerate(weights, start=1)]


def spread(balancer, picks: int = 10_000, key=None) -> Counter:
    return Counter(balancer.pick(key).endpoint.address for _ in range(picks))


class WeightedRandomTests(TestCase):
    def setUp(self) -> None:
        random.seed(1234)

    def test_picks_in_proportion_to_weight(self) -> None:
        b = WeightedRandom()
        b.update(members(1, 9))
        counts = spread(b)
        self.assertLess(abs(counts["10.0.0.2:7000"] / 10_000 - 0.9), 0.02)

    def test_equal_weights_spread_evenly(self) -> None:
        b = WeightedRandom()
        b.update(members(5, 5, 5, 5))
        for count in spread(b, 8000).values():
            self.assertLess(abs(count / 8000 - 0.25), 0.03)

    def test_single_member_always_wins(self) -> None:
        b = WeightedRandom()
        b.update(members(3))
        self.assertEqual(set(spread(b, 10)), {"10.0.0.1:7000"})

    def test_no_members_is_no_instances(self) -> None:
        self.assertRaises(NoInstances, WeightedRandom().pick)


class RoundRobinTests(TestCase):
    def test_equal_weights_rotate(self) -> None:
        b = RoundRobin()
        b.update(members(1, 1, 1))
        picks = [b.pick().endpoint.address[-6] for _ in range(6)]
        self.assertEqual(picks, ["1", "2", "3", "1", "2", "3"])

    def test_weights_are_smoothly_interleaved(self) -> None:
        b = RoundRobin()
        b.update(members(5, 1, 1))
        picks = "".join(b.pick().endpoint.address[-6] for _ in range(7))
        self.assertEqual(Counter(picks), Counter({"1": 5, "2": 1, "3": 1}))
        self.assertNotIn("11111", picks)  # smooth, not bursty


class LeastOutstandingTests(TestCase):
    def test_prefers_the_less_busy_of_two(self) -> None:
        random.seed(7)
        b = LeastOutstanding()
        ms = members(1, 1)
        ms[0].endpoint.outstanding = 10
        b.update(ms)
        self.assertEqual(set(spread(b, 100)), {"10.0.0.2:7000"})

    def test_load_is_relative_to_weight(self) -> None:
        b = LeastOutstanding()
        ms = members(10, 1)
        ms[0].endpoint.outstanding = 5   # 0.5 per weight
        ms[1].endpoint.outstanding = 1   # 1.0 per weight
        b.update(ms)
        self.assertEqual(set(spread(b, 50)), {"10.0.0.1:7000"})


class ConsistentHashTests(TestCase):
    def test_same_key_same_instance(self) -> None:
        b = ConsistentHash()
        b.update(members(1, 1, 1, 1))
        for key in ("user-1", "user-2", 42):
            self.assertEqual(len(spread(b, 20, key=key)), 1)

    def test_only_a_fraction_of_keys_move_when_one_instance_leaves(self) -> None:
        b = ConsistentHash()
        ms = members(1, 1, 1, 1)
        b.update(ms)
        before = {k: b.pick(k).endpoint.address for k in range(2000)}
        b.update(ms[:3])
        moved = sum(before[k] != b.pick(k).endpoint.address for k in range(2000))
        self.assertLess(moved / 2000, 0.4)  # ~1/4 expected; all would move with modulo

    def test_retry_goes_to_the_next_instance_on_the_ring(self) -> None:
        b = ConsistentHash()
        ms = members(1, 1, 1)
        b.update(ms)
        first = b.pick("k")
        again = b.pick_excluding({first.endpoint}, "k")  # type: ignore[arg-type]
        self.assertIsNot(again.endpoint, first.endpoint)


class SelectionTests(TestCase):
    def test_pick_excluding_avoids_tried_endpoints(self) -> None:
        for name in BALANCERS:
            b = make_balancer(name)
            ms = members(1, 1, 1)
            b.update(ms)
            tried = {ms[0].endpoint, ms[1].endpoint}
            for _ in range(20):
                self.assertIs(b.pick_excluding(tried).endpoint, ms[2].endpoint)  # type: ignore

    def test_pick_excluding_falls_back_when_all_were_tried(self) -> None:
        b = WeightedRandom()
        ms = members(1)
        b.update(ms)
        self.assertIs(b.pick_excluding({ms[0].endpoint}), ms[0])  # type: ignore[arg-type]

    def test_unknown_balancer_name_is_refused(self) -> None:
        self.assertRaises(ValueError, make_balancer, "fastest")
