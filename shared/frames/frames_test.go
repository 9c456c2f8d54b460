package frames

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"troveng.dev/shared/datagen"
	"troveng.dev/shared/errs"
)

const fs = MinFrameSize // small frames keep the tests fast and the frame counts high

var (
	key1 = bytes.Repeat([]byte{0x11}, 32)
	key2 = bytes.Repeat([]byte{0x22}, 32)
)

// noLeak fails the test if goroutines started during it are still running at its end.
func noLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Errorf("goroutines leaked: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func dumpBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(datagen.New(seed), b); err != nil {
		panic(err)
	}
	return b
}

func write(t testing.TB, data []byte, o Options) ([]byte, Summary) {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, o)
	if err != nil {
		t.Fatal(err)
	}
	// Uneven writes, so frame cuts fall inside writes.
	for p := data; len(p) > 0; {
		n := min(len(p), 10007)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), w.Summary()
}

// readAll reads an artifact with small reads and returns the plaintext produced before any error.
func readAll(art []byte, o ReadOptions) ([]byte, Summary, error) {
	r, err := NewReader(bytes.NewReader(art), o)
	if err != nil {
		return nil, Summary{}, err
	}
	defer r.Close()
	var out []byte
	buf := make([]byte, 5000)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, r.Summary(), nil
		}
		if err != nil {
			return out, Summary{}, err
		}
	}
}

func opts(id string, key []byte, codec string) Options {
	return Options{ArtifactID: id, Key: key, Codec: codec, FrameSize: fs, Workers: 3}
}

func ropts(id string, key []byte) ReadOptions {
	return ReadOptions{ArtifactID: id, Key: key, Workers: 3}
}

func TestRoundTrip(t *testing.T) {
	noLeak(t)
	sizes := []int{0, 1, fs - 1, fs, fs + 1, 3*fs + 12345}
	for _, codec := range []string{"zstd", "gzip", "none"} {
		for _, key := range [][]byte{nil, key1} {
			for _, size := range sizes {
				for _, kind := range []string{"random", "dump"} {
					name := fmt.Sprintf("%s/sealed=%v/%d/%s", codec, key != nil, size, kind)
					t.Run(name, func(t *testing.T) {
						data := randomBytes(size, uint64(size))
						if kind == "dump" {
							data = dumpBytes(size, int64(size))
						}
						checkRoundTrip(t, data, opts("backup-1/full", key, codec))
					})
				}
			}
		}
	}
	// Several MB at the default frame size.
	for _, key := range [][]byte{nil, key1} {
		checkRoundTrip(t, dumpBytes(9<<20+3, 5), Options{ArtifactID: "big", Key: key})
		checkRoundTrip(t, randomBytes(5<<20, 5), Options{ArtifactID: "big", Key: key, Workers: 1})
	}
}

