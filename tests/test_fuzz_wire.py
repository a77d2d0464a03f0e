"""
The frame parser under property-based fuzzing (DESIGN.md section 2): a small, deterministic
run of the properties in ``tests/fuzz_properties.py``; ``scripts/fuzz`` runs them at length.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests import fuzz_properties as fp
from tests.fuzz_properties import DETERMINISTIC


class FrameParserPropertyTests(TestCase):
    def test_valid_frames_split_anywhere_parse_back_exactly_and_in_order(self) -> None:
        fp.VALID_FRAMES.run(DETERMINISTIC)

    def test_any_stream_gives_frames_then_at_most_a_frame_error_holding_under_a_frame(
            self) -> None:
        fp.HOSTILE_STREAM.run(DETERMINISTIC)
