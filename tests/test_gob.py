"""
The gob codec (``msrpc.gob``) against Go's own bytes, its type model, and hostile input.

Go's output comes from two places: the exchanges msgo's reference peer captured
(``frames.txt`` of the team's shared notes, copied below), and ``tests/data/
gob_vectors.json``, written by ``tests/msgo_peer vectors`` (a Go process per vector);
``test_msgo_e2e`` checks that file still matches what Go writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

from twisted.trial.unittest import TestCase

from msrpc import gob
from msrpc.codec import Limits, UnknownObject
from msrpc.errors import DecodeError, EncodeError
from msrpc.gob import (
    BYTES, FLOAT32, INT, INT8, INT64, INTERFACE, STRING, UINT8, Float32, Int8, Int16, Int64,
    Uint, Uint8, Uint64, array_of, map_of, slice_of, typed,
)
from tests.gob_models import (
    ANYS, REGISTRY, VECTORS, Goods, MsRpcRequest, MsRpcResponse, Point, Result, untyped,
)

GO_VECTORS: dict[str, bytes] = {
    v["name"]: bytes.fromhex(v["hex"])
    for v in json.loads((Path(__file__).parent / "data" / "gob_vectors.json").read_text())}

# msgo's four reference exchanges (frames.txt), gunzipped.  Each Go encoder was fresh,
# but the Go process had already built the request's types (ids 64, 65) before the
# response's (66...).
_REQUEST_TYPES = (
    "507f0301010c4d735270635265717565737401ff800001040109526571756573744964010400010b53657276"
    "6963654e616d65010c00010a4d6574686f644e616d65010c0001044172677301ff820000001cff810201010e"
    "5b5d696e74657266616365207b7d01ff82000110000")
_RESPONSE_TYPES = (
    "66ff830301010d4d73527063526573706f6e736501ff8400010601095265717565737449640104000104436f"
    "646501040001034d7367010c00010c436f6d707265737354797065010600010d53657269616c697a65547970"
    "650106000104446174610110000000")
MSGO_BODIES = {
    "calc.Add request": _REQUEST_TYPES + (
        "022ff800102010463616c630103416464010203696e740402000403696e740402000600"),
    "calc.Add response": _RESPONSE_TYPES + "12ff84010201fe01900403696e740402000a00",
    "goods.Find request": _REQUEST_TYPES + (
        "01eff8001040105676f6f6473010446696e64010105696e7436340402000e00"),
    "goods.Find response": _RESPONSE_TYPES + (
        "45ff84010401fe0190040d2a6d6f64656c2e526573756c74ff8503010106526573756c7401ff8600010301"
        "04436f646501040001034d7367010c00010444617461011000000053ff863e01fe01900107737563636573"
        "73010c2a6d6f64656c2e476f6f6473ff8703010105476f6f647301ff880001020102496401040001044e61"
        "6d65010c00000010ff880c010e0107676f6f64732d37000000"),
    "calc.Div request": _REQUEST_TYPES + (
        "022ff800106010463616c630103446976010203696e740402000203696e740402000000"),
    "calc.Div response": _RESPONSE_TYPES + (
        "1bff84010601fe03e801106469766973696f6e206279207a65726f00"),
    "nosuch.X request": _REQUEST_TYPES + "010ff80010801066e6f7375636801015800",
    "nosuch.X response": _RESPONSE_TYPES + (
        "19ff8402fe03e801106e6f207365727669636520666f756e6400"),
}


@dataclasses.dataclass
class MsgoGoods:
    """The reference's ``model.Goods``: only Id and Name."""

    Id: Int64 = Int64(0)
    Name: str = ""


MSGO = gob.GobRegistry()
MSGO.register("*model.Goods", MsgoGoods)
MSGO.register("*model.Result", Result)


TREES = gob.GobRegistry()


@TREES.register("main.Tree")
@dataclasses.dataclass
class Tree:
    """Refers to itself, and to a class not defined yet when it is registered."""

    Kids: list[Tree] = dataclasses.field(default_factory=list)
    Leaf: Optional[Leaf] = None


@dataclasses.dataclass
class Leaf:
    V: int = 0


def encode(value: Any, go: Optional[gob.GoType] = None, **options: Any) -> bytes:
    return gob.encode(value, go, registry=REGISTRY, **options)


def decode(data: bytes, go: Optional[gob.GoType] = None, **options: Any) -> Any:
    return gob.decode(data, go, registry=REGISTRY, **options)


