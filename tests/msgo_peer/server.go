package main

// A msgo-style server: one request per connection; a missing method or an argument of
// the wrong Go type panics, and the panic is recovered by closing the connection without
// an answer, exactly as msgo's readHandle does.

import (
	"errors"
	"log"
	"net"
	"reflect"
	"strconv"
	"sync"
	"time"

	"msgopeer/model"
)

type CalcService struct{}

func (*CalcService) Add(a, b int) int { return a + b }

func (*CalcService) Div(a, b int) (int, error) {
	if b == 0 {
		return 0, errors.New("division by zero")
	}
	return a / b, nil
}

// Echo returns its argument as it arrived (its Go type included).
func (*CalcService) Echo(v any) any { return v }

type GoodsService struct{}

func (*GoodsService) Find(id int64) *model.Result {
	return &model.Result{Code: 200, Msg: "success", Data: &model.Goods{
		Id: id, Name: "goods-" + strconv.FormatInt(id, 10), Price: 9.5,
		Tags:  []string{"new"},
		Added: time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)}}
}

// Save takes a registered struct and answers with what it got.
func (*GoodsService) Save(g *model.Goods) string {
	return g.Name + "@" + strconv.FormatInt(g.Id, 10) + "+" + strconv.Itoa(len(g.Tags))
}

// limiter: a token bucket like golang.org/x/time/rate with no wait (msgo answers 700
// when its Limiter.WaitN times out).
type limiter struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (l *limiter) allow() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens += now.Sub(l.last).Seconds() * l.rate
	if l.tokens > l.burst {
		l.tokens = l.burst
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

type server struct {
	ln       net.Listener
	services map[string]any
	limit    *limiter
}

func newServer(addr string) (*server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &server{ln: ln, services: map[string]any{
		"calc":  &CalcService{},
		"goods": &GoodsService{},
	}}, nil
}

func (s *server) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(conn)
	}
}

func (s *server) handle(conn net.Conn) {
	defer conn.Close()
	defer func() {
		if err := recover(); err != nil {
			log.Println("readHandle recover", err) // msgo: the connection just closes
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	rsp := s.answer(conn)
	out, err := encodeFrame(msgResponse, rsp.RequestId, rsp)
	if err != nil {
		log.Println("encode response:", err)
		return
	}
	_, _ = conn.Write(out)
}

func (s *server) answer(conn net.Conn) *MsRpcResponse {
	if !s.limit.allow() {
		return &MsRpcResponse{Code: 700, Msg: "rate: Wait(n=1) would exceed context deadline"}
	}
	f, err := readFrame(conn)
	if err != nil {
		return &MsRpcResponse{Code: 500, Msg: err.Error()}
	}
	if f.messageType != msgRequest {
		return &MsRpcResponse{Code: 500, Msg: "no message type"}
	}
	req := &MsRpcRequest{}
	if err := decodeBody(f.body, req); err != nil {
		return &MsRpcResponse{Code: 500, Msg: err.Error()}
	}
	service, ok := s.services[req.ServiceName]
	if !ok {
		return &MsRpcResponse{Code: 500, Msg: "no service found"} // RequestId 0, as msgo
	}
	rsp := &MsRpcResponse{RequestId: req.RequestId}
	method := reflect.ValueOf(service).MethodByName(req.MethodName)
	if method.IsNil() { // panics on the zero Value of a missing method, as msgo
		return &MsRpcResponse{Code: 500, Msg: "nil method"}
	}
	args := make([]reflect.Value, 0, len(req.Args))
	for _, arg := range req.Args {
		args = append(args, reflect.ValueOf(arg)) // no conversion: wrong types panic
	}
	results := method.Call(args)
	if len(results) == 0 {
		rsp.Code = 200
		return rsp
	}
	if err, ok := results[len(results)-1].Interface().(error); ok && err != nil {
		rsp.Code, rsp.Msg = 500, err.Error()
		return rsp
	}
	rsp.Code, rsp.Data = 200, results[0].Interface()
	return rsp
}
