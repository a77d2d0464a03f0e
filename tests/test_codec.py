"""The typed codec (DESIGN.md section 3): round trips, registration, refusal, limits."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import attr
import msgpack
from twisted.trial.unittest import TestCase

from msrpc.codec import (
    EXT_OBJECT, JsonCodec, Limits, MsgpackCodec, TypeRegistry, UnknownEnum, UnknownObject,
    default_registry, register,
)
from msrpc.errors import DecodeError, EncodeError

types = TypeRegistry()


@types.register(name="test.Point")
@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0


@types.register(name="test.Shape")
@dataclass
class Shape:
    name: str
    points: list[Point] = field(default_factory=list)
    tags: tuple[str, ...] = ()


@types.register(name="test.Account")
@attr.s(auto_attribs=True)
class Account:
    _owner: str
    balance: Decimal = Decimal("0")


@types.register(name="test.Color")
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class NotRegistered:
    secret: str


@types.register(name="test.Built")
@dataclass
class Built:
    """Counts how many times it is built."""

    label: str
    built = 0

    def __post_init__(self) -> None:
        Built.built += 1


VALUES: list[Any] = [
    None, True, False, 0, -1, 2**62, 1.5, "text", "ünïcødé", b"\x00\xffbytes",
    [1, [2, [3]]], {"a": {"b": [1, 2]}}, (1, "two", (3.0,)), {1, 2, 3}, frozenset({"a"}),
    uuid.UUID("12345678-1234-5678-1234-567812345678"), Decimal("3.14159"),
    dt.datetime(2026, 11, 25, 12, 30, 5, 123456),
    dt.datetime(2026, 11, 25, 12, 30, 5, 123456, tzinfo=dt.timezone.utc),
    dt.date(2026, 11, 25), dt.time(13, 14, 15), dt.timedelta(days=2, seconds=3, microseconds=4),
    Point(1, 2), Shape("tri", [Point(0), Point(1, 1)], ("a", "b")),
    Account("ann", Decimal("10.50")), Color.BLUE,
    {"nested": [Shape("s", [Point(5)]), {"p": Point(7, 8)}]},
]


class MsgpackRoundTripTests(TestCase):
    codec = MsgpackCodec(types)

    def test_every_supported_value_comes_back_equal_and_same_type(self) -> None:
        for value in VALUES:
            back = self.codec.decode(self.codec.encode(value))
            self.assertEqual(back, value)
            self.assertIs(type(back), type(value), repr(value))

    def test_nested_registered_classes_decode_into_their_classes(self) -> None:
        back = self.codec.decode(self.codec.encode(Shape("s", [Point(1, 2)], ("t",))))
        self.assertIsInstance(back.points[0], Point)
        self.assertIsInstance(back.tags, tuple)

    def test_aware_datetime_travels_as_msgpack_timestamp(self) -> None:
        moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        raw = msgpack.unpackb(self.codec.encode(moment))
        self.assertIsInstance(raw, msgpack.Timestamp)

    def test_aware_datetimes_keep_every_microsecond(self) -> None:
        # msgpack 1.0.x's Timestamp.from_datetime rounded these through a float.
        for moment in (dt.datetime(2024, 4, 16, 8, 43, 9, 420317, tzinfo=dt.timezone.utc),
                       dt.datetime(3000, 1, 1, 0, 0, 0, 999999, tzinfo=dt.timezone.utc),
                       dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.timezone.utc),
                       dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)):
            self.assertEqual(self.codec.decode(self.codec.encode(moment)), moment)

    def test_dict_keys_may_be_ints_and_tuples(self) -> None:
        value = {1: "a", (2, 3): "b"}
        self.assertEqual(self.codec.decode(self.codec.encode(value)), value)

    def test_registered_class_travels_by_its_name(self) -> None:
        ext = msgpack.unpackb(self.codec.encode(Point(1, 2)))
        self.assertEqual(ext.code, EXT_OBJECT)
        self.assertEqual(msgpack.unpackb(ext.data), ["test.Point", {"x": 1, "y": 2}])

    def test_unregistered_subclass_of_builtin_travels_as_the_builtin(self) -> None:
        class Tag(str):
            pass

        back = self.codec.decode(self.codec.encode([Tag("x")]))
        self.assertIs(type(back[0]), str)


class JsonRoundTripTests(TestCase):
    codec = JsonCodec(types)

    def test_every_value_without_tuples_round_trips(self) -> None:
        # JSON has no tuple: tuples (and the Shape whose tags are one) come back as lists.
        for value in VALUES:
            if isinstance(value, tuple) or "Shape" in repr(value):
                continue
            back = self.codec.decode(self.codec.encode(value))
            self.assertEqual(back, value)
            self.assertIs(type(back), type(value), repr(value))

    def test_tuples_become_lists(self) -> None:
        self.assertEqual(self.codec.decode(self.codec.encode((1, 2))), [1, 2])

    def test_output_is_plain_json(self) -> None:
        import json
        self.assertEqual(json.loads(self.codec.encode({"p": Point(1, 2)})),
                         {"p": {"$type": "test.Point", "$fields": {"x": 1, "y": 2}}})

    def test_unknown_tagged_type_is_a_decode_error_naming_it(self) -> None:
        error = self.assertRaises(DecodeError, self.codec.decode,
                                  b'{"$type": "evil.Thing", "$fields": {}}')
        self.assertIn("'evil.Thing'", str(error))

    def test_malformed_json_is_a_decode_error(self) -> None:
        self.assertRaises(DecodeError, self.codec.decode, b"{not json")


class RefusalTests(TestCase):
    codec = MsgpackCodec(types)

    def forged(self, name: str, fields: Any) -> bytes:
        return msgpack.packb(msgpack.ExtType(EXT_OBJECT, msgpack.packb([name, fields])))

    def test_unknown_type_name_is_a_decode_error_naming_it(self) -> None:
        error = self.assertRaises(DecodeError, self.codec.decode,
                                  self.forged("os.system", {"command": "rm -rf /"}))
        self.assertIn("unknown type 'os.system'", str(error))

    def test_a_class_registered_elsewhere_is_not_known_here(self) -> None:
        other = MsgpackCodec(TypeRegistry())
        self.assertRaises(DecodeError, other.decode, self.codec.encode(Point(1)))

    def test_unexpected_fields_are_refused(self) -> None:
        error = self.assertRaises(DecodeError, self.codec.decode,
                                  self.forged("test.Point", {"x": 1, "__class__": 2}))
        self.assertIn("__class__", str(error))

    def test_missing_required_fields_are_refused(self) -> None:
        self.assertRaises(DecodeError, self.codec.decode, self.forged("test.Point", {}))

    def test_unknown_ext_code_is_refused(self) -> None:
        self.assertRaises(DecodeError, self.codec.decode,
                          msgpack.packb(msgpack.ExtType(99, b"x")))

    def test_corrupt_payloads_are_decode_errors(self) -> None:
        for data in (b"\xc1", b"\x92\x01", msgpack.packb(1) + b"extra",
                     msgpack.packb(msgpack.ExtType(5, b"short")), b""):
            self.assertRaises(DecodeError, self.codec.decode, data)

    def test_unregistered_class_cannot_be_encoded(self) -> None:
        error = self.assertRaises(EncodeError, self.codec.encode, NotRegistered("s"))
        self.assertIn("register it", str(error))

    def test_encoder_is_usable_after_a_failed_encode(self) -> None:
        self.assertRaises(EncodeError, self.codec.encode, [1, NotRegistered("s")])
        self.assertEqual(self.codec.decode(self.codec.encode([1, 2])), [1, 2])


class KeepUnknownTests(TestCase):
    """A tool's registry (``keep_unknown``) shows types it never registered, inertly."""

    def test_unknown_names_decode_to_inert_records_in_both_codecs(self) -> None:
        value = [Shape("tri", [Point(1)]), Color.RED]
        for codec, tool in ((MsgpackCodec(types), MsgpackCodec(TypeRegistry(keep_unknown=True))),
                            (JsonCodec(types), JsonCodec(TypeRegistry(keep_unknown=True)))):
            shown = tool.decode(codec.encode(value))
            self.assertEqual(shown, [
                UnknownObject("test.Shape", {"name": "tri", "points": [
                    UnknownObject("test.Point", {"x": 1, "y": 0})], "tags": ()
                    if codec.name == "msgpack" else []}),
                UnknownEnum("test.Color", "red")], codec.name)
            self.assertEqual(repr(shown[1]), "test.Color('red')")

    def test_unknown_records_encode_back_to_the_same_name_and_fields(self) -> None:
        for codec_type in (MsgpackCodec, JsonCodec):
            tool = codec_type(TypeRegistry(keep_unknown=True))
            encoded = tool.encode(tool.decode(codec_type(types).encode(Point(3, 4))))
            self.assertEqual(codec_type(types).decode(encoded), Point(3, 4))

    def test_a_payload_that_is_not_a_field_map_is_still_refused(self) -> None:
        tool = MsgpackCodec(TypeRegistry(keep_unknown=True))
        self.assertRaises(DecodeError, tool.decode,
                          msgpack.packb(msgpack.ExtType(EXT_OBJECT, msgpack.packb(["x.Y", 1]))))

    def test_services_refuse_unknown_names_by_default(self) -> None:
        self.assertFalse(default_registry.keep_unknown)


