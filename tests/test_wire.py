"""Frame header and stream parsing (DESIGN.md section 2)."""

from __future__ import annotations

import struct

from twisted.trial.unittest import TestCase

from msrpc.errors import FrameError
from msrpc.wire import (
    HEADER_SIZE, MAGIC, PING, REQUEST, RESPONSE, VERSION, Compression, FrameParser,
    MessageType, Serializer, encode_frame,
)


def collect(max_frame: int = 1 << 20) -> tuple[FrameParser, list[tuple]]:
    frames: list[tuple] = []
    parser = FrameParser(lambda *frame: frames.append(frame), max_frame)
    return parser, frames


class HeaderLayoutTests(TestCase):
    def test_header_is_17_big_endian_bytes_in_msgo_order(self) -> None:
        frame = encode_frame(REQUEST, Compression.NONE, Serializer.MSGPACK, 0x0102030405060708,
                             b"body")
        self.assertEqual(HEADER_SIZE, 17)
        self.assertEqual(frame[:17], bytes([0x1D, 0x01, 0, 0, 0, 21, 0, 1, 2,
                                            1, 2, 3, 4, 5, 6, 7, 8]))
        self.assertEqual(frame[17:], b"body")

    def test_enum_values_match_the_design(self) -> None:
        self.assertEqual([int(t) for t in MessageType], [0, 1, 2, 3, 4])
        self.assertEqual((Compression.GZIP, Compression.NONE, Compression.ZSTD), (0, 1, 2))
        self.assertEqual((Serializer.GOB, Serializer.PROTOBUF, Serializer.MSGPACK,
                          Serializer.JSON), (0, 1, 2, 3))

    def test_negative_request_ids_survive(self) -> None:
        parser, frames = collect()
        parser.feed(encode_frame(RESPONSE, 1, 2, -5, b"x"))
        self.assertEqual(frames, [(RESPONSE, 1, 2, -5, b"x")])


class StreamParsingTests(TestCase):
    def stream(self) -> tuple[bytes, list[tuple]]:
        expected = [(REQUEST, 1, 2, i, bytes([i]) * i) for i in range(1, 6)]
        expected.append((PING, 1, 2, 99, b""))
        return b"".join(encode_frame(*f) for f in expected), expected

    def test_every_single_split_point_parses_the_same(self) -> None:
        data, expected = self.stream()
        for cut in range(len(data) + 1):
            parser, frames = collect()
            parser.feed(data[:cut])
            parser.feed(data[cut:])
            self.assertEqual(frames, expected, f"split at {cut}")

    def test_byte_by_byte_feeding_parses_the_same(self) -> None:
        data, expected = self.stream()
        parser, frames = collect()
        for i in range(len(data)):
            parser.feed(data[i:i + 1])
        self.assertEqual(frames, expected)
        self.assertEqual(parser.buffered, 0)

    def test_coalesced_frames_in_one_read_all_arrive(self) -> None:
        data, expected = self.stream()
        parser, frames = collect()
        parser.feed(data)
        self.assertEqual(frames, expected)
        self.assertEqual(parser.frames, len(expected))

    def test_partial_frame_is_reported_as_buffered(self) -> None:
        parser, frames = collect()
        frame = encode_frame(REQUEST, 1, 2, 1, b"x" * 100)
        parser.feed(frame[:50])
        self.assertEqual((frames, parser.buffered), ([], 50))
        parser.feed(frame[50:])
        self.assertEqual(parser.buffered, 0)
        self.assertEqual(len(frames), 1)

    def test_large_frame_in_small_chunks_is_accumulated_not_rejoined(self) -> None:
        body = bytes(range(256)) * 4096  # 1 MiB
        frame = encode_frame(REQUEST, 1, 2, 7, body)
        parser, frames = collect(max_frame=2 << 20)
        chunks = [frame[i:i + 1000] for i in range(0, len(frame), 1000)]
        for fed, chunk in enumerate(chunks[:-1], start=1):
            parser.feed(chunk)
            # Linear cost: chunks are kept as they came until the frame is complete.
            self.assertEqual(len(parser._chunks), fed)
        parser.feed(chunks[-1])
        self.assertEqual(frames, [(REQUEST, 1, 2, 7, body)])
        self.assertEqual(parser.buffered, 0)


class BadStreamTests(TestCase):
    def test_bad_magic_is_a_frame_error(self) -> None:
        parser, _ = collect()
        frame = bytearray(encode_frame(REQUEST, 1, 2, 1, b""))
        frame[0] = 0x7F
        error = self.assertRaises(FrameError, parser.feed, bytes(frame))
        self.assertIn("bad magic byte 0x7f", str(error))

    def test_unknown_version_is_a_frame_error(self) -> None:
        parser, _ = collect()
        frame = bytearray(encode_frame(REQUEST, 1, 2, 1, b""))
        frame[1] = 9
        self.assertIn("version 9", str(self.assertRaises(FrameError, parser.feed,
                                                         bytes(frame))))

    def test_oversized_length_is_refused_from_the_header_alone(self) -> None:
        parser, frames = collect(max_frame=1000)
        header = struct.pack(">BBIBBBq", MAGIC, VERSION, 1001, REQUEST, 1, 2, 1)
        error = self.assertRaises(FrameError, parser.feed, header)
        self.assertIn("exceeds the limit of 1000", str(error))
        self.assertEqual(frames, [])

    def test_length_shorter_than_header_is_a_frame_error(self) -> None:
        parser, _ = collect()
        header = struct.pack(">BBIBBBq", MAGIC, VERSION, 5, REQUEST, 1, 2, 1)
        self.assertIn("shorter than the header",
                      str(self.assertRaises(FrameError, parser.feed, header)))

    def test_frames_before_a_bad_one_are_still_delivered(self) -> None:
        parser, frames = collect()
        good = encode_frame(REQUEST, 1, 2, 1, b"ok")
        self.assertRaises(FrameError, parser.feed, good + b"\x00" * 17)
        self.assertEqual(frames, [(REQUEST, 1, 2, 1, b"ok")])

    def test_max_frame_below_header_size_is_rejected(self) -> None:
        self.assertRaises(ValueError, FrameParser, lambda *a: None, 10)
