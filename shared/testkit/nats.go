package testkit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/nats-io/nats-server/v2/server"

	"troveng.dev/shared/embednats"
)

// NATS is the kit's embedded server: JetStream on, listening on the host address guests reach. It can be
// stopped and restarted on the same address, port and store (a NATS outage, as guests see it).
type NATS struct {
	host       string
	dir        string
	maxPayload int32
	mu         sync.Mutex
	port       int
	srv        *server.Server
}

func startNATS(host, dir string, maxPayload int32) (*NATS, error) {
	n := &NATS{host: host, dir: dir, maxPayload: maxPayload}
	if err := n.start(); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *NATS) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	srv, err := embednats.Start(embednats.Options{Host: n.host, Port: n.port, StoreDir: n.dir, MaxPayload: n.maxPayload})
	if err != nil {
		return fmt.Errorf("testkit: NATS on %s: %w", n.host, err)
	}
	n.srv = srv
	n.port = srv.Addr().(*net.TCPAddr).Port
	return nil
}

// URL is the client URL (nats://HOST:PORT), the same from the host and from guests.
func (n *NATS) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("nats://%s", net.JoinHostPort(n.host, fmt.Sprint(n.port)))
}

// Server is the running server (nil while stopped).
func (n *NATS) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Stop shuts the server down (idempotent).
func (n *NATS) Stop() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops the server and starts it again on the same port with the same JetStream store.
func (n *NATS) Restart() error {
	n.Stop()
	return n.start()
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	// EPERM (someone else's process) is alive too; only "no such process" is gone.
	err = p.Signal(syscall.Signal(0))
	return err == nil || !errors.Is(err, os.ErrProcessDone)
}