class GoVectorTests(TestCase):
    def test_the_snapshot_holds_every_vector(self) -> None:
        self.assertEqual(sorted(GO_VECTORS), sorted(VECTORS))

    def test_every_go_vector_decodes_to_its_python_value_and_types(self) -> None:
        for name, data in GO_VECTORS.items():
            value, go = VECTORS[name]
            decoded = decode(data, go)
            self.assertEqual((decoded, type(decoded)), (untyped(value), type(untyped(value))),
                             name)

    def test_every_python_value_encodes_to_the_bytes_go_writes(self) -> None:
        for name, data in GO_VECTORS.items():
            value, go = VECTORS[name]
            self.assertEqual(encode(value, go).hex(), data.hex(), name)

    def test_negative_zero_keeps_its_sign(self) -> None:
        self.assertEqual(math.copysign(1, decode(GO_VECTORS["float64_negative_zero"])), -1)

    def test_undeclared_structs_come_back_as_dicts_by_go_field_name(self) -> None:
        self.assertEqual(decode(GO_VECTORS["point"]), {"X": 22, "Y": 33})
        self.assertEqual(decode(GO_VECTORS["nodes"]),
                         {"Val": 1, "Next": {"Val": 2, "Next": {"Val": 3}}})


class MsgoReferenceFrameTests(TestCase):
    """The bodies msgo's reference peer sent, decoded and written again byte for byte."""

    def body(self, name: str) -> bytes:
        return bytes.fromhex(MSGO_BODIES[name])

    def test_requests_decode_with_their_go_argument_types(self) -> None:
        request_type = MSGO.struct_for(MsRpcRequest)
        self.assertEqual(gob.decode(self.body("calc.Add request"), request_type,
                                    registry=MSGO),
                         MsRpcRequest(Int64(1), "calc", "Add", [2, 3]))
        find = gob.decode(self.body("goods.Find request"), request_type, registry=MSGO)
        self.assertEqual(find.Args, [Int64(7)])
        self.assertIs(type(find.Args[0]), Int64)
        self.assertEqual(gob.decode(self.body("nosuch.X request"), request_type,
                                    registry=MSGO).Args, [])

    def test_a_type_defined_inside_an_interface_value_is_read(self) -> None:
        response = gob.decode(self.body("goods.Find response"),
                              MSGO.struct_for(MsRpcResponse), registry=MSGO)
        self.assertEqual(response, MsRpcResponse(
            RequestId=Int64(2), Code=Int16(200),
            Data=Result(Code=200, Msg="success", Data=MsgoGoods(Int64(7), "goods-7"))))

    def test_every_body_encodes_to_the_same_bytes(self) -> None:
        for name in MSGO_BODIES:
            cls = MsRpcRequest if name.endswith("request") else MsRpcResponse
            value = gob.decode(self.body(name), MSGO.struct_for(cls), registry=MSGO)
            encoder = gob.Encoder(MSGO, first_id=64 if cls is MsRpcRequest else 66)
            self.assertEqual(encoder.encode(value).hex(), self.body(name).hex(), name)


class ValueClassTests(TestCase):
    def test_integers_are_range_checked_like_the_go_type(self) -> None:
        self.assertEqual(Int8(-128), -128)
        self.assertRaises(OverflowError, Int8, 128)
        self.assertRaises(OverflowError, Uint, -1)
        self.assertEqual(Uint64(2**64 - 1), 2**64 - 1)
        self.assertRaises(OverflowError, Uint64, 2**64)

    def test_float32_is_rounded_as_go_rounds_it(self) -> None:
        self.assertEqual(Float32(0.1), 0.10000000149011612)
        self.assertRaises(OverflowError, Float32, 1e39)
        self.assertTrue(math.isinf(Float32(math.inf)))

    def test_they_print_as_numbers_and_repr_as_their_type(self) -> None:
        self.assertEqual((str(Int64(7)), f"{Int64(7)}", repr(Int64(7))), ("7", "7", "Int64(7)"))
        self.assertEqual(json.dumps([Int64(7), Float32(0.5)]), "[7, 0.5]")

    def test_arithmetic_gives_plain_numbers(self) -> None:
        self.assertIs(type(Int64(1) + 1), int)