class RegistrationTests(TestCase):
    def test_same_name_for_another_class_is_refused(self) -> None:
        registry = TypeRegistry()

        @registry.register(name="a.B")
        @dataclass
        class First:
            x: int

        @dataclass
        class Second:
            x: int

        self.assertRaises(ValueError, registry.register, Second, name="a.B")

    def test_registering_twice_is_harmless(self) -> None:
        registry = TypeRegistry()
        registry.register(Point, name="p")
        registry.register(Point, name="p")
        self.assertEqual(registry.names(), ["p"])

    def test_only_dataclasses_attrs_and_enums_can_be_registered(self) -> None:
        self.assertRaises(TypeError, TypeRegistry().register, dict)

    def test_default_name_is_module_and_qualname(self) -> None:
        registry = TypeRegistry()
        registry.register(NotRegistered)
        self.assertEqual(registry.name_of(NotRegistered), f"{__name__}.NotRegistered")

    def test_module_level_register_uses_the_default_registry(self) -> None:
        @dataclass
        class Local:
            v: int

        register(Local, name="tests.codec.Local")
        self.addCleanup(default_registry.unregister, Local)
        codec = MsgpackCodec()
        self.assertEqual(codec.decode(codec.encode(Local(3))), Local(3))


class LimitTests(TestCase):
    def nested(self, depth: int) -> Any:
        value: Any = []
        for _ in range(depth - 1):
            value = [value]
        return value

    def test_nesting_deeper_than_the_limit_is_refused(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=20))
        self.assertEqual(codec.decode(codec.encode(self.nested(20))), self.nested(20))
        error = self.assertRaises(DecodeError, codec.decode, codec.encode(self.nested(21)))
        self.assertIn("deeper than 20", str(error))

    def test_nesting_through_registered_classes_counts(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=10))
        value: Any = Point(1)
        for _ in range(12):
            value = Shape("s", [value])  # type: ignore[list-item]
        self.assertRaises(DecodeError, codec.decode, codec.encode(value))

    def test_nesting_inside_dict_keys_counts(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=5))
        key: Any = "k"
        for _ in range(4):
            key = (key,)
        self.assertEqual(codec.decode(codec.encode({key: 1})), {key: 1})  # 5 levels
        error = self.assertRaises(DecodeError, codec.decode, codec.encode({(key,): 1}))
        self.assertIn("deeper than 5", str(error))

    def test_nesting_limit_holds_in_long_bodies(self) -> None:
        # Long bodies are checked by walking the decoded value, not by scanning bytes.
        blob = b"\x9f" * 10_000  # bytes that look like nesting to a byte scan
        for codec in (MsgpackCodec(types, Limits(max_depth=20)),
                      JsonCodec(types, Limits(max_depth=20))):
            within = {"blob": blob, "deep": self.nested(19)}
            self.assertEqual(codec.decode(codec.encode(within)), within)
            key: Any = "k"
            for _ in range(19):
                key = (key,)  # 19 levels of tuples under a map (msgpack: as its key) in a list
            for beyond in ({"blob": blob, "deep": self.nested(20)},
                           [blob, {"k": [key]} if isinstance(codec, JsonCodec) else {key: 1}],
                           [blob, [Shape("s", self.nested(18))]]):
                error = self.assertRaises(DecodeError, codec.decode, codec.encode(beyond))
                self.assertIn("deeper than 20", str(error))

    def test_nesting_limit_holds_in_long_bodies_of_many_small_values(self) -> None:
        # Too many values to walk cheaply: the byte scan decides, as for short bodies.
        codec = MsgpackCodec(types, Limits(max_depth=20))
        many = ["word"] * 5_000
        self.assertEqual(codec.decode(codec.encode([many, self.nested(18)])),
                         [many, self.nested(18)])
        self.assertRaises(DecodeError, codec.decode, codec.encode([many, self.nested(20)]))

    def test_json_nesting_limit(self) -> None:
        codec = JsonCodec(types, Limits(max_depth=5))
        self.assertRaises(DecodeError, codec.decode, b"[[[[[[1]]]]]]")
        self.assertEqual(codec.decode(b"[[[[1]]]]"), [[[[1]]]])

    def test_json_container_string_and_bytes_limits(self) -> None:
        codec = JsonCodec(types, Limits(max_container_len=10, max_str_len=100, max_bin_len=50))
        within = [list(range(10)), "é" * 50, b"x" * 50, {"k" * 100: {Point(i) for i in range(9)}}]
        self.assertEqual(codec.decode(codec.encode(within)), within)
        for beyond in (list(range(11)), {str(i): i for i in range(11)}, {"k" * 101: 1},
                       "é" * 51, b"x" * 51, [{Point(i) for i in range(11)}]):
            self.assertRaises(DecodeError, codec.decode, codec.encode(beyond))

    def test_container_length_limit(self) -> None:
        codec = MsgpackCodec(types, Limits(max_container_len=10))
        self.assertEqual(len(codec.decode(codec.encode(list(range(10))))), 10)
        self.assertRaises(DecodeError, codec.decode, codec.encode(list(range(11))))

    def test_string_length_limit(self) -> None:
        codec = MsgpackCodec(types, Limits(max_str_len=100))
        self.assertRaises(DecodeError, codec.decode, codec.encode("x" * 101))

    def test_limits_hold_inside_tuples_sets_and_registered_objects(self) -> None:
        # Their contents travel as ext payloads, which msgpack does not check for us.
        codec = MsgpackCodec(types, Limits(max_container_len=10, max_str_len=100))
        self.assertEqual(codec.decode(codec.encode(tuple(range(10)))), tuple(range(10)))
        for value in (tuple(range(11)), {frozenset(range(11))}, ("x" * 101,),
                      Shape("x" * 101), Shape("s", [Point(i) for i in range(11)])):
            self.assertRaises(DecodeError, codec.decode, codec.encode(value))

    def test_declared_length_beyond_the_buffer_is_refused_without_allocating(self) -> None:
        # An array32 header claiming 2**31 items followed by nothing.
        self.assertRaises(DecodeError, MsgpackCodec(types).decode, b"\xdd\x80\x00\x00\x00")

    def test_limits_must_be_positive(self) -> None:
        self.assertRaises(ValueError, Limits, max_depth=0)


