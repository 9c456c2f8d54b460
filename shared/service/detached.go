package service

import (
	"encoding/json"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// detachedRequest answers a request after micro's handler has returned. micro records the outcome of
// Respond and Error in the request it passed in and reads it back, unlocked, as soon as the handler
// returns; a concurrent endpoint answers later from its own goroutine, so it must not touch that request.
// This one publishes the same reply (micro's error headers included) on the connection instead.
type detachedRequest struct {
	micro.Request
	nc *nats.Conn
}

var errNoReply = errors.New("the request has no reply subject")

func (r detachedRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	return r.publish(&nats.Msg{Data: data}, opts)
}

func (r detachedRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

func (r detachedRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	if code == "" || description == "" {
		return micro.ErrArgRequired
	}
	msg := &nats.Msg{Data: data, Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}}
	return r.publish(msg, opts)
}

func (r detachedRequest) publish(msg *nats.Msg, opts []micro.RespondOpt) error {
	for _, opt := range opts {
		opt(msg)
	}
	if msg.Subject = r.Reply(); msg.Subject == "" {
		return errNoReply
	}
	return r.nc.PublishMsg(msg)
}
