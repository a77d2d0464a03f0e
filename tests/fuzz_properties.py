"""
Properties of the parts of msrpc that read bytes from peers: the frame parser (``wire``),
body decompression (``compress``) and the codecs (``codec``, and ``gob`` for msgo peers).

Each property is a plain check function paired with the hypothesis strategy that feeds it
(a :class:`Property`), so the same properties run in two places without copies: briefly and
deterministically in the test suite (``tests/test_fuzz_*.py``, budget :data:`DETERMINISTIC`)
and at length, randomised, in the campaign (``scripts/fuzz``).

What must hold for hostile input is what DESIGN.md promises: the parser yields frames or
``FrameError`` and holds less than one frame; decompression yields at most its cap or
``DecodeError``; decoding yields a value built only from known types or ``DecodeError``,
within the codec's ``Limits``.  For well-formed input, everything comes back exactly as it was
sent, types included.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
import uuid
from typing import Annotated, Any, Callable, Iterator, Optional

import attr
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from msrpc import compress, gob
from msrpc.codec import JsonCodec, Limits, MsgpackCodec, TypeRegistry, _nests_within
from msrpc.errors import DecodeError, EncodeError, FrameError
from msrpc.wire import HEADER, HEADER_SIZE, MAGIC, VERSION, FrameParser, encode_frame


#: A check returns which way its example went ("decoded", "DecodeError", ...): the campaign
#: tallies these to show the inputs reach past the first checks.  Failing is raising.
Check = Callable[[Any], str]


@dataclass(frozen=True)
class Property:
    """A check that must hold for every input its strategy can draw."""

    name: str
    strategy: SearchStrategy[Any]
    check: Check

    def run(self, budget: settings, check: Optional[Callable[[Any], object]] = None) -> None:
        """Run ``check`` (by default the property's own) on inputs drawn under ``budget``."""
        run_check = check or self.check

        def example(value: Any) -> None:  # hypothesis wants tests that return None
            run_check(value)

        example.__name__ = example.__qualname__ = self.check.__name__  # for its reports
        budget(given(self.strategy)(example))()


#: Inputs here are meant to be large and slow to build now and then.
SUPPRESSED_HEALTH_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large,
                            HealthCheck.large_base_example]
#: The test suite's budget: small, and the same examples on every run.
DETERMINISTIC = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                         suppress_health_check=SUPPRESSED_HEALTH_CHECKS)


def _chunked(data: bytes, cuts: list[int]) -> tuple[bytes, ...]:
    """``data`` cut at the given offsets, as TCP might deliver it (empty reads included)."""
    bounds = [0, *sorted(cuts), len(data)]
    return tuple(data[a:b] for a, b in zip(bounds, bounds[1:]))


@st.composite
def _splits(draw: st.DrawFn, data: bytes) -> tuple[bytes, ...]:
    byte_by_byte = st.just(list(range(1, len(data))))
    return _chunked(data, draw(st.lists(st.integers(0, len(data)), max_size=12) | byte_by_byte))


@st.composite
def _mutated(draw: st.DrawFn, original: SearchStrategy[bytes]) -> bytes:
    """Well-formed bytes with a few bytes flipped, cut, inserted or dropped: hostile input
    that still gets past the first checks, unlike plain random bytes."""
    data = bytearray(draw(original))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif at < len(data):
            if action == "flip":
                data[at] = draw(st.integers(0, 255))
            elif action == "delete":
                del data[at]
            else:
                del data[at:]
    return bytes(data)


# =========================================================================== wire

Frame = tuple[int, int, int, int, bytes]

