// naming_probe drives etcd's own Go naming code (etcd 3.4 clientv3/naming and
// encoding/json) for aiodiscovery's interop tests. Build it in GOPATH mode
// against Debian's golang-etcd-server-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o naming_probe naming_probe.go
//
// Subcommands (every line protocol is one request or result per line):
//
//	decode     stdin: base64 values; stdout: "1 <addr hex> <metadata canon>" or "0 <error>"
//	reencode   stdin: base64 values; stdout: "1 <base64 of json.Marshal(record)>" or "0 <error>"
//	manager    -etcd URL -target T; stdin/stdout: JSON requests and replies (see handle)
//	serve      -etcd URL -target T -key K -name N -ttl S: a gRPC server, registered by
//	           Manager.AddEndpoint under a lease kept alive, answering any method with
//	           "<name>:<request>"; prints "READY <addr>", runs until stdin closes or killed
//	client     -etcd URL -target T: a round_robin gRPC client of etcd:///T through etcd's
//	           resolver; each stdin line is answered with a call of /test.Echo/Unary:
//	           "OK <reply>" or "ERR <code> <message>"
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/clientv3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// record mirrors go.etcd.io/etcd/clientv3/naming/endpoints/internal.Update, which
// cannot be imported from outside etcd; the manager's "mirror" request checks it
// against what the real Manager writes.
type record struct {
	Op       uint8
	Addr     string
	Metadata interface{}
}

// The echo method of tests/servers.py's EchoServer: b"x" -> b"<name>:x".
const method = "/test.Echo/Unary"

// rawCodec passes request and reply bytes through unchanged, so no protobuf is needed.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

// canon writes a Go value unambiguously: numbers as float64 bits, strings as hex.
func canon(b *strings.Builder, v interface{}) {
	switch x := v.(type) {
	case nil:
		b.WriteString("n")
	case bool:
		if x {
			b.WriteString("t")
		} else {
			b.WriteString("f")
		}
	case float64:
		fmt.Fprintf(b, "d%016x", math.Float64bits(x))
	case string:
		b.WriteString("s" + hex.EncodeToString([]byte(x)) + ".")
	case []interface{}:
		b.WriteString("[")
		for i, item := range x {
			if i > 0 {
				b.WriteString(",")
			}
			canon(b, item)
		}
		b.WriteString("]")
	case map[string]interface{}:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("{")
		for i, k := range keys {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(hex.EncodeToString([]byte(k)) + ":")
			canon(b, x[k])
		}
		b.WriteString("}")
	default:
		panic(fmt.Sprintf("unexpected %T", v))
	}
}

func canonString(v interface{}) string {
	var b strings.Builder
	canon(&b, v)
	return b.String()
}

func lines(each func(line string) string) {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<28)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		out.WriteString(each(in.Text()) + "\n")
		if err := out.Flush(); err != nil {
			fail(err)
		}
	}
	if err := in.Err(); err != nil {
		fail(err)
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// readRecord unmarshals one base64 input line into the record, as the Manager does.
func readRecord(line string) (record, error) {
	data, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		fail(err)
	}
	var r record
	err = json.Unmarshal(data, &r)
	return r, err
}

func decodeLine(line string) string {
	r, err := readRecord(line)
	if err != nil {
		return "0 " + oneLine(err)
	}
	return "1 " + hex.EncodeToString([]byte(r.Addr)) + " " + canonString(r.Metadata)
}

func reencodeLine(line string) string {
	r, err := readRecord(line)
	if err != nil {
		return "0 " + oneLine(err)
	}
	out, err := json.Marshal(&r)
	if err != nil {
		return "0 " + oneLine(err)
	}
	return "1 " + base64.StdEncoding.EncodeToString(out)
}

func connect(url string) *clientv3.Client {
	quiet := zap.NewProductionConfig()
	quiet.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{url},
		DialTimeout: 10 * time.Second,
		LogConfig:   &quiet,
	})
	if err != nil {
		fail(err)
	}
	return cli
}

// request is one line of the manager protocol.
type request struct {
	Op   string `json:"op"` // update, list, raw, mirror
	Ups  []up   `json:"ups"`
	Key  string `json:"key"`
	Addr string `json:"addr"`
	Meta string `json:"meta"` // metadata as JSON text, "" for nil
}

type up struct {
	Add  bool   `json:"add"`
	Key  string `json:"key"`
	Addr string `json:"addr"`
	Meta string `json:"meta"`
}

type listed struct {
	Addr string `json:"addr"`
	Meta string `json:"meta"`
}

type reply struct {
	Err  string            `json:"err,omitempty"`
	Eps  map[string]listed `json:"eps,omitempty"`
	Data string            `json:"data,omitempty"` // base64
}

func metadata(text string) (interface{}, error) {
	if text == "" {
		return nil, nil
	}
	var v interface{}
	err := json.Unmarshal([]byte(text), &v)
	return v, err
}

