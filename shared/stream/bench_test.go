package stream

import (
	"context"
	"io"
	"testing"

	"troveng.dev/shared/natstest"
)

// zeros is an endless source that costs nothing to produce, so the benchmark measures the stream.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkStream moves 256 MiB per iteration through an embedded NATS server (sender and receiver on
// their own connections, SHA-256 on both sides) and reports MB/s. Run it with
//
//	go test -run '^$' -bench Stream -benchmem ./stream/
func BenchmarkStream(b *testing.B) {
	const size = 256 << 20
	for _, bc := range []struct {
		name string
		opts Options
	}{
		{"default", Options{}},
		{"chunk=1MiB-1KiB", Options{ChunkSize: 1<<20 - headerRoom}},
		{"chunk=64KiB", Options{ChunkSize: 64 << 10}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := natstest.Start(b)
			send, recv := srv.Connect(), srv.Connect()
			ctx := context.Background()
			buf := make([]byte, 256<<10)
			b.SetBytes(size)
			b.ResetTimer()
			for b.Loop() {
				r, err := Listen(ctx, recv, bc.opts)
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					defer r.Close()
					if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
						done <- err
						return
					}
					done <- r.Finish(nil)
				}()
				if _, _, err := Send(ctx, send, r.Subject(), io.LimitReader(zeros{}, size), bc.opts); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