#: Small enough that oversized frames are common, large enough for real bodies.
_MAX_TEST_FRAME = 300
_BYTE = st.integers(0, 255)
_REQUEST_ID = st.integers(-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class StreamCase:
    """A byte stream as the reads that deliver it, for a parser with ``max_frame``."""

    max_frame: int
    chunks: tuple[bytes, ...]
    #: The frames the stream was built from, when it was built only from valid frames.
    frames: tuple[Frame, ...] = ()


def _frames(max_frame: int) -> SearchStrategy[Frame]:
    """Frames that fit ``max_frame``; header fields take every value the header can carry
    (the parser passes type, compression and serializer through without judging them)."""
    field_value = st.one_of(st.integers(0, 4), _BYTE)
    return st.tuples(field_value, field_value, field_value, _REQUEST_ID,
                     st.binary(max_size=max_frame - HEADER_SIZE))


@st.composite
def valid_streams(draw: st.DrawFn) -> StreamCase:
    max_frame = draw(st.integers(HEADER_SIZE, _MAX_TEST_FRAME))
    frames = tuple(draw(st.lists(_frames(max_frame), max_size=8)))
    data = b"".join(encode_frame(*frame) for frame in frames)
    return StreamCase(max_frame, draw(_splits(data)), frames)


@st.composite
def hostile_streams(draw: st.DrawFn) -> StreamCase:
    """Streams mixing valid frames, garbage, corrupted frames and headers with arbitrary
    fields (random lengths and bad magic or version included)."""
    max_frame = draw(st.integers(HEADER_SIZE, _MAX_TEST_FRAME))
    good = _frames(max_frame).map(lambda frame: encode_frame(*frame))
    header = st.builds(HEADER.pack, st.sampled_from([MAGIC, 0x00, 0xFF]) | _BYTE,
                       st.sampled_from([VERSION, 0, 2]) | _BYTE,
                       st.integers(0, max_frame + 2) | st.integers(0, 2**32 - 1),
                       _BYTE, _BYTE, _BYTE, _REQUEST_ID)
    segment = st.one_of(good, st.binary(max_size=64), header, _mutated(good))
    data = b"".join(draw(st.lists(segment, max_size=6)))
    return StreamCase(max_frame, draw(_splits(data)))


def reference_parse(data: bytes, max_frame: int) -> tuple[list[Frame], Optional[str], int]:
    """The obvious reading of a whole stream at once: its frames, why it must be dropped
    (a phrase of the ``FrameError`` message; None if it need not be) and the bytes left over
    for a frame still incomplete."""
    frames: list[Frame] = []
    offset = 0
    while len(data) - offset >= HEADER_SIZE:
        magic, version, length, mtype, comp, ser, rid = HEADER.unpack_from(data, offset)
        if magic != MAGIC:
            return frames, "bad magic byte", 0
        if version != VERSION:
            return frames, "unsupported protocol version", 0
        if length < HEADER_SIZE:
            return frames, "shorter than the header", 0
        if length > max_frame:
            return frames, "exceeds the limit", 0
        if offset + length > len(data):
            break
        frames.append((mtype, comp, ser, rid, data[offset + HEADER_SIZE:offset + length]))
        offset += length
    return frames, None, len(data) - offset


def _parser(max_frame: int) -> tuple[FrameParser, list[Frame]]:
    frames: list[Frame] = []
    return FrameParser(lambda *frame: frames.append(frame), max_frame), frames


def _assert_holds_less_than_a_frame(parser: FrameParser) -> None:
    """Memory stays bounded: less than one whole frame waits (so less than max_frame plus a
    header), and ``buffered`` tells the truth about it."""
    held = sum(map(len, parser._chunks))
    assert held == parser.buffered, (held, parser.buffered)
    assert parser.buffered < parser.max_frame, (parser.buffered, parser.max_frame)


def check_valid_frames_parse_back(case: StreamCase) -> str:
    """Valid frames, coalesced and split anywhere, come out exactly as sent, in order."""
    parser, frames = _parser(case.max_frame)
    for chunk in case.chunks:
        parser.feed(chunk)
        _assert_holds_less_than_a_frame(parser)
    assert frames == list(case.frames)
    assert (parser.frames, parser.buffered) == (len(case.frames), 0)
    return {0: "no frame", 1: "one frame"}.get(len(frames), "several frames")


def check_hostile_stream(case: StreamCase) -> str:
    """Any stream, split anywhere, gives frames then at most a ``FrameError``, never another
    exception; and exactly the frames and error of :func:`reference_parse`, however split."""
    parser, frames = _parser(case.max_frame)
    error: Optional[str] = None
    for chunk in case.chunks:
        try:
            parser.feed(chunk)
        except FrameError as e:
            error = str(e)
            break  # the connection is dropped: the parser's state no longer matters
        _assert_holds_less_than_a_frame(parser)
    expected, reason, leftover = reference_parse(b"".join(case.chunks), case.max_frame)
    assert frames == expected
    assert parser.frames == len(frames)
    if reason is None:
        assert error is None, error
        assert parser.buffered == leftover
        return "partial frame held" if leftover else "clean end"
    assert error is not None and reason in error, (reason, error)
    return f"FrameError: {reason}"


VALID_FRAMES = Property("wire.valid_frames", valid_streams(), check_valid_frames_parse_back)
HOSTILE_STREAM = Property("wire.hostile_stream", hostile_streams(), check_hostile_stream)


# =========================================================================== compress

_COMPRESSED_KINDS = st.sampled_from([compress.GZIP, compress.ZSTD])
_PAYLOADS = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda unit, times: unit * times, st.binary(min_size=1, max_size=6),
              st.integers(1, 3000)),  # compresses well: inflates past small caps
)


@dataclass(frozen=True)
class BodyCase:
    """A compressed body and the decompressed-size cap it is read with."""

    kind: int
    body: bytes
    cap: int


@st.composite
def compressed_bodies(draw: st.DrawFn) -> tuple[BodyCase, bytes]:
    """A well-formed compressed body with its original payload."""
    kind, payload = draw(_COMPRESSED_KINDS), draw(_PAYLOADS)
    cap = draw(st.integers(0, 2 * len(payload) + 1))
    return BodyCase(kind, compress.compress(kind, payload), cap), payload


@st.composite
def truncated_bodies(draw: st.DrawFn) -> BodyCase:
    kind, payload = draw(_COMPRESSED_KINDS), draw(_PAYLOADS)
    body = compress.compress(kind, payload)
    return BodyCase(kind, body[:draw(st.integers(0, len(body) - 1))], cap=1 << 17)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> BodyCase:
    kind = draw(st.one_of(_COMPRESSED_KINDS, st.just(compress.NONE), _BYTE))
    well_formed = st.builds(compress.compress, _COMPRESSED_KINDS, _PAYLOADS)
    body = draw(st.one_of(st.binary(max_size=300), _mutated(well_formed)))
    return BodyCase(kind, body, draw(st.integers(0, 5000)))


_KIND_NAMES = {compress.NONE: "none", compress.GZIP: "gzip", compress.ZSTD: "zstd"}


