package frames

import (
	"bytes"
	"io"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Benchmarks on 64 MiB of dump-like text from datagen, in memory. Run them with
//
//	go test -run '^$' -bench . -benchtime 10x ./frames/
const benchSize = 64 << 20

var benchData = sync.OnceValue(func() []byte { return dumpBytes(benchSize, 1) })

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds the CPU seconds spent per GB of raw data since start: a figure other load on the
// machine disturbs less than MB/s.
func reportCPU(b *testing.B, start time.Duration, bytes int) {
	b.ReportMetric((cpuTime()-start).Seconds()/(float64(b.N)*float64(bytes)/1e9), "cpu-s/GB")
}

// countingWriter discards bytes and counts them.
type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// BenchmarkWrite: zstd level 1 + AES-256-GCM + SHA-256 of each frame, 4 MiB frames, Workers =
// GOMAXPROCS, as the agent writes artifacts (NoStoredHash: its storage client hashes the stored bytes on
// their way out); MB/s of raw input.
func BenchmarkWrite(b *testing.B) { benchWrite(b, true) }

// BenchmarkWriteStoredHash also computes the whole-artifact SHA-256 (Summary.SHA256): a second pass over
// the stored bytes.
func BenchmarkWriteStoredHash(b *testing.B) { benchWrite(b, false) }

func benchWrite(b *testing.B, noStoredHash bool) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	var stored int64
	start := cpuTime()
	for b.Loop() {
		var out countingWriter
		w, err := NewWriter(&out, Options{ArtifactID: "bench", Key: key1, NoStoredHash: noStoredHash})
		if err != nil {
			b.Fatal(err)
		}
		for p := data; len(p) > 0; p = p[min(len(p), 1<<20):] {
			if _, err := w.Write(p[:min(len(p), 1<<20)]); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		stored = out.n
	}
	reportCPU(b, start, len(data))
	b.ReportMetric(float64(len(data))/float64(stored), "ratio")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "workers")
}

// BenchmarkRead decodes the artifact BenchmarkWrite makes (GCM open per frame, zstd) to io.Discard, as
// the agent reads artifacts (NoStoredHash: the storage client's get checks the whole object's SHA-256).
func BenchmarkRead(b *testing.B) { benchRead(b, true) }

// BenchmarkReadStoredHash also computes the whole-artifact SHA-256.
func BenchmarkReadStoredHash(b *testing.B) { benchRead(b, false) }

func benchRead(b *testing.B, noStoredHash bool) {
	data := benchData()
	var art bytes.Buffer
	w, err := NewWriter(&art, Options{ArtifactID: "bench", Key: key1})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	start := cpuTime()
	for b.Loop() {
		r, err := NewReader(bytes.NewReader(art.Bytes()), ReadOptions{ArtifactID: "bench", Key: key1, NoStoredHash: noStoredHash})
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, r)
		if err != nil || n != int64(len(data)) {
			b.Fatalf("read %d: %v", n, err)
		}
		r.Close()
	}
	reportCPU(b, start, len(data))
}

// BenchmarkBaselineZstd is the plain single-goroutine zstd stream (SpeedFastest, no encryption, no
// hashing) over the same data: the reference for ratio and for per-core speed.
func BenchmarkBaselineZstd(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	var out countingWriter
	enc, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	start := cpuTime()
	for b.Loop() {
		out.n = 0
		enc.Reset(&out)
		if _, err := enc.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := enc.Close(); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start, len(data))
	b.ReportMetric(float64(len(data))/float64(out.n), "ratio")
}

// BenchmarkBaselineZstdDecode decodes the baseline stream in one goroutine.
func BenchmarkBaselineZstdDecode(b *testing.B) {
	data := benchData()
	var packed bytes.Buffer
	enc, _ := zstd.NewWriter(&packed, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if _, err := enc.Write(data); err != nil {
		b.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		b.Fatal(err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	defer dec.Close()
	b.SetBytes(int64(len(data)))
	start := cpuTime()
	for b.Loop() {
		if err := dec.Reset(bytes.NewReader(packed.Bytes())); err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, dec); err != nil || n != int64(len(data)) {
			b.Fatalf("%d %v", n, err)
		}
	}
	reportCPU(b, start, len(data))
}
