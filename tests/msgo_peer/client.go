package main

// The client side, msgo's way: a new connection per call, one request, one response.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"msgopeer/model"
)

var lastRequestID int64

func call(addr, service, method string, args []any) (*MsRpcResponse, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := &MsRpcRequest{RequestId: atomic.AddInt64(&lastRequestID, 1), ServiceName: service,
		MethodName: method, Args: args}
	out, err := encodeFrame(msgRequest, req.RequestId, req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	f, err := readFrame(conn)
	if err != nil {
		return nil, err
	}
	if f.messageType != msgResponse {
		return nil, fmt.Errorf("answer of message type %d", f.messageType)
	}
	rsp := &MsRpcResponse{}
	if err := decodeBody(f.body, rsp); err != nil {
		return nil, err
	}
	return rsp, nil
}

// parseArg: "int64:7", "uint8:3", "float32:1.5", "string:7", "bool:true",
// "goods:{json}" (a *model.Goods), "any:[json]" (a []any of JSON values), "point:X,Y"
// (a main.Point); a bare
// integer is an int and anything else a string.
func parseArg(text string) (any, error) {
	kind, value, typed := strings.Cut(text, ":")
	if !typed {
		if n, err := strconv.Atoi(text); err == nil {
			return n, nil
		}
		return text, nil
	}
	bits := map[string]int{"int": 0, "int8": 8, "int16": 16, "int32": 32, "int64": 64}
	if size, ok := bits[kind]; ok {
		n, err := strconv.ParseInt(value, 10, 64)
		if err == nil && size > 0 && size < 64 && (n < -(1<<(size-1)) || n >= 1<<(size-1)) {
			err = errors.New("out of range for " + kind)
		}
		switch size {
		case 0:
			return int(n), err
		case 8:
			return int8(n), err
		case 16:
			return int16(n), err
		case 32:
			return int32(n), err
		}
		return n, err
	}
	switch kind {
	case "uint8":
		n, err := strconv.ParseUint(value, 10, 8)
		return uint8(n), err
	case "uint":
		n, err := strconv.ParseUint(value, 10, 64)
		return uint(n), err
	case "uint64":
		n, err := strconv.ParseUint(value, 10, 64)
		return n, err
	case "float64":
		return strconv.ParseFloat(value, 64)
	case "float32":
		f, err := strconv.ParseFloat(value, 32)
		return float32(f), err
	case "string":
		return value, nil
	case "bool":
		return strconv.ParseBool(value)
	case "goods":
		g := &model.Goods{}
		return g, json.Unmarshal([]byte(value), g)
	case "any":
		var v []any
		return v, json.Unmarshal([]byte(value), &v)
	case "point": // a main.Point: a registered Go type Python peers do not know
		x, y, _ := strings.Cut(value, ",")
		px, err := strconv.Atoi(x)
		if err != nil {
			return nil, err
		}
		py, err := strconv.Atoi(y)
		return Point{px, py}, err
	}
	return nil, errors.New("unknown argument type " + kind)
}

// report prints a response as one JSON line: the Go type of Data and Data as JSON.
func report(rsp *MsRpcResponse) string {
	data, err := json.Marshal(rsp.Data)
	if err != nil {
		data, _ = json.Marshal(fmt.Sprintf("%#v", rsp.Data))
	}
	line, _ := json.Marshal(map[string]any{
		"RequestId": rsp.RequestId, "Code": rsp.Code, "Msg": rsp.Msg,
		"Type": fmt.Sprintf("%T", rsp.Data), "Data": json.RawMessage(data)})
	return string(line)
}

// bench runs a closed loop of `concurrency` callers for `duration`, one connection per
// call, and returns calls made, failures and the seconds it took.
func bench(addr, service, method string, args []any, concurrency int,
	duration time.Duration) (int64, int64, float64) {
	var calls, failures int64
	deadline := time.Now().Add(duration)
	started := time.Now()
	done := make(chan struct{})
	for i := 0; i < concurrency; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for time.Now().Before(deadline) {
				rsp, err := call(addr, service, method, args)
				if err != nil || rsp.Code != 200 {
					atomic.AddInt64(&failures, 1)
				}
				atomic.AddInt64(&calls, 1)
			}
		}()
	}
	for i := 0; i < concurrency; i++ {
		<-done
	}
	return calls, failures, time.Since(started).Seconds()
}