def check_compressed_round_trip(case_and_payload: tuple[BodyCase, bytes]) -> str:
    """A body inflates back to its payload when that fits the cap, else ``DecodeError``."""
    case, payload = case_and_payload
    kind = _KIND_NAMES[case.kind]
    try:
        out = compress.decompress(case.kind, case.body, case.cap)
    except DecodeError as e:
        assert len(payload) > case.cap, f"refused a body within the cap: {e}"
        return f"{kind}: beyond the cap, refused"
    assert len(payload) <= case.cap, "inflated past the cap"
    assert out == payload
    return f"{kind}: within the cap, inflated"


def check_truncated_body_refused(case: BodyCase) -> str:
    """A body cut short is a ``DecodeError``, never a silently shorter payload."""
    try:
        out = compress.decompress(case.kind, case.body, case.cap)
    except DecodeError:
        return f"{_KIND_NAMES[case.kind]}: refused"
    raise AssertionError(f"truncated body accepted as {len(out)} bytes")


def check_hostile_body(case: BodyCase) -> str:
    """Any bytes inflate to at most the cap or are a ``DecodeError``; no other exception."""
    kind = _KIND_NAMES.get(case.kind, "unknown kind")
    try:
        out = compress.decompress(case.kind, case.body, case.cap)
    except DecodeError:
        assert case.kind != compress.NONE
        return f"{kind}: DecodeError"
    if case.kind == compress.NONE:
        assert out is case.body
    else:
        assert len(out) <= case.cap, (len(out), case.cap)
    return f"{kind}: inflated"


COMPRESSED_ROUND_TRIP = Property("compress.round_trip", compressed_bodies(),
                                 check_compressed_round_trip)
TRUNCATED_BODY = Property("compress.truncated", truncated_bodies(),
                          check_truncated_body_refused)
HOSTILE_BODY = Property("compress.hostile_body", hostile_bodies(), check_hostile_body)


# =========================================================================== codec: types

#: The classes these properties register; a registry of their own keeps them out of
#: ``msrpc.codec.default_registry`` and every other test.
REGISTRY = TypeRegistry()


@REGISTRY.register(name="fuzz.Point")
@dataclass(frozen=True)
class Point:
    """Frozen, so hashable: it can be a dict key or a set member."""

    x: int
    label: str = ""


@REGISTRY.register(name="fuzz.Box")
@dataclass
class Box:
    content: Any
    extra: list[Any] = field(default_factory=list)


@REGISTRY.register(name="fuzz.Account")
@attr.define
class Account:
    """attrs, with a private attribute: it travels as ``_owner`` and is rebuilt via ``owner``."""

    _owner: Any
    balance: Any = None


@REGISTRY.register(name="fuzz.Pair")
@attr.frozen
class Pair:
    left: Any
    right: Any


@REGISTRY.register(name="fuzz.Colour")
class Colour(enum.Enum):
    RED = "red"
    GREEN = 2


#: Instances of :class:`Tripwire` built so far; decoding must never add one.
TRIPPED: list[Any] = []


@dataclass
class Tripwire:
    """A class a peer knows (it is registered elsewhere) but this side does not."""

    payload: Any = None

    def __post_init__(self) -> None:
        TRIPPED.append(self)


REGISTERED: tuple[type, ...] = (Point, Box, Account, Pair, Colour)

#: A peer's registry: the same classes under the same names, and :class:`Tripwire`.
ELSEWHERE = TypeRegistry()
for _cls in REGISTERED:
    ELSEWHERE.register(_cls, name=REGISTRY.name_of(_cls))
ELSEWHERE.register(Tripwire, name="fuzz.Tripwire")

#: The only types a decoder may build, besides the registered ones.
_PLAIN_TYPES: tuple[type, ...] = (
    type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
    uuid.UUID, Decimal, dt.datetime, dt.date, dt.time, dt.timedelta)


def _fields(obj: Any) -> Optional[list[str]]:
    """The attribute names of a registered dataclass or attrs instance (None otherwise)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj)]
    if attr.has(type(obj)):
        return [a.name for a in attr.fields(type(obj))]
    return None


def _children(obj: Any) -> list[Any]:
    """What a decoder had to build inside ``obj`` (dict keys included)."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    names = _fields(obj)
    return [getattr(obj, name) for name in names] if names is not None else []


def _walk(value: Any) -> Iterator[Any]:
    """``value`` and everything inside it."""
    stack = [value]
    while stack:
        obj = stack.pop()
        yield obj
        stack.extend(_children(obj))


