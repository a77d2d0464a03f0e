"""Body compression with a decompressed-size cap."""

from __future__ import annotations

import zlib

from twisted.trial.unittest import TestCase

from msrpc import compress
from msrpc.errors import DecodeError

KINDS = (compress.NONE, compress.GZIP, compress.ZSTD)


class CompressionTests(TestCase):
    def test_each_kind_round_trips(self) -> None:
        data = b"msrpc " * 1000
        for kind in KINDS:
            packed = compress.compress(kind, data)
            self.assertEqual(compress.decompress(kind, packed), data)
            if kind != compress.NONE:
                self.assertLess(len(packed), len(data) // 10)

    def test_a_bomb_is_refused_without_inflating_it_all(self) -> None:
        bomb_size = 64 * 1024 * 1024
        for kind in (compress.GZIP, compress.ZSTD):
            bomb = compress.compress(kind, b"\0" * bomb_size)
            self.assertLess(len(bomb), 200_000)
            error = self.assertRaises(DecodeError, compress.decompress, kind, bomb, 1024)
            self.assertIn("limit of 1024 bytes", str(error))

    def test_exactly_at_the_cap_is_accepted(self) -> None:
        for kind in (compress.GZIP, compress.ZSTD):
            packed = compress.compress(kind, b"a" * 1024)
            self.assertEqual(len(compress.decompress(kind, packed, 1024)), 1024)

    def test_corrupt_bodies_are_decode_errors(self) -> None:
        for kind in (compress.GZIP, compress.ZSTD):
            self.assertRaises(DecodeError, compress.decompress, kind, b"definitely not")

    def test_truncated_gzip_is_a_decode_error(self) -> None:
        packed = compress.compress(compress.GZIP, b"x" * 5000)
        self.assertRaises(DecodeError, compress.decompress, compress.GZIP, packed[:-8])

    def test_truncated_zstd_is_a_decode_error(self) -> None:
        # zstandard's stream reader returns what it has when the input ends mid-frame.
        packed = compress.compress(compress.ZSTD, bytes(range(256)) * 20)
        for cut in (0, 4, len(packed) // 2, len(packed) - 1):
            error = self.assertRaises(DecodeError, compress.decompress, compress.ZSTD,
                                      packed[:cut])
            self.assertIn("truncated zstd body", str(error))

    def test_zstd_frames_without_a_declared_size_are_read_within_the_cap(self) -> None:
        # Other peers' frames may not declare their size; ours do (one pass to inflate).
        import zstandard
        packed = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 5000)
        self.assertEqual(compress.decompress(compress.ZSTD, packed, 5000), b"a" * 5000)
        error = self.assertRaises(DecodeError, compress.decompress, compress.ZSTD, packed,
                                  4999)
        self.assertIn("limit of 4999 bytes", str(error))

    def test_gzip_body_is_a_standard_gzip_stream(self) -> None:
        packed = compress.compress(compress.GZIP, b"hello")
        self.assertEqual(zlib.decompress(packed, 31), b"hello")

    def test_unknown_compression_id_is_a_decode_error(self) -> None:
        self.assertRaises(DecodeError, compress.decompress, 7, b"x")

    def test_names_parse_and_unknown_names_are_refused(self) -> None:
        self.assertEqual(compress.parse_name("GZIP"), compress.GZIP)
        self.assertRaises(ValueError, compress.parse_name, "lz4")
