package errs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
)

func TestCodeOf(t *testing.T) {
	cases := []struct {
		err  error
		want Code
	}{
		{nil, ""},
		{New(NotFound, "x"), NotFound},
		{fmt.Errorf("wrapped: %w", New(Conflict, "x")), Conflict},
		{Wrap(Unavailable, errors.New("dial"), "s3"), Unavailable},
		{context.Canceled, Cancelled},
		{fmt.Errorf("op: %w", context.DeadlineExceeded), Timeout},
		{errors.New("plain"), Internal},
	}
	for _, c := range cases {
		if got := CodeOf(c.err); got != c.want {
			t.Errorf("CodeOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	for c := range statusOf {
		if FromStatus(c.Status()) != c {
			t.Errorf("%s: status %d maps back to %s", c, c.Status(), FromStatus(c.Status()))
		}
		if !c.Valid() {
			t.Errorf("%s not valid", c)
		}
	}
	if Code("nope").Valid() || Code("nope").Status() != http.StatusInternalServerError || FromStatus(418) != Internal {
		t.Fatal("unknown codes must fall back to internal")
	}
}

func TestBodyAndParse(t *testing.T) {
	body := Body(New(BadRequest, "key %q has a '..' segment", "a/../b"))
	e := Parse("", "", body)
	if e == nil || e.Code != BadRequest || e.Message != `key "a/../b" has a '..' segment` {
		t.Fatalf("parse of body: %+v", e)
	}
	if e := Parse("404", "no such object", nil); e == nil || e.Code != NotFound || e.Message != "no such object" {
		t.Fatalf("parse of headers: %+v", e)
	}
	if Parse("", "", []byte(`{"key":"x"}`)) != nil {
		t.Fatal("a success body is not an error")
	}
	if e := Parse("500", "boom", []byte(`{"error":{"code":"bogus","message":"m"}}`)); e.Code != Internal {
		t.Fatalf("an unknown code in a body falls back to the headers: %+v", e)
	}
}

func TestIsAndUnwrap(t *testing.T) {
	cause := errors.New("connection refused")
	err := Wrap(Unavailable, cause, "s3 bucket %q", "b")
	if !errors.Is(err, cause) {
		t.Fatal("Wrap must keep its cause for errors.Is")
	}
	if !errors.Is(err, &Error{Code: Unavailable}) || errors.Is(err, &Error{Code: NotFound}) {
		t.Fatal("errors.Is by code")
	}
	if !Is(fmt.Errorf("x: %w", err), Unavailable) {
		t.Fatal("Is through wrapping")
	}
	if From(nil) != nil || From(err) != err || From(errors.New("p")).Code != Internal {
		t.Fatal("From")
	}
}

func TestCodeOfContext(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	if c := CodeOfContext(ctx); c != "" {
		t.Fatalf("live context: %q", c)
	}
	cancel(Unavailablef("the service is stopping"))
	if c := CodeOfContext(ctx); c != Unavailable {
		t.Fatalf("coded cause: %q", c)
	}
	child, stop := context.WithCancel(ctx)
	defer stop()
	if c := CodeOfContext(child); c != Unavailable {
		t.Fatalf("a child of a context ended with a coded cause: %q", c)
	}
	plain, cancelPlain := context.WithCancel(context.Background())
	cancelPlain()
	if c := CodeOfContext(plain); c != Cancelled {
		t.Fatalf("plain cancel: %q", c)
	}
	uncoded, cancelUncoded := context.WithCancelCause(context.Background())
	cancelUncoded(io.EOF)
	if c := CodeOfContext(uncoded); c != Cancelled {
		t.Fatalf("uncoded cause: %q", c)
	}
	dl, cancelDL := context.WithTimeout(context.Background(), 0)
	defer cancelDL()
	<-dl.Done()
	if c := CodeOfContext(dl); c != Timeout {
		t.Fatalf("deadline: %q", c)
	}
}