def same(a: Any, b: Any) -> bool:
    """
    Equal, with exactly the same types all the way down.  ``==`` alone would let a list pass
    for a tuple and ``1`` for ``1.0`` or ``True``, and calls NaN unequal to itself.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()  # sign, digits, exponent, NaN kind: all of it
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):  # both codecs keep the order of a map
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, (dt.datetime, dt.time)):
        # An aware value may come back in another zone (msgpack sends UTC): same instant.
        return a == b and (a.utcoffset() is None) == (b.utcoffset() is None)
    if isinstance(a, enum.Enum):
        return a is b
    names = _fields(a)
    if names is not None:
        return all(same(getattr(a, name), getattr(b, name)) for name in names)
    return bool(a == b)


# Fixed offsets only: with zoneinfo zones, Python's equality is fold-sensitive across zones.
# Whole seconds only: CPython's datetime.fromisoformat() (C version, 3.10 to 3.13 at least)
# reads an offset of under a second, like +00:00:00.000001, as UTC (CPython gh-152079).  No
# real zone has one; historic zones do have offsets in seconds, which are kept.
_OFFSETS = st.one_of(
    st.just(dt.timezone.utc),
    st.builds(dt.timezone, st.integers(-86399, 86399).map(lambda s: dt.timedelta(seconds=s))))
# Kept a day away from the ends of datetime's range so the instant exists in UTC too.
_AWARE_DATETIMES = st.datetimes(min_value=dt.datetime(1, 1, 2),
                                max_value=dt.datetime(9999, 12, 30, 23, 59, 59, 999999),
                                timezones=_OFFSETS)
#: Every int msgpack can carry, big ones at its limits included.
MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)
_JSON_INTS = st.one_of(MSGPACK_INTS, st.integers(-(10**60), 10**60))
#: msgpack maps take any hashable key; JSON objects only strings.  Keys that look like the
#: JSON codec's own "$" tags are drawn often: such dicts must come back as dicts.
_JSON_KEYS = st.one_of(st.text(max_size=12),
                       st.sampled_from(["$set", "$type", "$fields", "$enum", "$value",
                                        "$dict", "$bytes", "$datetime", "$"]))


def _scalars(ints: SearchStrategy[int], hashable: bool) -> SearchStrategy[Any]:
    # NaNs stay out of hashables: sets and dict keys of NaNs are not worth the confusion,
    # and a signalling NaN Decimal cannot be hashed at all.
    return st.one_of(
        st.none(), st.booleans(), ints, st.floats(allow_nan=not hashable), st.text(),
        st.binary(), st.uuids(), st.decimals(allow_nan=not hashable), st.datetimes(),
        _AWARE_DATETIMES, st.dates(), st.times(timezones=st.none() | _OFFSETS),
        st.timedeltas(), st.sampled_from(Colour))


def _hashables(ints: SearchStrategy[int], tuples: bool) -> SearchStrategy[Any]:
    """Values fit to be dict keys and set members, nested registered frozen classes too."""
    def extend(children: SearchStrategy[Any]) -> SearchStrategy[Any]:
        options = [st.frozensets(children, max_size=4),
                   st.builds(Pair, children, children)]
        if tuples:
            options.append(st.lists(children, max_size=4).map(tuple))
        return st.one_of(*options)

    base = st.one_of(_scalars(ints, hashable=True), st.builds(Point, ints, st.text()))
    return st.recursive(base, extend, max_leaves=6)


def _values(ints: SearchStrategy[int], keys: SearchStrategy[Any], tuples: bool
            ) -> SearchStrategy[Any]:
    hashables = _hashables(ints, tuples)

    def extend(children: SearchStrategy[Any]) -> SearchStrategy[Any]:
        options = [
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=4),
            st.sets(hashables, max_size=4), st.frozensets(hashables, max_size=4),
            st.builds(Box, children, st.lists(children, max_size=3)),
            st.builds(Account, children, children),
            st.builds(Pair, children, children),
        ]
        if tuples:
            options.append(st.lists(children, max_size=5).map(tuple))
        return st.one_of(*options)

    return st.recursive(st.one_of(_scalars(ints, hashable=False), hashables), extend,
                        max_leaves=12)


_MSGPACK_HASHABLES = _hashables(MSGPACK_INTS, tuples=True)
#: Everything the msgpack codec carries, registered classes nested in containers and in
#: each other.  (Deferred only to keep short the repr hypothesis prints on a failure.)
msgpack_values = st.deferred(lambda: _values(MSGPACK_INTS, _MSGPACK_HASHABLES, tuples=True))
#: Everything the JSON codec carries so that it comes back as it was: no tuples (JSON has
#: only lists) and string keys.
json_values = st.deferred(lambda: _values(_JSON_INTS, _JSON_KEYS, tuples=False))

MSGPACK = MsgpackCodec(REGISTRY)
JSON = JsonCodec(REGISTRY)


def _round_trip(codec: Any, value: Any) -> str:
    back = codec.decode(codec.encode(value))
    assert same(value, back), back
    registered = any(type(obj) in REGISTERED for obj in _walk(value))
    return "with registered classes" if registered else "builtin types only"


def check_msgpack_round_trip(value: Any) -> str:
    """Every supported value comes back equal and of the same types (msgpack)."""
    return _round_trip(MSGPACK, value)


def check_json_round_trip(value: Any) -> str:
    """Every value JSON can carry comes back equal and of the same types (JSON)."""
    return _round_trip(JSON, value)


MSGPACK_ROUND_TRIP = Property("codec.msgpack_round_trip", msgpack_values,
                              check_msgpack_round_trip)
JSON_ROUND_TRIP = Property("codec.json_round_trip", json_values, check_json_round_trip)


# =========================================================================== codec: refusals

_UNENCODABLE = st.one_of(
    st.integers(2**64, 2**80), st.integers(-(2**80), -(2**63) - 1),  # beyond msgpack ints
    st.builds(Tripwire), st.builds(object),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1),  # lone surrogates
)


@st.composite
def unencodable(draw: st.DrawFn) -> tuple[bool, Any]:
    """(whether JSON can carry it anyway, a value with something unencodable inside)."""
    bad = draw(_UNENCODABLE)
    json_can = isinstance(bad, int)
    return json_can, draw(st.sampled_from([bad, [1, bad], {"k": bad}, Box(bad)]))


def check_unencodable_refused(case: tuple[bool, Any]) -> str:
    """What a codec cannot carry is an ``EncodeError`` (not a crash, not a half-written
    value), and the codec still works afterwards."""
    json_can, value = case
    for codec in (MSGPACK, JSON):
        if codec is JSON and json_can:
            continue
        try:
            codec.encode(value)
        except EncodeError:
            pass
        else:
            raise AssertionError(f"{codec.name} encoded {value!r}")
        assert codec.decode(codec.encode([1, "ok"])) == [1, "ok"]
    return "refused by msgpack only" if json_can else "refused by both"


UNENCODABLE = Property("codec.unencodable", unencodable(), check_unencodable_refused)

_TYPE_NAMES = st.one_of(
    st.sampled_from([*REGISTRY.names(), "fuzz.Tripwire",
                     f"{Tripwire.__module__}.{Tripwire.__qualname__}", "os.system",
                     "builtins.eval", "subprocess.Popen"]),
    st.text(max_size=12))
_FIELD_NAMES = st.one_of(
    st.sampled_from(["x", "label", "content", "extra", "_owner", "owner", "balance", "left",
                     "right", "payload", "__class__", "__init__"]),
    st.text(max_size=8))
_ISO_TEXT = st.one_of(
    st.datetimes().map(dt.datetime.isoformat), _AWARE_DATETIMES.map(dt.datetime.isoformat),
    st.dates().map(dt.date.isoformat), st.times().map(dt.time.isoformat),
    st.decimals().map(str), st.uuids().map(str),
    st.text(alphabet="0123456789-+:.TZeE naNIf", max_size=32))


def _raw_msgpack() -> SearchStrategy[Any]:
    """Trees msgpack itself can pack, with ext values shaped like the codec's (good and bad
    type names, fields, payloads) so that decoding gets past the first checks."""
    ext_codes = st.one_of(st.integers(1, 11), st.integers(0, 127))  # below 0: msgpack's own
    leaves = st.one_of(
        st.none(), st.booleans(), MSGPACK_INTS, st.floats(), st.text(max_size=16),
        st.binary(max_size=16),
        st.builds(msgpack.ExtType, ext_codes, st.binary(max_size=20)),
        st.builds(msgpack.ExtType, st.sampled_from([5, 6, 7, 8, 9]),
                  _ISO_TEXT.map(str.encode)),
        st.builds(msgpack.ExtType, st.just(5), st.binary(min_size=16, max_size=16)),
        st.builds(msgpack.Timestamp, st.integers(-(2**63), 2**63 - 1),
                  st.integers(0, 10**9 - 1)))
    keys = st.one_of(st.text(max_size=8), MSGPACK_INTS, st.binary(max_size=8), st.none())

    def extend(children: SearchStrategy[Any]) -> SearchStrategy[Any]:
        payload = st.one_of(
            st.tuples(_TYPE_NAMES, st.dictionaries(_FIELD_NAMES, children, max_size=3)),
            st.tuples(_TYPE_NAMES, children),
            st.lists(st.integers(-(10**12), 10**12), min_size=3, max_size=3),
            children)
        ext = st.builds(lambda code, inner: msgpack.ExtType(code, msgpack.packb(inner)),
                        ext_codes, payload)
        return st.one_of(st.lists(children, max_size=4),
                         st.dictionaries(keys, children, max_size=4), ext)

    return st.recursive(leaves, extend, max_leaves=10)


_JSON_TAGS = ["$set", "$frozenset", "$bytes", "$uuid", "$decimal", "$datetime", "$date",
              "$time", "$timedelta"]


def _raw_json() -> SearchStrategy[Any]:
    """JSON documents with the JSON codec's type tags in them, well and badly filled."""
    leaves = st.one_of(
        st.none(), st.booleans(), _JSON_INTS, st.floats(), st.text(max_size=16), _ISO_TEXT,
        st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode("ascii")),
        st.lists(st.integers(-(10**12), 10**12), min_size=3, max_size=3))

    def extend(children: SearchStrategy[Any]) -> SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8) | st.sampled_from(_JSON_TAGS), children,
                            max_size=4),
            st.builds(lambda name, fields: {"$type": name, "$fields": fields}, _TYPE_NAMES,
                      st.dictionaries(_FIELD_NAMES, children, max_size=3) | children),
            st.builds(lambda name, value: {"$enum": name, "$value": value}, _TYPE_NAMES,
                      children),
            st.builds(lambda tag, value: {tag: value}, st.sampled_from(_JSON_TAGS), children))

    return st.recursive(leaves, extend, max_leaves=10)