class TypeModelTests(TestCase):
    def test_annotations_name_go_types(self) -> None:
        cases = [(int, "int"), (Int64, "int64"), (float, "float64"), (Float32, "float32"),
                 (bytes, "[]uint8"), (list[Uint8], "[]uint8"), (list[Int64], "[]int64"),
                 (list[Any], "[]interface {}"), (dict[str, Any], "map[string]interface {}"),
                 (dict[int, list[str]], "map[int][]string"), (Optional[str], "string"),
                 (tuple[int, ...], "[]int"), (Annotated[list[int], array_of(INT, 3)], "[3]int"),
                 (dt.datetime, "time.Time"), (Any, "interface {}")]
        for hint, name in cases:
            self.assertEqual(gob.go_type(hint).name, name, hint)

    def test_uint8_slices_are_go_byte_slices(self) -> None:
        self.assertIs(slice_of(Uint8), BYTES)

    def test_a_class_without_registration_is_a_struct_named_after_it(self) -> None:
        struct = REGISTRY.struct_for(Point)
        self.assertEqual((struct.name, [f.go_name for f in struct.fields]),
                         ("Point", ["X", "Y"]))

    def test_snake_case_fields_travel_camel_cased_unless_named(self) -> None:
        @dataclasses.dataclass
        class Order:
            request_id: Int64
            id: int
            total_price: float = dataclasses.field(default=0.0, metadata={"gob": "Total"})
            _private: int = 0

        fields = REGISTRY.struct_for(Order).fields
        self.assertEqual([(f.go_name, f.type.name) for f in fields],
                         [("RequestId", "int64"), ("Id", "int"), ("Total", "float64")])

    def test_a_name_registered_for_another_class_is_refused(self) -> None:
        registry = gob.GobRegistry()
        registry.register("*model.Goods", Goods)
        self.assertRaises(ValueError, registry.register, "*model.Goods", Point)
        self.assertRaises(ValueError, registry.register, "int", Point)

    def test_unsupported_annotations_are_refused_at_registration(self) -> None:
        @dataclasses.dataclass
        class Odd:
            x: set[Any] | int

        self.assertEqual(REGISTRY.struct_for(Odd).fields[0].type, INTERFACE)

        @dataclasses.dataclass
        class Bad:
            x: type

        self.assertRaises(TypeError, gob.GobRegistry().register, "main.Bad", Bad)
        self.assertRaises(TypeError, lambda: REGISTRY.struct_for(Bad).fields)

    def test_a_struct_may_refer_to_itself_and_to_classes_defined_later(self) -> None:
        tree = Tree(Kids=[Tree(Leaf=Leaf(1)), Tree()], Leaf=Leaf(2))
        go = TREES.struct_for(Tree)
        self.assertEqual(gob.decode(gob.encode(tree, registry=TREES), go, registry=TREES),
                         tree)

    def test_composite_names_of_known_types_are_understood(self) -> None:
        for name in ("[]int64", "[3]string", "map[string]interface {}", "map[int][]uint8",
                     "[]*model.Goods"):
            found = REGISTRY.by_name(name)
            self.assertIsNotNone(found, name)
            self.assertEqual(found.name, name)  # type: ignore[union-attr]
        for name in ("*model.Unknown", "[]main.Point", "interface {}", "map[]int", "chan int"):
            self.assertIsNone(REGISTRY.by_name(name), name)


class DecodeBehaviourTests(TestCase):
    def test_an_unregistered_interface_name_is_a_decode_error_naming_it(self) -> None:
        data = GO_VECTORS["interface_struct"]
        with self.assertRaises(DecodeError) as caught:
            gob.decode(data, ANYS, registry=gob.GobRegistry())
        self.assertIn("'*model.Goods'", str(caught.exception))
        self.assertIn("register", str(caught.exception))

    def test_a_field_of_another_go_type_is_a_decode_error_naming_the_field(self) -> None:
        @dataclasses.dataclass
        class Goods2:
            Id: str = ""

        with self.assertRaises(DecodeError) as caught:
            decode(encode(Goods(Id=Int64(1))), REGISTRY.struct_for(Goods2))
        self.assertEqual(str(caught.exception), "field Goods2.Id: gob type mismatch: the "
                                                "peer sends int where string is expected")

    def test_fields_match_by_name_extra_ones_dropped_missing_ones_zero(self) -> None:
        @dataclasses.dataclass
        class Slim:
            Name: str = "default"
            Stock: Int16 = Int16(3)
            Tags: Optional[list[str]] = None

        slim = decode(encode(Goods(Id=Int64(5), Price=2.0)), REGISTRY.struct_for(Slim))
        self.assertEqual(slim, Slim(Name="", Stock=Int16(0), Tags=None))

    def test_structs_with_no_field_in_common_do_not_match(self) -> None:
        self.assertRaises(DecodeError, decode, encode(Point(1, 2)),
                          REGISTRY.struct_for(Goods))

    def test_a_value_too_big_for_the_declared_type_is_refused(self) -> None:
        self.assertRaises(DecodeError, decode, encode(300), INT8)
        self.assertRaises(DecodeError, decode, encode(1e39), FLOAT32)
        self.assertEqual(decode(encode(-5), INT8), Int8(-5))

    def test_an_interface_name_must_fit_the_value_it_names(self) -> None:
        good = encode(["x"], ANYS)
        bad = good.replace(b"\x06string\x0c", b"\x03int\x0c")  # "int" naming a string
        bad = bytes([bad[0]]) + bad[1:12] + bytes([bad[12] - 3]) + bad[13:]
        self.assertEqual(decode(good), ["x"])
        with self.assertRaises(DecodeError) as caught:
            decode(bad)
        self.assertIn("sends string where int is expected", str(caught.exception))

    def test_struct_map_keys_need_a_hashable_class(self) -> None:
        @dataclasses.dataclass(frozen=True)
        class Key:
            A: int = 0

        go = map_of(REGISTRY.struct_for(Key), INT)
        data = encode({Key(1): 1}, go)
        self.assertEqual(decode(data, go), {Key(1): 1})
        self.assertRaises(DecodeError, decode, data)  # undeclared, the key would be a dict

    def test_arrays_as_map_keys_come_back_as_tuples(self) -> None:
        data = encode({(1, 2): "x"}, map_of(array_of(INT, 2), STRING))
        self.assertEqual(decode(data), {(1, 2): "x"})


