// Package embednats runs a NATS server with JetStream inside this process: the one-command default
// (`trovectl up`) and every test that needs a real NATS use it.
package embednats

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"troveng.dev/shared/natsauth"
)

// Options configure an embedded server.
type Options struct {
	Host     string // listen host; default 127.0.0.1
	Port     int    // listen port; 0 picks a free one (-1 is not used: 0 means random here)
	StoreDir string // JetStream store directory (required: JetStream state survives a restart there)
	// HTTPPort, when > 0, serves the monitoring endpoints (/varz, /jsz) on Host.
	HTTPPort int
	// MaxPayload overrides the maximum message size (default 1 MiB, NATS's own default).
	MaxPayload int32
	// Users, when given, turns authentication on: only these NKey users may connect, each limited to its
	// permissions, and a connection without a valid identity is refused. Without Users anyone on Host may
	// connect and do anything (tests, and a loopback-only stack).
	Users []natsauth.User
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("embednats: StoreDir is required")
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: "trove-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: o.MaxPayload,
	}
	for _, u := range o.Users {
		if !nkeys.IsValidPublicUserKey(u.PublicKey) {
			return nil, fmt.Errorf("embednats: user %q: %q is not an NKey user public key", u.Name, u.PublicKey)
		}
		if err := u.Permissions.Validate(); err != nil {
			return nil, fmt.Errorf("embednats: user %q: %w", u.Name, err)
		}
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: u.PublicKey, Permissions: u.Permissions.Server()})
	}
	if o.HTTPPort > 0 {
		opts.HTTPHost = host
		opts.HTTPPort = o.HTTPPort
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embednats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embednats: server not ready within 10s")
	}
	return s, nil
}