hostile_msgpack = st.one_of(
    st.binary(max_size=64),
    _mutated(_raw_msgpack().map(msgpack.packb)),
    _mutated(msgpack_values.map(MsgpackCodec(ELSEWHERE).encode)),
    _mutated(st.builds(Tripwire, msgpack_values).map(MsgpackCodec(ELSEWHERE).encode)))
hostile_json = st.one_of(
    st.binary(max_size=64),
    _mutated(_raw_json().map(lambda doc: json.dumps(doc).encode("utf-8"))),
    _mutated(json_values.map(JsonCodec(ELSEWHERE).encode)),
    _mutated(st.builds(Tripwire, json_values).map(JsonCodec(ELSEWHERE).encode)))


_REFUSED = object()


def _check_hostile_decode(codec: Any, data: bytes) -> Any:
    """The decoded value (``_REFUSED`` for a ``DecodeError``), after checking it was decoded
    safely: no unregistered class built, nothing but plain and registered types inside."""
    before = len(TRIPPED)
    try:
        value = codec.decode(data)
    except DecodeError:
        return _REFUSED
    finally:
        assert len(TRIPPED) == before, "an unregistered class was instantiated"
    for obj in _walk(value):
        assert type(obj) in _PLAIN_TYPES or type(obj) in REGISTERED, type(obj)
    return value


