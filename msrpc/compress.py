"""
Body compression: none, gzip, zstd (optional ``zstandard`` extra).

Decompression is always capped: a small body that would inflate past ``max_size`` is
refused after producing at most ``max_size + 1`` bytes, never inflated whole.
"""

from __future__ import annotations

import io
import zlib
from typing import Optional

from msrpc.errors import DecodeError
from msrpc.wire import Compression

try:  # optional extra: pip install msrpc[zstd]
    import zstandard
except ImportError:  # pragma: no cover - exercised only without the extra
    zstandard = None  # type: ignore[assignment]

GZIP, NONE, ZSTD = int(Compression.GZIP), int(Compression.NONE), int(Compression.ZSTD)
NAMES = {"none": NONE, "gzip": GZIP, "zstd": ZSTD}
DEFAULT_THRESHOLD = 4096            # bytes; smaller bodies are sent as they are
DEFAULT_MAX_DECOMPRESSED = 16 * 1024 * 1024

_zstd_c: Optional["zstandard.ZstdCompressor"] = None
_zstd_d: Optional["zstandard.ZstdDecompressor"] = None


def available(kind: int) -> bool:
    return kind in (NONE, GZIP) or (kind == ZSTD and zstandard is not None)


def parse_name(name: str) -> int:
    try:
        kind = NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown compression {name!r}; choose none, gzip or zstd") from None
    if not available(kind):
        raise ValueError("zstd compression needs the 'zstandard' package (msrpc[zstd])")
    return kind


def compress(kind: int, data: bytes) -> bytes:
    if kind == NONE:
        return data
    if kind == GZIP:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip container
        return c.compress(data) + c.flush()
    if kind == ZSTD:
        return _zstd_compressor().compress(data)
    raise ValueError(f"unknown compression {kind}")


def decompress(kind: int, data: bytes, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Inflate ``data``; ``DecodeError`` if it is corrupt or would exceed ``max_size``."""
    if kind == NONE:
        return data
    if kind == GZIP:
        d = zlib.decompressobj(31)
        try:
            out = d.decompress(data, max_size + 1)
        except zlib.error as e:
            raise DecodeError(f"corrupt gzip body: {e}") from None
        if len(out) > max_size:
            raise _too_big(max_size)
        if not d.eof:
            raise DecodeError("truncated gzip body")
        return out
    if kind == ZSTD:
        if zstandard is None:
            raise DecodeError("zstd body received but zstandard is not installed")
        # The common case in one pass: a frame that declares its size (ours do), within
        # the cap.  zstd checks the declared size against what the frame really holds.
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            declared = -1
        if declared > max_size:
            raise _too_big(max_size)
        if declared > 0:
            try:
                return _zstd_decompressor().decompress(data)
            except zstandard.ZstdError:
                pass  # the careful reading below names the problem
        try:
            with _zstd_decompressor().stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(max_size + 1)
            if len(out) > max_size:
                raise _too_big(max_size)
            # Frames of unknown size (other peers), empty or broken ones.  The reader
            # stops quietly where the input ends, even inside a frame.  Whether the frame
            # ended takes a second pass, bounded now that it is known to inflate to at
            # most max_size.
            check = _zstd_decompressor().decompressobj()
            check.decompress(data)
        except zstandard.ZstdError as e:
            raise DecodeError(f"corrupt zstd body: {e}") from None
        if not check.eof:
            raise DecodeError("truncated zstd body")
        return out
    raise DecodeError(f"unknown compression id {kind}")


def _too_big(max_size: int) -> DecodeError:
    return DecodeError(f"body inflates past the decompressed-size limit of {max_size} bytes")


def _zstd_compressor() -> "zstandard.ZstdCompressor":
    global _zstd_c
    if zstandard is None:
        raise ValueError("zstd compression needs the 'zstandard' package (msrpc[zstd])")
    if _zstd_c is None:
        _zstd_c = zstandard.ZstdCompressor(level=3)
    return _zstd_c


def _zstd_decompressor() -> "zstandard.ZstdDecompressor":
    global _zstd_d
    if _zstd_d is None:
        _zstd_d = zstandard.ZstdDecompressor()
    return _zstd_d
