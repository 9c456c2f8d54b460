package datagen

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func read(t testing.TB, seed int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(New(seed), b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeterministic(t *testing.T) {
	a, b := read(t, 42, 3<<20), read(t, 42, 3<<20)
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed gave different text")
	}
	// Odd read sizes give the same bytes as one big read.
	r := New(42)
	var got []byte
	buf := make([]byte, 777)
	for len(got) < len(a) {
		n, err := r.Read(buf[:1+len(got)%777])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got[:len(a)], a) {
		t.Fatal("small reads gave different text than one big read")
	}
	if c := read(t, 43, 3<<20); bytes.Equal(a, c) {
		t.Fatal("different seeds gave the same text")
	}
	if bytes.Equal(a[1<<20:], read(t, 43, 3<<20)[1<<20:]) {
		t.Fatal("different seeds gave the same rows")
	}
}

func TestLooksLikeADump(t *testing.T) {
	b := read(t, 1, 1<<20)
	for _, want := range []string{"CREATE TABLE `orders`", "INSERT INTO `customers` VALUES (", "INSERT INTO `events` VALUES ("} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("no %q in the first MiB", want)
		}
	}
}

// TestCompressionRatio compresses independent 4 MiB frames with zstd level 1 (as the frames package does)
// and wants a dump-like ratio: 2.5..6.
func TestCompressionRatio(t *testing.T) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	r := New(7)
	frame := make([]byte, 4<<20)
	var raw, packed int
	for range 4 {
		if _, err := io.ReadFull(r, frame); err != nil {
			t.Fatal(err)
		}
		raw += len(frame)
		packed += len(enc.EncodeAll(frame, nil))
	}
	ratio := float64(raw) / float64(packed)
	t.Logf("zstd level 1 ratio %.2f", ratio)
	if ratio < 2.5 || ratio > 6 {
		t.Fatalf("zstd level 1 ratio %.2f is outside 2.5..6: the text is too random or too repetitive", ratio)
	}
}

// BenchmarkRead reports how fast one goroutine produces text.
func BenchmarkRead(b *testing.B) {
	r := New(1)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := r.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