def check_msgpack_hostile_decode(data: bytes) -> str:
    """Any bytes decode to known types or a ``DecodeError``; what is accepted can be sent
    back and decodes the same."""
    value = _check_hostile_decode(MSGPACK, data)
    if value is _REFUSED:
        return "DecodeError"
    assert same(MSGPACK.decode(MSGPACK.encode(value)), value)
    return "decoded"


def check_json_hostile_decode(data: bytes) -> str:
    """Any bytes decode to known types or a ``DecodeError`` (JSON)."""
    return "DecodeError" if _check_hostile_decode(JSON, data) is _REFUSED else "decoded"


MSGPACK_HOSTILE = Property("codec.msgpack_hostile", hostile_msgpack,
                           check_msgpack_hostile_decode)
JSON_HOSTILE = Property("codec.json_hostile", hostile_json, check_json_hostile_decode)


# =========================================================================== codec: limits


@dataclass
class Extents:
    """The largest of each thing :class:`msrpc.codec.Limits` bounds, found in one value."""

    depth: int = 0
    container: int = 0
    string: int = 0
    binary: int = 0

    def within(self, limits: Limits) -> bool:
        return (self.depth <= limits.max_depth and self.container <= limits.max_container_len
                and self.string <= limits.max_str_len and self.binary <= limits.max_bin_len)


def extents(value: Any, *, envelopes: bool) -> Extents:
    """
    What a decoder with ``Limits`` sees of ``value``: nesting of containers and registered
    objects, and the longest container, string (UTF-8 bytes) and bytes.  With ``envelopes``
    (msgpack), the codec's own wrapping counts too, since the limits apply to every msgpack
    array, map and string in a body: a registered object travels as ``[name, {field: value}]``,
    an enum as ``[name, value]``, a timedelta as ``[days, seconds, microseconds]``.
    """
    found = Extents()

    def string(s: str) -> None:
        found.string = max(found.string, len(s.encode("utf-8")))

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, str):
            string(obj)
        elif isinstance(obj, bytes):
            found.binary = max(found.binary, len(obj))
        elif isinstance(obj, enum.Enum):
            if envelopes:
                found.container = max(found.container, 2)
                string(REGISTRY.name_of(type(obj)) or "")
                visit(obj.value, depth)
        elif isinstance(obj, dt.timedelta):
            if envelopes:
                found.container = max(found.container, 3)
        elif isinstance(obj, (list, tuple, set, frozenset, dict)) or _fields(obj) is not None:
            found.depth = max(found.depth, depth + 1)
            names = _fields(obj)
            if names is not None and envelopes:
                found.container = max(found.container, 2, len(names))
                string(REGISTRY.name_of(type(obj)) or "")
                for name in names:
                    string(name)
            elif names is None:
                found.container = max(found.container, len(obj))
            for child in _children(obj):
                visit(child, depth + 1)

    visit(value, 0)
    return found


@dataclass(frozen=True)
class LimitsCase:
    limits: Limits
    value: Any


def _limits_cases(values: SearchStrategy[Any]) -> SearchStrategy[LimitsCase]:
    limits = st.builds(Limits, max_depth=st.integers(1, 6), max_container_len=st.integers(1, 8),
                       max_str_len=st.integers(1, 24), max_bin_len=st.integers(1, 24))
    return st.builds(LimitsCase, limits, values)


def _check_limits(codec_type: type, case: LimitsCase, envelopes: bool) -> str:
    data = codec_type(REGISTRY).encode(case.value)
    found = extents(case.value, envelopes=envelopes)
    fits = found.within(case.limits)
    try:
        back = codec_type(REGISTRY, case.limits).decode(data)
    except DecodeError as e:
        assert not fits, f"refused a value within the limits: {e}"
        return "beyond the limits, refused"
    assert fits, f"accepted a value beyond the limits: {found}"
    assert same(case.value, back)
    return "within the limits, decoded"


def check_msgpack_limits(case: LimitsCase) -> str:
    """A body within every limit decodes; one beyond any limit, at any depth (inside tuples,
    sets and registered objects too), is a ``DecodeError``."""
    return _check_limits(MsgpackCodec, case, envelopes=True)


def check_json_limits(case: LimitsCase) -> str:
    """The same for JSON, whose limits apply to the decoded values."""
    return _check_limits(JsonCodec, case, envelopes=False)


MSGPACK_LIMITS = Property("codec.msgpack_limits", _limits_cases(msgpack_values),
                          check_msgpack_limits)
JSON_LIMITS = Property("codec.json_limits", _limits_cases(json_values), check_json_limits)


# =========================================================================== gob

#: The Go structs these properties send; a registry of their own, as the peer would have.
GOB_REGISTRY = gob.GobRegistry()


