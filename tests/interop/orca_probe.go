// orca_probe: a grpc-go client of ORCA load reports, to see what a Go client receives from a
// Python server using aiodiscovery.LoadReporter.
//
//	orca_probe call -addr HOST:PORT -method /svc/Method
//	    one unary call with a raw payload; prints the hex of each endpoint-load-metrics-bin
//	    trailer value, one per line, then "END"
//	orca_probe stream -addr HOST:PORT -request HEX -count N
//	    opens xds.service.orca.v3.OpenRcaService/StreamCoreMetrics with the request bytes
//	    given; prints the hex of the first N responses, one per line
//
// grpc-go 1.33 (Debian) has no orca package: payloads travel as raw bytes and Python decodes
// what Go received.
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: orca_probe call|stream ..."))
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := flags.String("addr", "", "server address")
	method := flags.String("method", "", "full method name")
	request := flags.String("request", "", "request bytes, hex")
	count := flags.Int("count", 1, "responses to print")
	flags.Parse(os.Args[2:])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	codec := grpc.ForceCodec(rawCodec{})
	switch os.Args[1] {
	case "call":
		in, out := []byte("go"), []byte(nil)
		var trailer metadata.MD
		err := conn.Invoke(ctx, *method, &in, &out, codec, grpc.Trailer(&trailer))
		if err != nil {
			fmt.Println("ERR", err)
		}
		for _, value := range trailer.Get("endpoint-load-metrics-bin") {
			fmt.Println(hex.EncodeToString([]byte(value)))
		}
		fmt.Println("END")
	case "stream":
		body, err := hex.DecodeString(*request)
		if err != nil {
			fail(err)
		}
		desc := &grpc.StreamDesc{ServerStreams: true}
		stream, err := conn.NewStream(ctx, desc, "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics", codec)
		if err != nil {
			fail(err)
		}
		if err := stream.SendMsg(&body); err != nil {
			fail(err)
		}
		stream.CloseSend()
		for i := 0; i < *count; i++ {
			var out []byte
			if err := stream.RecvMsg(&out); err != nil {
				fail(err)
			}
			fmt.Println(hex.EncodeToString(out))
		}
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
