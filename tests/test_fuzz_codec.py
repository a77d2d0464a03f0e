"""
Body decoding under property-based fuzzing: decompression (``msrpc.compress``) and both
codecs (DESIGN.md section 3).  A small, deterministic run of the properties in
``tests/fuzz_properties.py``; ``scripts/fuzz`` runs them at length.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests import fuzz_properties as fp
from tests.fuzz_properties import DETERMINISTIC


class DecompressionPropertyTests(TestCase):
    def test_compressed_bodies_inflate_back_or_are_refused_beyond_the_cap(self) -> None:
        fp.COMPRESSED_ROUND_TRIP.run(DETERMINISTIC)

    def test_truncated_bodies_are_refused(self) -> None:
        fp.TRUNCATED_BODY.run(DETERMINISTIC)

    def test_any_body_inflates_within_the_cap_or_is_a_decode_error(self) -> None:
        fp.HOSTILE_BODY.run(DETERMINISTIC)


class CodecRoundTripPropertyTests(TestCase):
    def test_msgpack_gives_back_every_supported_value_with_its_types(self) -> None:
        fp.MSGPACK_ROUND_TRIP.run(DETERMINISTIC)

    def test_json_gives_back_every_value_it_carries_with_its_types(self) -> None:
        fp.JSON_ROUND_TRIP.run(DETERMINISTIC)

    def test_unencodable_values_are_an_encode_error_and_leave_the_codec_usable(self) -> None:
        fp.UNENCODABLE.run(DETERMINISTIC)


class CodecHostileInputPropertyTests(TestCase):
    def test_any_msgpack_body_decodes_to_known_types_or_a_decode_error(self) -> None:
        fp.MSGPACK_HOSTILE.run(DETERMINISTIC)

    def test_any_json_body_decodes_to_known_types_or_a_decode_error(self) -> None:
        fp.JSON_HOSTILE.run(DETERMINISTIC)

    def test_msgpack_bodies_beyond_the_limits_are_refused_and_within_them_decoded(
            self) -> None:
        fp.MSGPACK_LIMITS.run(DETERMINISTIC)

    def test_json_bodies_beyond_the_limits_are_refused_and_within_them_decoded(self) -> None:
        fp.JSON_LIMITS.run(DETERMINISTIC)

    def test_the_depth_walk_of_long_bodies_agrees_with_the_reference(self) -> None:
        fp.NESTING_WALK.run(DETERMINISTIC)
