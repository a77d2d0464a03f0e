// msgo-peer: a Go peer speaking msgo's TCP RPC (github.com/mszlu521/msgo rpc/tcp.go's
// wire: 17-byte header + gzip(gob)), standard library only, for msrpc's tests and
// benchmarks.
//
//	msgo-peer serve [-etcd URL] [-nacos URL -group G -idc IDC] [-rate R -burst B] ADDR
//	msgo-peer call [-etcd URL | -nacos URL -group G] ADDR|SERVICE SERVICE METHOD ARG...
//	msgo-peer bench -c 8 -d 2s ADDR SERVICE METHOD ARG...
//	msgo-peer vectors                  reference gob encodings (JSON), a process each
//	msgo-peer decode KIND HEX          decode Python's gob into a Go type (JSON)
package main

import (
	"encoding/gob"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"msgopeer/model"
)

func init() {
	// as in the msgo course: both sides register the structs that travel inside any
	gob.Register(&model.Result{})
	gob.Register(&model.Goods{})
	gob.Register([]any{})
	gob.Register(map[string]any{})
	gob.Register(map[string]int{})
	gob.Register(time.Time{})
	gob.Register(Point{})
}

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: msgo-peer serve|call|bench|vectors|decode ...")
	}
	switch os.Args[1] {
	case "serve":
		serveCommand(os.Args[2:])
	case "call":
		callCommand(os.Args[2:])
	case "bench":
		benchCommand(os.Args[2:])
	case "vectors":
		printVectors()
	case "vector":
		printVector(os.Args[2])
	case "decode":
		if len(os.Args) != 4 {
			log.Fatal("usage: msgo-peer decode KIND HEX")
		}
		fmt.Println(decodeCheck(os.Args[2], os.Args[3]))
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}

func serveCommand(argv []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	etcd := flags.String("etcd", "", "register plain keys in this etcd (v3 JSON gateway)")
	nacos := flags.String("nacos", "", "register in this Nacos (http://host:port)")
	group := flags.String("group", "DEFAULT_GROUP", "Nacos group")
	idc := flags.String("idc", "test", "Nacos metadata idc")
	services := flags.String("services", "calc,goods", "services to register")
	rate := flags.Float64("rate", 0, "rate limit, calls/s (0: none); beyond it: 700")
	burst := flags.Float64("burst", 1, "rate limit burst")
	_ = flags.Parse(argv)
	if flags.NArg() != 1 {
		log.Fatal("usage: msgo-peer serve [flags] ADDR")
	}
	s, err := newServer(flags.Arg(0))
	if err != nil {
		log.Fatal(err)
	}
	if *rate > 0 {
		s.limit = &limiter{rate: *rate, burst: *burst, tokens: *burst, last: time.Now()}
	}
	address := s.ln.Addr().String()
	fmt.Printf("serving on %s\n", address)
	host, portText, _ := net.SplitHostPort(address)
	port, _ := strconv.Atoi(portText)
	var cleanups []func()
	for _, name := range strings.Split(*services, ",") {
		if *etcd != "" {
			if err := etcdRegister(*etcd, name, address); err != nil {
				log.Fatal(err)
			}
			name := name
			cleanups = append(cleanups, func() { _ = etcdDeregister(*etcd, name) })
			fmt.Printf("registered %s in etcd\n", name)
		}
		if *nacos != "" {
			instance := &nacosInstance{base: strings.TrimRight(*nacos, "/"), service: name,
				group: *group, ip: host, port: port, metadata: map[string]string{"idc": *idc}}
			if err := instance.register(); err != nil {
				log.Fatal(err)
			}
			go instance.beat()
			cleanups = append(cleanups, func() { _ = instance.deregister() })
			fmt.Printf("registered %s in nacos\n", name)
		}
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go s.serve()
	<-stop
	for _, cleanup := range cleanups {
		cleanup()
	}
}

func resolverFlags(name string) (*flag.FlagSet, *string, *string, *string) {
	flags := flag.NewFlagSet(name, flag.ExitOnError)
	etcd := flags.String("etcd", "", "find the service's plain key in this etcd")
	nacos := flags.String("nacos", "", "find a healthy instance in this Nacos")
	group := flags.String("group", "DEFAULT_GROUP", "Nacos group")
	return flags, etcd, nacos, group
}

func resolve(target, etcd, nacos, group string) string {
	var address string
	var err error
	switch {
	case etcd != "":
		address, err = etcdLookup(etcd, target)
	case nacos != "":
		address, err = nacosLookup(strings.TrimRight(nacos, "/"), target, group)
	default:
		address = target
	}
	if err != nil {
		log.Fatal(err)
	}
	return address
}

func parseArgs(texts []string) []any {
	args := make([]any, 0, len(texts))
	for _, text := range texts {
		arg, err := parseArg(text)
		if err != nil {
			log.Fatalf("argument %q: %v", text, err)
		}
		args = append(args, arg)
	}
	return args
}

func callCommand(argv []string) {
	flags, etcd, nacos, group := resolverFlags("call")
	_ = flags.Parse(argv)
	if flags.NArg() < 3 {
		log.Fatal("usage: msgo-peer call [flags] ADDR|SERVICE SERVICE METHOD ARG...")
	}
	address := resolve(flags.Arg(0), *etcd, *nacos, *group)
	rsp, err := call(address, flags.Arg(1), flags.Arg(2), parseArgs(flags.Args()[3:]))
	if err != nil {
		line, _ := json.Marshal(map[string]string{"Error": err.Error()})
		fmt.Println(string(line))
		os.Exit(3)
	}
	fmt.Println(report(rsp))
}

func benchCommand(argv []string) {
	flags, etcd, nacos, group := resolverFlags("bench")
	concurrency := flags.Int("c", 1, "callers")
	duration := flags.Duration("d", 2*time.Second, "how long")
	_ = flags.Parse(argv)
	if flags.NArg() < 3 {
		log.Fatal("usage: msgo-peer bench [flags] ADDR SERVICE METHOD ARG...")
	}
	address := resolve(flags.Arg(0), *etcd, *nacos, *group)
	calls, failures, seconds := bench(address, flags.Arg(1), flags.Arg(2),
		parseArgs(flags.Args()[3:]), *concurrency, *duration)
	line, _ := json.Marshal(map[string]any{"calls": calls, "failures": failures,
		"seconds": seconds})
	fmt.Println(string(line))
}