class KeepUnknownTests(TestCase):
    """A tool's registry (``msrpc call``'s) shows Go structs it has no class for."""

    def test_an_unregistered_struct_decodes_inertly_and_encodes_back_the_same(self) -> None:
        registry = gob.GobRegistry(keep_unknown=True)
        data = GO_VECTORS["interface_nested"]
        value = gob.decode(data, ANYS, registry=registry)
        result = value[1]
        self.assertIsInstance(result, UnknownObject)
        self.assertEqual((result.type_name, result.fields["Code"]), ("*model.Result", 200))
        self.assertEqual(result.fields["Data"].type_name, "*model.Goods")
        again = gob.encode([result], ANYS, registry=registry)  # names kept in interfaces
        self.assertEqual(gob.decode(again, ANYS, registry=registry), [result])

    def test_other_unregistered_names_decode_as_their_values(self) -> None:
        registry = gob.GobRegistry(keep_unknown=True)
        data = encode([typed([1, 2], slice_of(INT64, name="main.IDs"))], ANYS)
        self.assertEqual(gob.decode(data, registry=registry), [[1, 2]])
        self.assertRaises(DecodeError, gob.decode, data, registry=gob.GobRegistry())


class EncodeBehaviourTests(TestCase):
    def test_an_unregistered_class_inside_an_interface_is_refused_by_name(self) -> None:
        with self.assertRaises(EncodeError) as caught:
            encode([Point(1, 2)], ANYS)
        self.assertIn("Point is not registered", str(caught.exception))

    def test_a_wrong_python_type_for_a_field_is_refused_naming_the_field(self) -> None:
        with self.assertRaises(EncodeError) as caught:
            encode(Goods(Name=5))  # type: ignore[arg-type]
        self.assertEqual(str(caught.exception), "field Goods.Name: cannot send a int as Go "
                                                "string")

    def test_out_of_range_numbers_are_refused(self) -> None:
        self.assertRaises(EncodeError, encode, 2**63)
        self.assertRaises(EncodeError, encode, 256, UINT8)
        self.assertRaises(EncodeError, encode, -1, gob.UINT)
        self.assertRaises(EncodeError, encode, 1e39, FLOAT32)

    def test_values_python_cannot_say_in_go_are_refused(self) -> None:
        self.assertRaises(EncodeError, encode, None)
        self.assertRaises(EncodeError, encode, object())
        self.assertRaises(EncodeError, encode, dt.datetime(2024, 1, 1))  # naive
        self.assertRaises(EncodeError, encode, True, INT)
        self.assertRaises(EncodeError, encode, [1, 2], array_of(INT, 3))
        self.assertRaises(EncodeError, encode, typed(1, INT8), INT64)

    def test_a_list_that_contains_itself_is_refused(self) -> None:
        loop: list[Any] = [1]
        loop.append(loop)
        self.assertRaises(EncodeError, encode, loop, ANYS)

    def test_python_values_take_their_default_go_types(self) -> None:
        for value, name in [(7, "int"), (True, "bool"), (1.5, "float64"), ("s", "string"),
                            (b"b", "[]uint8"), ([1, 2], "[]int"), (["a", 1], "[]interface {}"),
                            ({"a": 1}, "map[string]int"), ({}, "map[string]interface {}"),
                            (Uint8(1), "uint8"), (Goods(), "*model.Goods"),
                            (dt.datetime.now(dt.timezone.utc), "time.Time")]:
            infer = gob.Encoder(REGISTRY).infer(value)
            self.assertEqual(infer.name if not isinstance(infer, gob.Struct) else
                             REGISTRY.name_of(Goods), name, value)

    def test_round_trips_keep_go_types(self) -> None:
        value = [Int64(1), Uint8(2), Float32(0.5), Int16(-3), "s", None, [Int64(4)],
                 {"k": Uint64(5)}, Goods(Id=Int64(9), Tags=["a"])]
        self.assertEqual(decode(encode(value, ANYS)), value)
        self.assertEqual([type(v) for v in decode(encode(value, ANYS))],
                         [type(v) for v in value])


