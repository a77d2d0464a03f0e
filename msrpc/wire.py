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
    be trusted.  An incomplete frame is held as the list of reads it arrived in (views, not
    copies) and its body is joined once when the last byte arrives: a 1 MiB frame read
    64 KiB at a time costs one copy, however TCP splits it.
    """

    __slots__ = ("_on_frame", "max_frame", "_chunks", "_buffered", "_need", "_header",
                 "frames")

    def __init__(self, on_frame: FrameCallback, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < HEADER_SIZE:
            raise ValueError(f"max_frame must be at least {HEADER_SIZE}")
        self._on_frame = on_frame
        self.max_frame = max_frame
        #: The incomplete frame as it arrived, its header included.
        self._chunks: list[bytes | memoryview] = []
        self._buffered = 0
        #: Bytes that complete what is held: the header, or the whole frame once known.
        self._need = HEADER_SIZE
        #: (type, compression, serializer, request id) of the incomplete frame, once read.
        self._header: tuple[int, int, int, int] | None = None
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
            if self._header is not None:
                offset = self._complete(data)
                if offset < len(data):
                    self._feed_many(data, len(data), offset)
                return
            # The header itself was split: at most a header and this read to join.
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
        self._feed_many(data, n, 0)

    def _complete(self, data: bytes) -> int:
        """The held frame ends in ``data``: deliver it; return where the rest starts."""
        chunks = self._chunks
        cut = len(data) - (self._buffered - self._need)
        if cut < len(data):
            chunks[-1] = memoryview(data)[:cut]
        chunks[0] = memoryview(chunks[0])[HEADER_SIZE:]
        body = b"".join(chunks)
        mtype, comp, ser, rid = self._header  # type: ignore[misc]  # set with the chunks
        self._chunks = []
        self._buffered = 0
        self._need = HEADER_SIZE
        self._header = None
        self.frames += 1
        self._on_frame(mtype, comp, ser, rid, body)
        return cut

    def _feed_many(self, data: bytes, n: int, offset: int) -> None:
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
                self._header = (mtype, comp, ser, rid)
                self._hold(data, n, offset, length)
                return
            self.frames += 1
            on_frame(mtype, comp, ser, rid, data[offset + HEADER_SIZE:end])
            offset = end
        self._need = HEADER_SIZE
        if offset < n:
            self._hold(data, n, offset, HEADER_SIZE)

    def _hold(self, data: bytes, n: int, offset: int, need: int) -> None:
        """Keep ``data[offset:]``, the start of a frame: a view when it is most of the
        read (no copy), a copy when it is a small tail (not pinning the whole read)."""
        if not offset:
            rest: bytes | memoryview = data
        elif 2 * (n - offset) >= n:
            rest = memoryview(data)[offset:]
        else:
            rest = data[offset:]
        self._chunks = [rest]
        self._buffered = n - offset
        self._need = need
