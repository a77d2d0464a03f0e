package main

// Reference gob encodings for the Python codec's byte-for-byte tests.  Gob's type ids
// are process-wide, so each vector is encoded by a process of its own (this program
// runs itself once per vector), as a fresh msgo peer would.  Maps have one key: Go
// writes map entries in random order.

import (
	"bytes"
	"encoding/gob"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"time"

	"msgopeer/model"
)

type Point struct{ X, Y int }

type Node struct {
	Val  int
	Next *Node
}

type Kinds struct {
	B   bool
	I   int
	I8  int8
	U   uint
	U16 uint16
	F   float64
	F32 float32
	C   complex128
	S   string
	Bs  []byte
	L   []int
	A   [2]string
	M   map[string]int
	P   Point
	PP  *Point
	Any any
	T   time.Time
}

type vector struct {
	Name string `json:"name"`
	Hex  string `json:"hex"`
}

func vectors(only string) []vector {
	tokyo := time.FixedZone("", 9*3600)
	odd := time.FixedZone("", -(3*3600 + 30*60 + 15))
	cases := []struct {
		name  string
		value any
	}{
		{"int", 7},
		{"int_negative", -129},
		{"int64_max", int64(math.MaxInt64)},
		{"int64_min", int64(math.MinInt64)},
		{"int8", int8(-128)},
		{"uint64_max", uint64(math.MaxUint64)},
		{"uint8", uint8(255)},
		{"float64", 17.0},
		{"float64_small", 1e-300},
		{"float64_negative_zero", math.Copysign(0, -1)},
		{"float32", float32(0.1)},
		{"complex128", complex(1, -2)},
		{"complex64", complex64(complex(0.1, 3))},
		{"bool", true},
		{"string", "héllo, 世界"},
		{"string_empty", ""},
		{"bytes", []byte{0, 1, 255}},
		{"ints", []int{1, -2, 300}},
		{"strings", []string{"a", ""}},
		{"int64s_empty", []int64{}},
		{"array", [3]int{1, 2, 3}},
		{"map", map[string]int{"a": 1}},
		{"map_int_strings", map[int][]string{3: {"x", "y"}}},
		{"point", Point{22, 33}},
		{"point_zero", Point{}},
		{"nodes", Node{1, &Node{2, &Node{3, nil}}}},
		{"kinds_zero", Kinds{}},
		{"kinds", Kinds{B: true, I: -1, I8: 8, U: 9, U16: 65535, F: 2.5, F32: 1.25,
			C: complex(0, 1), S: "s", Bs: []byte("b"), L: []int{0}, A: [2]string{"", "z"},
			M: map[string]int{"": 0}, P: Point{1, 0}, PP: &Point{0, 2}, Any: int32(5),
			T: time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)}},
		{"time_utc", time.Date(2024, 1, 2, 3, 4, 5, 600000000, time.UTC)},
		{"time_tokyo", time.Date(2024, 1, 2, 3, 4, 5, 0, tokyo)},
		{"time_odd_offset", time.Date(1900, 12, 31, 23, 59, 59, 999999000, odd)},
		{"interfaces", []any{1, "x", int64(2), nil, []int{1}, 2.5, uint8(3), []byte("b")}},
		{"interface_struct", []any{&model.Goods{Id: 7, Name: "g", Tags: []string{"t"}}}},
		{"interface_nested", []any{[]any{&model.Goods{Id: 1}}, &model.Result{Code: 200,
			Data: &model.Goods{Id: 2, Added: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)}}}},
		{"interface_map", map[string]any{"k": []any{map[string]int{"n": 1}}}},
		{"request", &MsRpcRequest{RequestId: 1, ServiceName: "goods", MethodName: "Save",
			Args: []any{&model.Goods{Id: 3, Name: "n", Price: 1.5}}}},
		{"response", &MsRpcResponse{RequestId: 9, Code: 200, Data: &model.Result{Code: 200,
			Msg: "success", Data: &model.Goods{Id: 9, Name: "goods-9"}}}},
	}
	out := make([]vector, 0, len(cases))
	for _, c := range cases {
		out = append(out, vector{c.name, ""})
		if only != "" && c.name != only {
			continue
		}
		var b bytes.Buffer
		if err := gob.NewEncoder(&b).Encode(c.value); err != nil {
			panic(fmt.Sprintf("%s: %v", c.name, err))
		}
		out[len(out)-1].Hex = hex.EncodeToString(b.Bytes())
	}
	return out
}

// printVectors prints every vector as JSON, each encoded by a child process.
func printVectors() {
	all := vectors("")
	for i := range all {
		output, err := exec.Command(os.Args[0], "vector", all[i].Name).Output()
		if err != nil {
			panic(fmt.Sprintf("%s: %v", all[i].Name, err))
		}
		all[i].Hex = strings.TrimSpace(string(output))
	}
	data, _ := json.MarshalIndent(all, "", " ")
	fmt.Println(string(data))
}

// printVector prints one vector's hex, encoded by this (fresh) process.
func printVector(name string) {
	for _, v := range vectors(name) {
		if v.Name == name {
			fmt.Println(v.Hex)
			return
		}
	}
	panic("no vector " + name)
}

// decodeCheck decodes hex gob from Python into the Go type named, and prints it back
// with %#v-like detail (JSON), or the decode error.
func decodeCheck(kind, data string) string {
	raw, err := hex.DecodeString(data)
	if err != nil {
		return "ERROR " + err.Error()
	}
	var target any
	switch kind {
	case "request":
		target = &MsRpcRequest{}
	case "response":
		target = &MsRpcResponse{}
	case "kinds":
		target = &Kinds{}
	case "nodes":
		target = &Node{}
	case "any":
		var v any
		target = &v
	default:
		return "ERROR unknown kind " + kind
	}
	if err := decodeBody(raw, target); err != nil {
		return "ERROR " + err.Error()
	}
	line, err := json.Marshal(target)
	if err != nil {
		return fmt.Sprintf("OK %#v", target)
	}
	return "OK " + string(line)
}
