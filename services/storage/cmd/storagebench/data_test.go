package main

import (
	"bytes"
	"io"
	"testing"
)

// Both paths of a comparison must move the same bytes although their readers ask for different amounts.
func TestSourceGivesTheSameBytesHoweverItIsRead(t *testing.T) {
	const size = 1<<20 + 13
	read := func(chunk int) []byte {
		var out bytes.Buffer
		if _, err := io.CopyBuffer(struct{ io.Writer }{&out}, newSource(7, size), make([]byte, chunk)); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	a, b := read(1<<16), read(4093)
	if len(a) != size || !bytes.Equal(a, b) {
		t.Fatalf("reads of 64 KiB and 4093 bytes gave different streams (%d and %d bytes)", len(a), len(b))
	}
	if bytes.Equal(a, make([]byte, size)) {
		t.Fatal("the source gave zeros")
	}
	other := make([]byte, size)
	_, _ = io.ReadFull(newSource(8, size), other)
	if bytes.Equal(a, other) {
		t.Fatal("different seeds gave the same bytes")
	}
}

func TestSinkChecksumMatchesSource(t *testing.T) {
	src := newSource(1, 3<<20)
	sk := newSink()
	if _, err := io.Copy(sk, src); err != nil {
		t.Fatal(err)
	}
	if sk.n != 3<<20 || sk.CRC() != src.CRC() {
		t.Fatalf("sink saw %d bytes with CRC %08x, source gave CRC %08x", sk.n, sk.CRC(), src.CRC())
	}
}
