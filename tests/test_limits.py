"""Token bucket and argument-annotation checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from twisted.trial.unittest import TestCase

from msrpc.limits import TokenBucket, parse_rate
from msrpc.service import make_checker, methods_of


class TokenBucketTests(TestCase):
    def test_burst_then_steady_rate(self) -> None:
        bucket = TokenBucket(rate=10, burst=3, now=0.0)
        self.assertEqual([bucket.try_acquire(0.0) for _ in range(4)], [True] * 3 + [False])
        self.assertFalse(bucket.try_acquire(0.05))
        self.assertTrue(bucket.try_acquire(0.1))

    def test_tokens_never_exceed_the_burst(self) -> None:
        bucket = TokenBucket(rate=100, burst=2, now=0.0)
        results = [bucket.try_acquire(1000.0) for _ in range(3)]
        self.assertEqual(results, [True, True, False])

    def test_clock_going_backwards_grants_nothing_extra(self) -> None:
        bucket = TokenBucket(rate=1, burst=1, now=10.0)
        self.assertTrue(bucket.try_acquire(10.0))
        self.assertFalse(bucket.try_acquire(5.0))

    def test_bad_parameters_are_refused(self) -> None:
        self.assertRaises(ValueError, TokenBucket, 0)
        self.assertRaises(ValueError, TokenBucket, 1, 0.5)

    def test_rate_specs_parse(self) -> None:
        self.assertEqual(parse_rate("100"), (100.0, None))
        self.assertEqual(parse_rate("100/20"), (100.0, 20.0))
        self.assertRaises(ValueError, parse_rate, "fast")


@dataclass
class Box:
    size: int


class Service:
    def typed(self, a: int, b: float, c: Optional[str] = None, *, box: Box) -> None: ...

    def union(self, v: Union[int, list[int]]) -> None: ...

    def untyped(self, a, b): ...  # type: ignore[no-untyped-def]

    def _private(self) -> None: ...


class CheckerTests(TestCase):
    check = staticmethod(make_checker(Service().typed))  # type: ignore[arg-type]

    def test_matching_arguments_pass(self) -> None:
        self.assertIsNone(self.check((1, 2.0, "s"), {"box": Box(1)}))
        self.assertIsNone(self.check((1, 2), {"box": Box(1)}))  # int is a fine float
        self.assertIsNone(self.check((1, 2.0, None), {"box": Box(1)}))

    def test_mismatches_name_the_argument_and_types(self) -> None:
        self.assertEqual(self.check(("1", 2.0), {"box": Box(1)}),
                         "argument 'a' must be int, got str")
        self.assertIn("'box' must be Box", self.check((1, 2.0), {"box": {"size": 1}}) or "")
        self.assertIn("'c'", self.check((1, 2.0, 5), {"box": Box(1)}) or "")

    def test_bool_is_not_accepted_for_int(self) -> None:
        self.assertIsNotNone(self.check((True, 2.0), {"box": Box(1)}))

    def test_unions_and_generics_check_their_origins(self) -> None:
        check = make_checker(Service().union)
        assert check is not None
        self.assertIsNone(check(([1, 2],), {}))
        self.assertIsNotNone(check(("x",), {}))

    def test_unannotated_methods_have_no_checker(self) -> None:
        self.assertIsNone(make_checker(Service().untyped))

    def test_private_methods_are_not_exposed(self) -> None:
        self.assertEqual(sorted(methods_of("s", Service())), ["typed", "union", "untyped"])
