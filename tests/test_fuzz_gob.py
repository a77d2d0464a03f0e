"""
The gob codec (``msrpc.gob``) under property-based fuzzing: a small, deterministic run of
the properties in ``tests/fuzz_properties.py``; ``scripts/fuzz -k gob`` runs them at length.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests import fuzz_properties as fp
from tests.fuzz_properties import DETERMINISTIC


class GobPropertyTests(TestCase):
    def test_every_value_of_every_go_type_comes_back_with_its_types(self) -> None:
        fp.GOB_ROUND_TRIP.run(DETERMINISTIC)

    def test_any_gob_stream_decodes_to_known_types_or_a_decode_error(self) -> None:
        fp.GOB_HOSTILE.run(DETERMINISTIC)

    def test_nothing_beyond_the_limits_is_accepted(self) -> None:
        fp.GOB_LIMITS.run(DETERMINISTIC)
