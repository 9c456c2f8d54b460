// Package natstest gives tests a real, embedded NATS server with JetStream that can be stopped and
// restarted on the same port (to test what happens when NATS goes away mid-operation).
package natstest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"troveng.dev/shared/embednats"
	"troveng.dev/shared/natsauth"
)

// Server is an embedded NATS server owned by one test.
type Server struct {
	t     testing.TB
	dir   string
	port  int
	srv   *server.Server
	users []natsauth.User // StartAuth's identities; none: anyone may connect and do anything
}

// Start starts a server with JetStream stored under t.TempDir(); it is shut down when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	srv, err := embednats.Start(embednats.Options{Port: s.port, StoreDir: s.dir, Users: s.users})
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	s.srv = srv
	s.port = srv.Addr().(*net.TCPAddr).Port
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Stop shuts the server down (idempotent).
func (s *Server) Stop() {
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
}

// Restart stops the server and starts it again on the same port with the same JetStream store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Connect returns a client connection that reconnects forever; it is closed when the test ends.
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		s.t.Fatalf("natstest: connect: %v", err)
	}
	s.t.Cleanup(nc.Close)
	return nc
}