#: Bytes no decoder may accept: (what is wrong, hex).
MALFORMED = [
    ("empty", ""),
    ("a message longer than the data", "05ff80"),
    ("a value of an undefined type", "03ff8000"),
    ("a reserved type id defined", "0b7d020102ff80000110000000"),
    ("a uint wider than 8 bytes", "0af7010203040506070809"),
    ("a count beyond the data", "0b7f020102ff80000104000005ff80006401"),
    ("a string running past its message", "0406000a61"),
    ("extra data after a type definition", "0c7f020102ff8000011000000000"),
    ("a definition with two kinds", "0b7f0101020201ff80000110000000"),
    ("a slice type without element", "097f020102ff8000000000"),
    ("a struct field number out of range", "1e7f03010105506f696e7401ff800001020101580104000101590104000000"
                                           "000005ff800301020000"),
    ("trailing bytes", "030400020000"),
    ("an interface name that is not UTF-8", "0b7f020102ff8000011000000008ff800001" "02ff"
                                            "fe0000"),
    ("a negative type id for a value", "03ff8100"),
]


class HostileInputTests(TestCase):
    def test_malformed_streams_are_decode_errors(self) -> None:
        for what, data in MALFORMED:
            try:
                decoded = decode(bytes.fromhex(data))
            except DecodeError:
                continue
            self.fail(f"{what}: decoded as {decoded!r}")

    def test_every_truncation_of_every_go_vector_is_a_decode_error(self) -> None:
        for name, data in GO_VECTORS.items():
            for end in range(len(data)):
                try:
                    decode(data[:end], VECTORS[name][1])
                except DecodeError:
                    continue
                self.fail(f"{name} cut at {end} of {len(data)} bytes decoded")

    def test_the_same_type_defined_twice_is_refused(self) -> None:
        definition = bytes.fromhex("0b7f020102ff8000011000")
        self.assertRaises(DecodeError, decode, definition + definition + b"\x03\xff\x80\x00")

    def test_nesting_is_bounded(self) -> None:
        deep: Any = 1
        for _ in range(30):
            deep = typed([deep], ANYS)
        data = encode(deep)
        self.assertEqual(decode(data, limits=Limits(max_depth=61)), untyped(deep))
        self.assertRaises(DecodeError, decode, data, limits=Limits(max_depth=50))

    def test_a_recursive_slice_type_is_bounded_by_the_depth_limit(self) -> None:
        # type T []T, and a value nested far deeper than the limit allows
        definition = bytes.fromhex("0c7f020102ff800001ff800000")
        value = b"\xff\x80\x00" + b"\x01" * 500 + b"\x00"
        data = definition + b"\xfe" + len(value).to_bytes(2, "big") + value
        with self.assertRaises(DecodeError) as caught:
            decode(data)
        self.assertIn("nests deeper than 100", str(caught.exception))

    def test_containers_and_strings_are_bounded_by_the_limits(self) -> None:
        small = Limits(max_container_len=3, max_str_len=4, max_bin_len=4)
        self.assertEqual(decode(encode([1, 2, 3]), limits=small), [1, 2, 3])
        self.assertRaises(DecodeError, decode, encode([1, 2, 3, 4]), limits=small)
        self.assertRaises(DecodeError, decode, encode({str(i): i for i in range(4)}),
                          limits=small)
        self.assertRaises(DecodeError, decode, encode("12345"), limits=small)
        self.assertRaises(DecodeError, decode, encode(b"12345"), limits=small)

    def test_a_huge_declared_count_allocates_nothing(self) -> None:
        # []int claiming 2**62 elements in a 20-byte stream
        data = bytes.fromhex("0b7f020102ff800001040000") + bytes.fromhex(
            "0cff8000f8400000000000000002")
        with self.assertRaises(DecodeError) as caught:
            decode(data)
        self.assertIn("exceeds the data left", str(caught.exception))
