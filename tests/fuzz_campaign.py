"""
The long, randomised fuzzing campaign behind ``scripts/fuzz``: every property of
``tests/fuzz_properties.py`` (the ones the test suite runs briefly) for its share of the
examples, in parallel processes.

Examples are counted inside the check, not read off hypothesis's settings: hypothesis may
stop early or re-run examples, and the count is the claim being made.  Each property runs
in batches, each with a fresh random seed, until it has its share.  An example "failed"
when its check raised, shrinking steps included; each failing batch also reports the
minimal example hypothesis found, and the campaign then exits 1.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from hypothesis import settings

from tests.fuzz_properties import PROPERTIES, SUPPRESSED_HEALTH_CHECKS, Property

DEFAULT_EXAMPLES = 100_000
#: Examples per hypothesis run.  Each run starts from a fresh random seed, and a failure
#: ends only its run, not the property's share.
BATCH = 500
#: Examples per task handed to a worker process, so that slow and fast properties spread
#: evenly over the workers.
TASK = 2_000
#: Failing batches reported in full, per property.
REPORTS = 2


@dataclass
class Tally:
    """What running one property (or a share of it) came to."""

    name: str
    examples: int = 0
    failed: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    reports: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.examples += other.examples
        self.failed += other.failed
        self.seconds += other.seconds
        self.outcomes.update(other.outcomes)
        self.reports.extend(other.reports)


def _budget(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=False, deadline=None, database=None,
                    print_blob=True, suppress_health_check=SUPPRESSED_HEALTH_CHECKS)


def run_share(index: int, examples: int) -> Tally:
    """Run property ``PROPERTIES[index]`` for ``examples`` counted examples."""
    prop: Property = PROPERTIES[index]
    tally = Tally(prop.name)

    def counted(value: Any) -> None:
        tally.examples += 1
        try:
            outcome = prop.check(value)
        except Exception:
            tally.failed += 1
            raise
        tally.outcomes[outcome] += 1

    started = time.monotonic()
    while tally.examples < examples:
        examples_before, failed_before = tally.examples, tally.failed
        try:
            prop.run(_budget(min(BATCH, examples - tally.examples)), counted)
        except Exception as e:
            tally.reports.append("".join(traceback.format_exception(e)))
            if tally.failed == failed_before:
                tally.failed += 1  # hypothesis itself gave up (health check, flaky test...)
        if tally.examples == examples_before:
            break  # nothing left to generate: do not spin
    tally.seconds = time.monotonic() - started
    return tally


def _reseed() -> None:
    """Forked workers inherit one ``random`` state, from which hypothesis draws its seeds:
    without this every worker would try the same examples."""
    random.seed(os.urandom(32))


def campaign(selected: list[int], examples: int, jobs: int) -> list[Tally]:
    """Every selected property for ``examples / len(selected)`` examples (rounded up)."""
    share = math.ceil(examples / len(selected))
    tasks = [(index, min(TASK, share - start))
             for index in selected for start in range(0, share, TASK)]
    totals = {index: Tally(PROPERTIES[index].name) for index in selected}
    with ProcessPoolExecutor(jobs, initializer=_reseed) as pool:
        futures = [(index, pool.submit(run_share, index, n)) for index, n in tasks]
        for index, future in futures:
            totals[index].add(future.result())
    return [totals[index] for index in selected]


def _outcomes(tally: Tally) -> str:
    total = sum(tally.outcomes.values()) or 1
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in tally.outcomes.most_common())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int,
                        default=int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES)),
                        help="examples in all, shared evenly by the properties "
                             f"(default $FUZZ_EXAMPLES or {DEFAULT_EXAMPLES})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per CPU)")
    parser.add_argument("-k", "--only", action="append", default=[], metavar="TEXT",
                        help="run only properties whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the properties and exit")
    args = parser.parse_args(argv)

    if args.list:
        for prop in PROPERTIES:
            doc = " ".join((prop.check.__doc__ or "").split())
            print(f"{prop.name:26} {doc.split('. ')[0]}")
        return 0
    selected = [i for i, prop in enumerate(PROPERTIES)
                if not args.only or any(text in prop.name for text in args.only)]
    if not selected or args.examples < 1 or args.jobs < 1:
        parser.error("nothing to run: check --only, --examples and --jobs")

    print(f"fuzz: {len(selected)} properties, {args.examples} examples in all, "
          f"{args.jobs} jobs", flush=True)
    started = time.monotonic()
    tallies = campaign(selected, args.examples, args.jobs)
    wall = time.monotonic() - started

    for tally in tallies:
        print(f"{tally.name:26} {tally.examples:8} examples {tally.failed:6} failed "
              f"{tally.seconds:7.1f} s   {_outcomes(tally)}")
    examples, failed = sum(t.examples for t in tallies), sum(t.failed for t in tallies)
    print(f"{'total':26} {examples:8} examples {failed:6} failed {wall:7.1f} s wall")
    for tally in tallies:
        for report in tally.reports[:REPORTS]:
            print(f"\n---- {tally.name} failed:\n{report}")
        if len(tally.reports) > REPORTS:
            print(f"---- {tally.name}: {len(tally.reports) - REPORTS} more failing batches")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
