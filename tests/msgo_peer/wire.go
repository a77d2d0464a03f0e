package main

// msgo's TCP wire: a 17-byte big-endian header, then gzip(gob(body)); one request per
// connection.  Same struct names and field types as msgo's rpc package.

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
)

const (
	magicNumber byte = 0x1d
	version     byte = 0x01
	headerLen        = 17
	maxFrame         = 16 << 20

	msgRequest  byte = 0
	msgResponse byte = 1
)

type MsRpcRequest struct {
	RequestId   int64
	ServiceName string
	MethodName  string
	Args        []any
}

type MsRpcResponse struct {
	RequestId     int64
	Code          int16
	Msg           string
	CompressType  byte
	SerializeType byte
	Data          any
}

// encodeFrame: a fresh gob encoder per body, as msgo's GobSerializer.
func encodeFrame(messageType byte, requestID int64, body any) ([]byte, error) {
	var raw bytes.Buffer
	if err := gob.NewEncoder(&raw).Encode(body); err != nil {
		return nil, err
	}
	var zipped bytes.Buffer
	w := gzip.NewWriter(&zipped)
	if _, err := w.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	frame := make([]byte, headerLen, headerLen+zipped.Len())
	frame[0], frame[1] = magicNumber, version
	binary.BigEndian.PutUint32(frame[2:6], uint32(headerLen+zipped.Len()))
	frame[6], frame[7], frame[8] = messageType, 0, 0 // gzip, gob
	binary.BigEndian.PutUint64(frame[9:], uint64(requestID))
	return append(frame, zipped.Bytes()...), nil
}

type frame struct {
	messageType byte
	requestID   int64
	body        []byte // gunzipped
}

// readFrame reads one frame as msgo does: magic checked, the body always gunzipped.
func readFrame(r io.Reader) (*frame, error) {
	header := make([]byte, headerLen)
	if _, err := io.ReadFull(r, header); err != nil {
		return nil, err
	}
	if header[0] != magicNumber {
		return nil, errors.New("magic number error")
	}
	full := binary.BigEndian.Uint32(header[2:6])
	if full < headerLen || full > maxFrame {
		return nil, fmt.Errorf("bad frame length %d", full)
	}
	body := make([]byte, full-headerLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxFrame))
	if err != nil {
		return nil, err
	}
	return &frame{header[6], int64(binary.BigEndian.Uint64(header[9:])), raw}, nil
}

func decodeBody(raw []byte, into any) error {
	return gob.NewDecoder(bytes.NewReader(raw)).Decode(into)
}
