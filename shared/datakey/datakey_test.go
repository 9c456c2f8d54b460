package datakey

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"troveng.dev/shared/errs"
)

func keypair(t *testing.T) (string, string) {
	t.Helper()
	id, rcpt, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id, rcpt
}

func TestWrapUnwrapAnyRecipient(t *testing.T) {
	id1, r1 := keypair(t)
	id2, r2 := keypair(t)
	rs, err := ParseRecipients("# ops team\n" + r1 + "\n\n" + r2)
	if err != nil {
		t.Fatal(err)
	}
	key, err := New()
	if err != nil {
		t.Fatal(err)
	}
	w, err := Wrap(key, rs)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Recipients) != 2 || w.Recipients[0] != RecipientID(r1) || w.Recipients[1] != RecipientID(r2) {
		t.Fatalf("recipients %v", w.Recipients)
	}
	if strings.Contains(w.Age, base64.StdEncoding.EncodeToString(key)) {
		t.Fatal("wrapped form contains the key")
	}
	for _, id := range []string{id1, id2} {
		ids, err := ParseIdentities(id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Unwrap(w, ids)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, key) {
			t.Fatal("unwrapped key differs")
		}
	}
}

func TestUnwrapRefusals(t *testing.T) {
	_, r1 := keypair(t)
	other, _ := keypair(t)
	rs, _ := ParseRecipients(r1)
	key, _ := New()
	w, err := Wrap(key, rs)
	if err != nil {
		t.Fatal(err)
	}
	wrong, _ := ParseIdentities(other)
	if _, err := Unwrap(w, wrong); !errs.Is(err, errs.Unauthorized) {
		t.Fatalf("wrong identity: %v", err)
	}
	if _, err := Unwrap(w, nil); !errs.Is(err, errs.Unauthorized) {
		t.Fatalf("no identity: %v", err)
	}
	if _, err := Unwrap(Wrapped{Age: "%%%"}, wrong); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("bad base64: %v", err)
	}
	// A flipped byte in the payload fails authentication; with the wrong identity it is unauthorized first,
	// so check it with a matching one.
	idOK, rOK := keypair(t)
	rsOK, _ := ParseRecipients(rOK)
	wOK, _ := Wrap(key, rsOK)
	raw, _ := base64.StdEncoding.DecodeString(wOK.Age)
	raw[len(raw)-5] ^= 1
	bad := Wrapped{Age: base64.StdEncoding.EncodeToString(raw)}
	ids, _ := ParseIdentities(idOK)
	if _, err := Unwrap(bad, ids); !errs.Is(err, errs.Corrupt) {
		t.Fatalf("flipped byte: %v", err)
	}
}

func TestParseErrorsDoNotLeakSecrets(t *testing.T) {
	id, _ := keypair(t)
	_, err := ParseIdentities(id[:len(id)-3] + "zzz")
	if !errs.Is(err, errs.BadRequest) {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), id[20:30]) {
		t.Fatalf("error quotes the identity: %v", err)
	}
	if _, err := ParseRecipients(""); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("empty recipients: %v", err)
	}
	if _, err := ParseRecipients("age1notakey"); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("bad recipient: %v", err)
	}
	if _, err := Wrap(make([]byte, 16), nil); !errs.Is(err, errs.BadRequest) {
		t.Fatalf("short key: %v", err)
	}
}

func TestNewKeysDifferAndZero(t *testing.T) {
	a, _ := New()
	b, _ := New()
	if bytes.Equal(a, b) || len(a) != Size {
		t.Fatal("keys not fresh")
	}
	Zero(a)
	if !bytes.Equal(a, make([]byte, Size)) {
		t.Fatal("not zeroed")
	}
}