func handle(cli *clientv3.Client, em endpoints.Manager, req request) reply {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch req.Op {
	case "update":
		var ups []*endpoints.UpdateWithOpts
		for _, u := range req.Ups {
			if !u.Add {
				ups = append(ups, endpoints.NewDeleteUpdateOpts(u.Key))
				continue
			}
			meta, err := metadata(u.Meta)
			if err != nil {
				return reply{Err: oneLine(err)}
			}
			ups = append(ups, endpoints.NewAddUpdateOpts(u.Key, endpoints.Endpoint{Addr: u.Addr, Metadata: meta}))
		}
		if err := em.Update(ctx, ups); err != nil {
			return reply{Err: oneLine(err)}
		}
		return reply{}
	case "list":
		eps, err := em.List(ctx)
		if err != nil {
			return reply{Err: oneLine(err)}
		}
		out := map[string]listed{}
		for k, ep := range eps {
			out[k] = listed{Addr: ep.Addr, Meta: canonString(ep.Metadata)}
		}
		return reply{Eps: out}
	case "raw":
		resp, err := cli.Get(ctx, req.Key)
		if err != nil {
			return reply{Err: oneLine(err)}
		}
		if len(resp.Kvs) == 0 {
			return reply{Err: "no such key"}
		}
		return reply{Data: base64.StdEncoding.EncodeToString(resp.Kvs[0].Value)}
	case "mirror":
		meta, err := metadata(req.Meta)
		if err != nil {
			return reply{Err: oneLine(err)}
		}
		out, err := json.Marshal(&record{Addr: req.Addr, Metadata: meta})
		if err != nil {
			return reply{Err: oneLine(err)}
		}
		return reply{Data: base64.StdEncoding.EncodeToString(out)}
	}
	return reply{Err: "unknown op " + req.Op}
}

func manager(url, target string) {
	cli := connect(url)
	defer cli.Close()
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		fail(err)
	}
	lines(func(line string) string {
		var req request
		if err := json.Unmarshal([]byte(line), &req); err != nil {
			fail(err)
		}
		out, err := json.Marshal(handle(cli, em, req))
		if err != nil {
			fail(err)
		}
		return string(out)
	})
}

func serve(url, target, key, name string, ttl int64) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	server := grpc.NewServer(grpc.CustomCodec(rawCodec{}), grpc.UnknownServiceHandler(
		func(_ interface{}, stream grpc.ServerStream) error {
			var req []byte
			if err := stream.RecvMsg(&req); err != nil {
				return err
			}
			reply := append([]byte(name+":"), req...)
			return stream.SendMsg(&reply)
		}))
	go server.Serve(lis)

	cli := connect(url)
	ctx := context.Background()
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		fail(err)
	}
	alive, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		fail(err)
	}
	go func() {
		for range alive {
		}
	}()
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		fail(err)
	}
	addr := lis.Addr().String()
	if err := em.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: addr}, clientv3.WithLease(lease.ID)); err != nil {
		fail(err)
	}
	fmt.Printf("READY %s\n", addr)
	// Until the test closes stdin (a clean exit) or kills us (the lease then expires).
	bufio.NewReader(os.Stdin).ReadString('\n')
	cli.Revoke(ctx, lease.ID)
	server.Stop()
}

func client(url, target string) {
	cli := connect(url)
	builder, err := etcdresolver.NewBuilder(cli)
	if err != nil {
		fail(err)
	}
	conn, err := grpc.Dial("etcd:///"+target, grpc.WithInsecure(), grpc.WithResolvers(builder),
		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
	if err != nil {
		fail(err)
	}
	lines(func(string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, out := []byte("go"), []byte(nil)
		if err := conn.Invoke(ctx, method, &req, &out, grpc.ForceCodec(rawCodec{})); err != nil {
			st := status.Convert(err)
			return "ERR " + st.Code().String() + " " + strings.ReplaceAll(st.Message(), "\n", " ")
		}
		return "OK " + string(out)
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "naming_probe:", err)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: naming_probe decode|reencode|manager|serve|client [flags]"))
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	url := flags.String("etcd", "", "etcd client URL")
	target := flags.String("target", "", "service target, without etcd:///")
	key := flags.String("key", "", "endpoint key (serve)")
	name := flags.String("name", "", "server name returned to callers (serve)")
	ttl := flags.Int64("ttl", 2, "lease TTL in seconds (serve)")
	flags.Parse(os.Args[2:])
	switch os.Args[1] {
	case "decode":
		lines(decodeLine)
	case "reencode":
		lines(reencodeLine)
	case "manager":
		manager(*url, *target)
	case "serve":
		serve(*url, *target, *key, *name, *ttl)
	case "client":
		client(*url, *target)
	default:
		fail(fmt.Errorf("unknown subcommand %q", os.Args[1]))
	}
}