class CountedDecodeTests(TestCase):
    """msgpack bodies of 257 bytes to 4 KiB are decoded counting their containers: a few
    containers prove the nesting limit holds without a byte scan."""

    def nested(self, depth: int) -> Any:
        return LimitTests.nested(self, depth)  # type: ignore[arg-type]

    def test_a_body_of_few_containers_is_not_scanned(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=20))
        body = codec.encode({"blob": b"\x9f" * 1000, "items": [1, 2, 3]})

        def scanned(data: bytes) -> bool:
            raise AssertionError("the body was scanned")

        codec._may_nest_deeper = scanned  # type: ignore[method-assign]
        self.assertEqual(codec.decode(body), {"blob": b"\x9f" * 1000, "items": [1, 2, 3]})

    def test_nesting_beyond_the_limit_is_refused_in_counted_bodies(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=20))
        within = {"blob": b"x" * 900, "deep": self.nested(19)}
        self.assertEqual(codec.decode(codec.encode(within)), within)
        key: Any = "k"
        for _ in range(20):
            key = (key,)  # through ext payloads (tuples), as a map key
        for beyond in ({"blob": b"x" * 900, "deep": self.nested(21)},
                       {"blob": b"x" * 900, "deep": {key: 1}},
                       [b"x" * 900, Shape("s", self.nested(19))]):
            body = codec.encode(beyond)
            self.assertTrue(256 < len(body) <= 4096)
            error = self.assertRaises(DecodeError, codec.decode, body)
            self.assertIn("deeper than 20", str(error))

    def test_bodies_of_many_containers_are_scanned_and_walked(self) -> None:
        codec = MsgpackCodec(types, Limits(max_depth=20))
        pairs = [[i, i] for i in range(100)]
        self.assertEqual(codec.decode(codec.encode(pairs)), pairs)
        self.assertGreater(codec._scan_next, 0)  # the next few are scanned at once
        self.assertEqual(codec.decode(codec.encode(pairs)), pairs)
        self.assertRaises(DecodeError, codec.decode, codec.encode([pairs, self.nested(20)]))

    def test_a_registered_class_is_built_once(self) -> None:
        codec = MsgpackCodec(types)
        Built.built = 0
        value = [b"x" * 1000, Built("once")]
        self.assertEqual(codec.decode(codec.encode(value)), value)
        self.assertEqual(Built.built, 2)  # the one encoded and the one decoded

    def test_malformed_counted_bodies_get_the_plain_decoders_error(self) -> None:
        codec = MsgpackCodec(types)
        body = codec.encode({"blob": b"x" * 1000})
        error = self.assertRaises(DecodeError, codec.decode, body[:-1])
        self.assertIn("malformed msgpack", str(error))
        error = self.assertRaises(DecodeError, codec.decode, body + b"\x01")
        self.assertIn("trailing bytes", str(error))


class JsonLookalikeTests(TestCase):
    """Plain dicts shaped like the JSON codec's tags stay plain dicts."""

    def test_dicts_that_look_like_tags_round_trip(self) -> None:
        codec = JsonCodec()
        for value in ({"$set": [1]}, {"$set": 5}, {"$type": "x", "$fields": {}},
                      {"$dict": [["a", 1]]}, [{"$bytes": "AA=="}, {"$uuid": "nope"}],
                      {"outer": {"$decimal": "1.5"}}, {"$": None}):
            self.assertEqual(codec.decode(codec.encode(value)), value)

    def test_lookalikes_inside_real_tags_round_trip(self) -> None:
        codec = JsonCodec()
        value = {"when": {1, 2}, "plain": {"$set": [3]}, "raw": b"\x00"}
        decoded = codec.decode(codec.encode(value))
        self.assertEqual(decoded, value)
        self.assertIsInstance(decoded["plain"], dict)