func checkRoundTrip(t *testing.T, data []byte, o Options) {
	t.Helper()
	art, ws := write(t, data, o)
	frameSize := o.FrameSize
	if frameSize == 0 {
		frameSize = DefaultFrameSize
	}
	wantFrames := max(1, (len(data)+frameSize-1)/frameSize)
	sum := sha256.Sum256(art)
	if ws.Frames != wantFrames || ws.RawSize != int64(len(data)) || ws.StoredSize != int64(len(art)) ||
		ws.SHA256 != hex.EncodeToString(sum[:]) || ws.Sealed != (o.Key != nil) || len(ws.IndexSHA256) != 64 {
		t.Fatalf("writer summary %+v; want %d frames, %d raw, %d stored, sha %x", ws, wantFrames, len(data), len(art), sum)
	}
	ro := ReadOptions{ArtifactID: o.ArtifactID, Key: o.Key, ExpectIndexSHA256: ws.IndexSHA256}
	got, rs, err := readAll(art, ro)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes back, wrote %d; equal prefix %d", len(got), len(data), commonPrefix(got, data))
	}
	rs.Stages, ws.Stages = nil, nil
	if fmt.Sprint(rs) != fmt.Sprint(ws) {
		t.Fatalf("reader summary %+v, writer summary %+v", rs, ws)
	}
	// io.Copy takes the WriteTo path.
	r, err := NewReader(bytes.NewReader(art), ro)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("io.Copy: %v, equal=%v", err, bytes.Equal(buf.Bytes(), data))
	}
	r.Close()
	vs, err := Verify(bytes.NewReader(art), ro)
	if err != nil {
		t.Fatal(err)
	}
	vs.Stages = nil
	if fmt.Sprint(vs) != fmt.Sprint(ws) {
		t.Fatalf("verify summary %+v, writer summary %+v", vs, ws)
	}
	if o.Key != nil {
		// Without the key, Verify still checks every hash.
		if _, err := Verify(bytes.NewReader(art), ReadOptions{ArtifactID: o.ArtifactID}); err != nil {
			t.Fatalf("keyless verify: %v", err)
		}
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func TestStagesAndRatio(t *testing.T) {
	data := dumpBytes(2<<20, 9)
	art, ws := write(t, data, opts("a", key1, ""))
	for _, s := range []string{StageRead, StageCompress, StageEncrypt, StageHash, StageWrite} {
		if _, ok := ws.Stages[s]; !ok {
			t.Errorf("no stage %q in %v", s, ws.Stages)
		}
	}
	if ws.Stages[StageCompress] <= 0 || ws.Stages[StageEncrypt] <= 0 || ws.Stages[StageHash] <= 0 {
		t.Errorf("stages not measured: %v", ws.Stages)
	}
	if ratio := float64(len(data)) / float64(len(art)); ratio < 2 {
		t.Errorf("dump text compressed only %.2fx", ratio)
	}
}

func TestOptionsValidation(t *testing.T) {
	noLeak(t)
	bad := []Options{
		{},
		{ArtifactID: "has space"},
		{ArtifactID: strings.Repeat("a", 201)},
		{ArtifactID: "a", Codec: "lz4"},
		{ArtifactID: "a", Level: 23},
		{ArtifactID: "a", Codec: "gzip", Level: 10},
		{ArtifactID: "a", Codec: "none", Level: 1},
		{ArtifactID: "a", FrameSize: MinFrameSize - 1},
		{ArtifactID: "a", FrameSize: MaxFrameSize + 1},
		{ArtifactID: "a", Workers: -1},
		{ArtifactID: "a", Key: make([]byte, 16)},
		{ArtifactID: "a", Key: []byte{}},
	}
	for _, o := range bad {
		if _, err := NewWriter(io.Discard, o); !errs.Is(err, errs.BadRequest) {
			t.Errorf("NewWriter(%+v) = %v, want bad_request", o, err)
		}
	}
	art, _ := write(t, []byte("x"), opts("a", nil, ""))
	for _, o := range []ReadOptions{{}, {ArtifactID: "a", Key: make([]byte, 31)}, {ArtifactID: "a", ExpectIndexSHA256: "abc"}, {ArtifactID: "a", Workers: 1000}} {
		if _, err := NewReader(bytes.NewReader(art), o); !errs.Is(err, errs.BadRequest) {
			t.Errorf("NewReader(%+v) = %v, want bad_request", o, err)
		}
	}
	// A message never carries the key.
	_, err := NewWriter(io.Discard, Options{ArtifactID: "a", Key: []byte("secret-key-material-31-bytes-xx")})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("key length error %v", err)
	}
}

func dumpReader() io.Reader { return datagen.New(1) }

// NoStoredHash changes nothing in the artifact, only what the summaries report; Verify still hashes.
func TestNoStoredHash(t *testing.T) {
	noLeak(t)
	data := dumpBytes(3*fs+777, 4)
	o := opts("a", key1, "")
	o.Workers = 1 // frame cuts and codec output are deterministic either way; one worker keeps it obvious
	withHash, ws := write(t, data, o)
	o.NoStoredHash = true
	without, ns := write(t, data, o)
	if !bytes.Equal(withHash, without) {
		t.Fatal("NoStoredHash changed the artifact's bytes")
	}
	if ns.SHA256 != "" || ws.SHA256 == "" || ns.IndexSHA256 != ws.IndexSHA256 || ns.Frames != ws.Frames || ns.StoredSize != ws.StoredSize {
		t.Fatalf("writer summaries: with %+v, without %+v", ws, ns)
	}
	ro := ropts("a", key1)
	ro.NoStoredHash = true
	got, rs, err := readAll(without, ro)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, data))
	}
	if rs.SHA256 != "" || rs.IndexSHA256 != ws.IndexSHA256 {
		t.Fatalf("reader summary %+v", rs)
	}
	vs, err := Verify(bytes.NewReader(without), ro)
	if err != nil || vs.SHA256 != ws.SHA256 {
		t.Fatalf("Verify with NoStoredHash: %v, sha %q, want %q", err, vs.SHA256, ws.SHA256)
	}
	// The frames are still checked: a flipped byte in a frame body is refused.
	bad := bytes.Clone(without)
	bad[len(bad)/2] ^= 1
	if _, _, err := readAll(bad, ro); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("flipped byte with NoStoredHash: %v, want corrupt", err)
	}
}
