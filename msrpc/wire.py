"""
Frame header packing and a push parser for the byte stream (DESIGN.md section 2).

Pure: no I/O and no reactor, so it is tested by feeding bytes.  Every frame is a 17-byte
big-endian header (the msgo layout) followed by the body::

    magic(1)=0x1d  version(1)=1  full_length(4)  type(1)  compression(1)  serializer(1)  request_id(8)
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Callable

from msrpc.errors import FrameError

MAGIC = 0x1D
VERSION = 0x01
HEADER = struct.Struct(">BBIBBBq")
HEADER_SIZE = HEADER.size  # 17
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_REQUEST_ID = 2**63 - 1


class MessageType(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    PING = 2
    PONG = 3
    CANCEL = 4


class Compression(IntEnum):
    GZIP = 0
    NONE = 1
    ZSTD = 2


class Serializer(IntEnum):
    GOB = 0       # reserved for Go interop
    PROTOBUF = 1  # reserved
    MSGPACK = 2
    JSON = 3


# Plain ints for the hot path: IntEnum comparisons cost a method call each.
REQUEST, RESPONSE, PING, PONG, CANCEL = (int(t) for t in MessageType)

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


def encode_frame(message_type: int, compression: int, serializer: int, request_id: int,
                 body: bytes = b"") -> bytes:
    """Header and body as one bytes object, ready for ``transport.write``."""
    return _pack_header(MAGIC, VERSION, HEADER_SIZE + len(body), message_type, compression,
                        serializer, request_id) + body


def check_header(magic: int, version: int, length: int) -> None:
    """Raise the precise ``FrameError`` for a header the stream cannot go on after."""
    if magic != MAGIC:
        raise FrameError(f"bad magic byte 0x{magic:02x} (expected 0x{MAGIC:02x})")
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version}")
    if length < HEADER_SIZE:
        raise FrameError(f"frame length {length} is shorter than the header")


FrameCallback = Callable[[int, int, int, int, bytes], None]


class FrameParser:
    """
    Turns an arbitrarily split byte stream into frames, calling
    ``on_frame(type, compression, serializer, request_id, body)`` for each.

    Raises ``FrameError`` on bad magic, unknown version or a frame longer than
    ``max_frame``; the caller must then drop the connection, since the stream can no longer
    be trusted.  A large frame is accumulated as a list of chunks and joined once, so its
    cost stays linear in its size however TCP splits it.
    """

    __slots__ = ("_on_frame", "max_frame", "_chunks", "_buffered", "_need", "frames")

    def __init__(self, on_frame: FrameCallback, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < HEADER_SIZE:
            raise ValueError(f"max_frame must be at least {HEADER_SIZE}")
        self._on_frame = on_frame
        self.max_frame = max_frame
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._need = HEADER_SIZE
        #: Frames completed so far: lets a sweep tell a trickling peer from a working one.
        self.frames = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held right now."""
        return self._buffered

    def feed(self, data: bytes) -> None:
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
        n = len(data)
        if n > HEADER_SIZE:
            # The common case at low concurrency: the read is exactly one frame.
            magic, version, length, mtype, comp, ser, rid = _unpack_header(data)
            if length == n and magic == MAGIC and version == VERSION and \
                    length <= self.max_frame:
                self.frames += 1
                self._need = HEADER_SIZE
                self._on_frame(mtype, comp, ser, rid, data[HEADER_SIZE:])
                return
        self._feed_many(data, n)

    def _feed_many(self, data: bytes, n: int) -> None:
        offset = 0
        need = HEADER_SIZE
        unpack = _unpack_header
        on_frame = self._on_frame
        max_frame = self.max_frame
        while n - offset >= HEADER_SIZE:
            magic, version, length, mtype, comp, ser, rid = unpack(data, offset)
            if magic != MAGIC or version != VERSION or length < HEADER_SIZE:
                check_header(magic, version, length)
            if length > max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the limit of "
                                 f"{max_frame} bytes")
            end = offset + length
            if end > n:
                need = length
                break
            self.frames += 1
            on_frame(mtype, comp, ser, rid, data[offset + HEADER_SIZE:end])
            offset = end
        if offset < n:
            rest = data[offset:] if offset else data
            self._chunks = [rest]
            self._buffered = len(rest)
            self._need = need
        else:
            self._need = HEADER_SIZE