@GOB_REGISTRY.register("*fuzz.Item")
@dataclass
class GoItem:
    """A Go struct with a field of every kind; ``Next`` makes it recursive."""

    Id: gob.Int64 = gob.Int64(0)
    Name: str = ""
    Ok: bool = False
    Ratio: gob.Float32 = gob.Float32(0)
    Raw: bytes = b""
    Tags: list[str] = field(default_factory=list)
    Counts: dict[str, gob.Uint16] = field(default_factory=dict)
    Pair: Annotated[list[int], gob.array_of(gob.INT, 2)] = field(default_factory=lambda: [0, 0])
    When: Optional[dt.datetime] = None
    Data: Any = None
    Next: Optional["GoItem"] = None


@GOB_REGISTRY.register("fuzz.Key")
@dataclass(frozen=True)
class GoKey:
    """Hashable, so it can key a Go map."""

    A: int = 0
    B: str = ""


_GOB_INTS = {go: st.integers(*gob.types.int_range(go)).map(go.value_class or int)
             for go in (gob.INT, gob.INT8, gob.INT16, gob.INT32, gob.INT64, gob.UINT,
                        gob.UINT8, gob.UINT16, gob.UINT32, gob.UINT64)}
#: Aware datetimes Go can hold and Python can read back: an offset of exactly -1 minute is
#: one Go refuses to send.
_GOB_TIMES = _AWARE_DATETIMES.filter(lambda t: t.utcoffset() != -dt.timedelta(minutes=1))
_GOB_BASICS: dict[gob.GoType, SearchStrategy[Any]] = {
    **_GOB_INTS,
    gob.BOOL: st.booleans(),
    gob.FLOAT64: st.floats(allow_nan=False),
    gob.FLOAT32: st.floats(width=32, allow_nan=False).map(gob.Float32),
    gob.COMPLEX128: st.complex_numbers(allow_nan=False),
    gob.COMPLEX64: st.complex_numbers(width=64, allow_nan=False).map(gob.Complex64),
    gob.STRING: st.text(max_size=12),
    gob.BYTES: st.binary(max_size=12),
    gob.TIME: _GOB_TIMES,
}
#: Key types of Go maps, as Python sees them: hashable, and no 0.0 beside -0.0.
_GOB_KEYS = [gob.INT, gob.INT64, gob.UINT8, gob.STRING, gob.BOOL, gob.BYTES,
             GOB_REGISTRY.struct_for(GoKey)]


def gob_types(depth: int = 2) -> SearchStrategy[gob.GoType]:
    """Go types: the basics, registered structs, and slices, arrays, maps of them."""
    leaves = st.sampled_from([*_GOB_BASICS, gob.INTERFACE,
                              GOB_REGISTRY.struct_for(GoItem), GOB_REGISTRY.struct_for(GoKey)])
    if depth == 0:
        return leaves
    inner = gob_types(depth - 1)
    return st.one_of(
        leaves, inner.map(gob.types.slice_type),
        st.builds(gob.Array, inner, st.integers(0, 3)),
        st.builds(gob.Map, st.sampled_from(_GOB_KEYS), inner))


def gob_values(go: gob.GoType, depth: int = 2) -> SearchStrategy[Any]:
    """Python values of the Go type ``go``, as a decoder gives them back."""
    if go in _GOB_BASICS:
        return _GOB_BASICS[go]
    if go is gob.INTERFACE:
        if depth == 0:
            return st.none()
        return st.none() | gob_types(depth - 1).flatmap(
            lambda inner: gob_values(inner, depth - 1).map(lambda v: gob.typed(v, inner)))
    if isinstance(go, gob.Slice):
        return st.lists(gob_values(go.elem, depth), max_size=4)
    if isinstance(go, gob.Array):
        return st.lists(gob_values(go.elem, depth), min_size=go.length, max_size=go.length)
    if isinstance(go, gob.Map):
        return st.dictionaries(gob_values(go.key, 0), gob_values(go.elem, depth), max_size=3)
    if go.name == "fuzz.Key":
        return st.builds(GoKey, _GOB_INTS[gob.INT], st.text(max_size=6))
    next_items = st.none() if depth == 0 else st.none() | st.deferred(
        lambda: gob_values(go, depth - 1))
    return st.builds(
        GoItem, _GOB_INTS[gob.INT64], st.text(max_size=8), st.booleans(),
        _GOB_BASICS[gob.FLOAT32], st.binary(max_size=6), st.lists(st.text(max_size=4),
                                                                   max_size=3),
        st.dictionaries(st.text(max_size=4), _GOB_INTS[gob.UINT16], max_size=2),
        st.lists(_GOB_INTS[gob.INT], min_size=2, max_size=2), st.none() | _GOB_TIMES,
        gob_values(gob.INTERFACE, depth), next_items)


#: (Go type, value) pairs.  Go never sends an interface at the top level, only inside.
gob_cases = gob_types().filter(lambda go: go is not gob.INTERFACE).flatmap(
    lambda go: st.tuples(st.just(go), gob_values(go)))


