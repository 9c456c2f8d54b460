// Package errs defines the typed, coded errors every service puts on the wire.
//
// A code is a short stable word a program can switch on; the message is for a person and says what to do.
// On NATS micro endpoints the code travels as a numeric string in the Nats-Service-Error-Code header (its
// HTTP-like status) and the body carries the JSON form {"error":{"code":..,"message":..}}.
package errs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Code classifies an error for callers.
type Code string

// The codes on the wire. Keep this list short: callers switch on it.
const (
	BadRequest   Code = "bad_request"  // the request is malformed or names something invalid; retrying will not help
	Unauthorized Code = "unauthorized" // credentials missing or wrong
	NotFound     Code = "not_found"    // the named thing does not exist
	Conflict     Code = "conflict"     // the request clashes with current state (exists, in use, wrong state)
	Busy         Code = "busy"         // a concurrency limit was hit; retry later
	Cancelled    Code = "cancelled"    // the operation was cancelled by a party
	Timeout      Code = "timeout"      // a deadline passed or the other side went silent
	Unavailable  Code = "unavailable"  // a dependency (NATS, storage backend, guest) cannot be reached; retry later
	Corrupt      Code = "corrupt"      // data failed an integrity check (checksum, sequence, authentication)
	Internal     Code = "internal"     // a bug or an unexpected failure
)

var statusOf = map[Code]int{
	BadRequest:   http.StatusBadRequest,
	Unauthorized: http.StatusUnauthorized,
	NotFound:     http.StatusNotFound,
	Conflict:     http.StatusConflict,
	Busy:         http.StatusTooManyRequests,
	Cancelled:    499, // the de-facto "client closed request" status
	Timeout:      http.StatusGatewayTimeout,
	Unavailable:  http.StatusServiceUnavailable,
	Corrupt:      http.StatusUnprocessableEntity,
	Internal:     http.StatusInternalServerError,
}

// Status is the HTTP-like numeric status of a code (used for HTTP and the NATS micro error-code header).
func (c Code) Status() int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// FromStatus maps a numeric status back to a code; unknown statuses are Internal.
func FromStatus(status int) Code {
	for c, s := range statusOf {
		if s == status {
			return c
		}
	}
	return Internal
}

// Valid reports whether c is one of the defined codes.
func (c Code) Valid() bool { _, ok := statusOf[c]; return ok }

// Error is a coded error. Message must never carry secrets.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	cause   error
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Unwrap exposes the cause (kept local, never sent on the wire).
func (e *Error) Unwrap() error { return e.cause }

// Is makes errors.Is(err, &Error{Code: X}) match any error with code X.
func (e *Error) Is(target error) bool {
	var t *Error
	if errors.As(target, &t) {
		return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
	}
	return false
}

// New makes a coded error with a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap makes a coded error whose cause is err; the message is "msg: err".
func Wrap(code Code, err error, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if err != nil {
		msg += ": " + err.Error()
	}
	return &Error{Code: code, Message: msg, cause: err}
}

// Convenience constructors for the common codes.
func BadRequestf(format string, args ...any) *Error  { return New(BadRequest, format, args...) }
func NotFoundf(format string, args ...any) *Error    { return New(NotFound, format, args...) }
func Conflictf(format string, args ...any) *Error    { return New(Conflict, format, args...) }
func Unavailablef(format string, args ...any) *Error { return New(Unavailable, format, args...) }
func Internalf(format string, args ...any) *Error    { return New(Internal, format, args...) }

// CodeOf classifies any error: a coded error keeps its code, context errors map to Cancelled/Timeout,
// anything else is Internal. nil has no code ("").
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Cancelled
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	}
	return Internal
}

// CodeOfContext is the code of an ended context: its cause's code when the cause is a coded error (a service
// that stops ends its work with Unavailable, so a client retries instead of taking it for a cancellation on
// request), else Cancelled or Timeout. "" while ctx has not ended.
func CodeOfContext(ctx context.Context) Code {
	if ctx.Err() == nil {
		return ""
	}
	var e *Error
	if errors.As(context.Cause(ctx), &e) {
		return e.Code
	}
	return CodeOf(ctx.Err())
}

// From converts any error to a coded one (see CodeOf); a coded error is returned as is.
func From(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeOf(err), Message: err.Error(), cause: err}
}

// Is reports whether err carries code c.
func Is(err error, c Code) bool { return err != nil && CodeOf(err) == c }

// envelope is the JSON body of an error reply.
type envelope struct {
	Error *Error `json:"error"`
}

// Body renders the JSON body of an error reply.
func Body(err error) []byte {
	b, _ := json.Marshal(envelope{Error: From(err)})
	return b
}

// Parse reads an error reply: from a body in the envelope form if there is one, else from the numeric
// status and description (as the micro headers give them). It returns nil when neither says error.
func Parse(status string, description string, body []byte) *Error {
	var env envelope
	if len(body) > 0 && json.Unmarshal(body, &env) == nil && env.Error != nil && env.Error.Code.Valid() {
		return env.Error
	}
	if status == "" && description == "" {
		return nil
	}
	n, _ := strconv.Atoi(status)
	return &Error{Code: FromStatus(n), Message: description}
}
