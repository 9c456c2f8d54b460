package backend

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"

	"troveng.dev/shared/s3test"
)

// Benchmarks of the s3 strategy against the AWS transfer manager, both on the same versitygw and with the
// same part size and concurrency, moving incompressible data. Not run by `go test` (they are benchmarks);
// run e.g.
//
//	go test -run '^$' -bench 'BenchmarkS3' -benchtime 3x ./services/storage/internal/backend/
//
// Environment:
//
//	TROVE_S3_BENCH_SIZES        comma-separated object sizes (default 256MiB; suffixes KiB, MiB, GiB)
//	TROVE_S3_BENCH_PART_SIZE    part size for both (default the strategy's, 8MiB)
//	TROVE_S3_BENCH_CONCURRENCY  parts in flight for both (default the strategy's, 6)
//
// Each result reports MB/s and peak-RSS-MiB: the process's peak resident memory during that benchmark
// (reset through /proc/self/clear_refs before it starts; versitygw runs in its own process).

func benchSettings(b *testing.B) (sizes []int64, partSize int64, concurrency int) {
	parse := func(env, def string) int64 {
		v := os.Getenv(env)
		if v == "" {
			v = def
		}
		c := &config{strategy: "bench", values: map[string]string{"v": v}}
		n, err := c.bytes("v", 0, 1, 1<<40)
		if err != nil {
			b.Fatalf("%s: %v", env, err)
		}
		return n
	}
	for _, s := range strings.Split(os.Getenv("TROVE_S3_BENCH_SIZES"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			t := &config{strategy: "bench", values: map[string]string{"v": s}}
			n, err := t.bytes("v", 0, 1, 1<<40)
			if err != nil {
				b.Fatalf("TROVE_S3_BENCH_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 0 {
		sizes = []int64{256 << 20}
	}
	partSize = parse("TROVE_S3_BENCH_PART_SIZE", strconv.Itoa(S3DefaultPartSize))
	concurrency = S3DefaultConcurrency
	if v := os.Getenv("TROVE_S3_BENCH_CONCURRENCY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TROVE_S3_BENCH_CONCURRENCY=%q", v)
		}
		concurrency = n
	}
	return sizes, partSize, concurrency
}

func sizeName(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprint(n)
}

// repeatingReader yields size bytes cycling through a random block: incompressible, and cheap to produce
// so the benchmark measures the transfer.
type repeatingReader struct {
	block []byte
	pos   int
	left  int64
}

func newRepeatingReader(block []byte, size int64) *repeatingReader {
	return &repeatingReader{block: block, left: size}
}

func (r *repeatingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := copy(p, r.block[r.pos:])
	r.pos = (r.pos + n) % len(r.block)
	r.left -= int64(n)
	return n, nil
}

// resetPeakRSS and peakRSSMiB track the process's peak resident set size from a reset point.
// Garbage left by earlier benchmarks is returned to the OS first, so it does not count.
func resetPeakRSS() {
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

func peakRSSMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

type s3BenchEnv struct {
	be          *s3Backend
	tm          *transfermanager.Client
	bucket      string
	block       []byte
	sizes       []int64
	partSize    int64
	concurrency int
}

func newS3BenchEnv(b *testing.B) *s3BenchEnv {
	sizes, partSize, concurrency := benchSettings(b)
	srv := s3test.Start(b)
	cfg := s3ConfigFor(srv, "bench/", partSize, concurrency)
	be, err := NewS3(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	client, _, err := newS3Client(context.Background(), &cfg)
	if err != nil {
		b.Fatal(err)
	}
	tm := transfermanager.New(client, func(o *transfermanager.Options) {
		o.PartSizeBytes = partSize
		o.Concurrency = concurrency
		o.MultipartUploadThreshold = partSize
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.GetObjectType = tmtypes.GetObjectRanges // parallel ranged GETs, like the strategy
		o.GetObjectBufferSize = partSize * int64(concurrency)
		o.DisableChecksumValidation = true
	})
	return &s3BenchEnv{be: be.(*s3Backend), tm: tm, bucket: srv.Bucket(), block: randomBytes(16<<20, 99),
		sizes: sizes, partSize: partSize, concurrency: concurrency}
}

func BenchmarkS3Put(b *testing.B) {
	env := newS3BenchEnv(b)
	for _, size := range env.sizes {
		b.Run("impl=backend/size="+sizeName(size), func(b *testing.B) {
			b.SetBytes(size)
			resetPeakRSS()
			for b.Loop() {
				if _, err := env.be.Put(context.Background(), "put", newRepeatingReader(env.block, size), nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
		})
		b.Run("impl=transfermanager/size="+sizeName(size), func(b *testing.B) {
			b.SetBytes(size)
			resetPeakRSS()
			for b.Loop() {
				_, err := env.tm.UploadObject(context.Background(), &transfermanager.UploadObjectInput{
					Bucket: &env.bucket, Key: aws.String("bench/tm-put"), Body: newRepeatingReader(env.block, size),
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
		})
	}
}

func BenchmarkS3Get(b *testing.B) {
	env := newS3BenchEnv(b)
	for _, size := range env.sizes {
		if _, err := env.be.Put(context.Background(), "get", newRepeatingReader(env.block, size), nil); err != nil {
			b.Fatal(err)
		}
		tmKey := "bench/tm-get"
		if _, err := env.tm.UploadObject(context.Background(), &transfermanager.UploadObjectInput{
			Bucket: &env.bucket, Key: &tmKey, Body: newRepeatingReader(env.block, size),
		}); err != nil {
			b.Fatal(err)
		}
		b.Run("impl=backend/size="+sizeName(size), func(b *testing.B) {
			b.SetBytes(size)
			resetPeakRSS()
			for b.Loop() {
				rc, _, err := env.be.Get(context.Background(), "get", 0, -1)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, rc)
				rc.Close()
				if err != nil || n != size {
					b.Fatalf("read %d of %d bytes: %v", n, size, err)
				}
			}
			b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
		})
		b.Run("impl=transfermanager/size="+sizeName(size), func(b *testing.B) {
			copyBuf := make([]byte, 1<<20)
			b.SetBytes(size)
			resetPeakRSS()
			for b.Loop() {
				out, err := env.tm.GetObject(context.Background(), &transfermanager.GetObjectInput{Bucket: &env.bucket, Key: &tmKey})
				if err != nil {
					b.Fatal(err)
				}
				// 1 MiB reads: io.Discard's own 8 KiB reads would make the per-Read cost dominate.
				n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, out.Body, copyBuf)
				if err != nil || n != size {
					b.Fatalf("read %d of %d bytes: %v", n, size, err)
				}
			}
			b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
		})
	}
}