def gob_same(a: Any, b: Any) -> bool:
    """:func:`same`, for what gob gives back: a value sent as some Go type (``typed``)
    comes back as the plain value, and a zero float may lose its sign (Go leaves zero
    fields out, -0.0 too)."""
    if isinstance(a, gob.Typed):
        return gob_same(a.value, b)
    if isinstance(a, float) and a == 0 and type(a) is type(b):
        return b == 0
    if isinstance(a, complex) and type(a) is type(b):
        return a == b
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(gob_same, a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and len(a) == len(b) and all(
            gob_same(ka, kb) and gob_same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    names = _fields(a)
    if names is not None:
        return type(a) is type(b) and all(gob_same(getattr(a, n), getattr(b, n))
                                          for n in names)
    return same(a, b)


def check_gob_round_trip(case: tuple[gob.GoType, Any]) -> str:
    """Every value of every Go type comes back equal, with its Go types (value classes,
    registered structs), through the stream Go itself would write."""
    go, value = case
    data = gob.encode(value, go, registry=GOB_REGISTRY)
    back = gob.decode(data, go, registry=GOB_REGISTRY)
    assert gob_same(value, back), back
    return f"{go.kind}"


def _gob_hostile_streams() -> SearchStrategy[bytes]:
    valid = gob_cases.map(lambda case: gob.encode(case[1], case[0], registry=GOB_REGISTRY))
    return st.one_of(st.binary(max_size=64), _mutated(valid))


#: What a decoder may hand back from gob bytes: plain values, Go value classes, registered
#: structs, and the bytes of Go-marshalled values it cannot read.
_GOB_BUILT: tuple[type, ...] = (
    type(None), bool, int, float, complex, str, bytes, list, tuple, dict, dt.datetime,
    gob.GobEncoded, GoItem, GoKey, *(t.value_class for t in _GOB_BASICS
                                     if isinstance(t, gob.Basic) and t.value_class))


def check_gob_hostile_decode(data: bytes) -> str:
    """Any bytes decode to plain values and registered structs, or a ``DecodeError``; a
    value accepted can be sent back as it came (as a Go interface{}: structs not declared
    come back as maps) and reads the same."""
    try:
        value = gob.decode(data, registry=GOB_REGISTRY)
    except DecodeError:
        return "DecodeError"
    for obj in _walk(value):
        assert type(obj) in _GOB_BUILT, type(obj)
    if any(isinstance(obj, gob.GobEncoded) for obj in _walk(value)):
        # Bytes Go marshalled itself carry only their definition's name, not the name
        # an interface would need: they cannot be sent back as they are.
        return "decoded, with Go-marshalled bytes"
    try:
        again = gob.encode(gob.typed(value, gob.INTERFACE) if value is not None else 0,
                           registry=GOB_REGISTRY)
    except EncodeError:
        return "decoded, not sendable as it is"  # e.g. a map with keys of mixed types
    assert value is None or gob_same(value, gob.decode(again, registry=GOB_REGISTRY))
    return "decoded"


@dataclass(frozen=True)
class GobLimitsCase:
    limits: Limits
    data: bytes


def check_gob_limits(case: GobLimitsCase) -> str:
    """Nothing beyond the limits is ever accepted: every container, string and bytes value
    of a decoded value is within them, and it nests no deeper than they allow."""
    try:
        value = gob.decode(case.data, registry=GOB_REGISTRY, limits=case.limits)
    except DecodeError:
        return "refused"
    found = extents(value, envelopes=False)
    limits = case.limits
    assert found.container <= limits.max_container_len, found
    assert found.string <= limits.max_str_len and found.binary <= limits.max_bin_len, found
    # A struct at the top is not nested in anything; the decoder counts from inside it.
    assert found.depth <= limits.max_depth + 1, found
    return "within the limits, decoded"


GOB_ROUND_TRIP = Property("gob.round_trip", gob_cases, check_gob_round_trip)
GOB_HOSTILE = Property("gob.hostile", _gob_hostile_streams(), check_gob_hostile_decode)
GOB_LIMITS = Property("gob.limits", st.builds(
    GobLimitsCase,
    st.builds(Limits, max_depth=st.integers(1, 4), max_container_len=st.integers(1, 4),
              max_str_len=st.integers(1, 8), max_bin_len=st.integers(1, 8)),
    gob_cases.map(lambda case: gob.encode(case[1], case[0], registry=GOB_REGISTRY))),
    check_gob_limits)


@dataclass(frozen=True)
class WalkCase:
    max_depth: int
    budget: int
    value: Any


def check_nesting_walk(case: WalkCase) -> str:
    """The walk that checks the depth of long bodies (instead of scanning their bytes)
    agrees with the decoder's reference measure, or says it ran out of budget."""
    within = _nests_within(case.value, case.max_depth, case.budget)
    if within is None:
        return "budget exhausted"
    depth = extents(case.value, envelopes=False).depth
    assert within == (depth <= case.max_depth), (within, depth, case.max_depth)
    return "within" if within else "too deep"


NESTING_WALK = Property("codec.nesting_walk",
                        st.builds(WalkCase, st.integers(1, 6),
                                  st.one_of(st.just(10**9), st.integers(0, 20)),
                                  msgpack_values),
                        check_nesting_walk)


#: Every property, in the order the campaign reports them.
PROPERTIES: tuple[Property, ...] = (
    VALID_FRAMES, HOSTILE_STREAM,
    COMPRESSED_ROUND_TRIP, TRUNCATED_BODY, HOSTILE_BODY,
    MSGPACK_ROUND_TRIP, JSON_ROUND_TRIP, UNENCODABLE, MSGPACK_HOSTILE, JSON_HOSTILE,
    MSGPACK_LIMITS, JSON_LIMITS, NESTING_WALK,
    GOB_ROUND_TRIP, GOB_HOSTILE, GOB_LIMITS,
)
