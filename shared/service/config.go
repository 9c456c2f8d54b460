package service

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/errs"
	"troveng.dev/shared/natsauth"
)

// Config is what a standalone service binary needs to run: how to reach NATS, where to serve admin HTTP,
// where telemetry goes and how much to log.
type Config struct {
	NatsURL   string
	CredsFile string // NATS credentials (JWT + seed) of this service
	NKeyFile  string // or: NATS NKey seed file of this service (a server configured with NKey users)
	TLSCert   string // client certificate (with TLSKey) for mutual TLS
	TLSKey    string
	TLSCA     string // CA bundle to verify the NATS server
	AdminAddr string // admin HTTP listen address (":8080", "127.0.0.1:0"); "" disables admin HTTP
	// AdminToken guards mutating admin routes. It is read from TROVE_ADMIN_TOKEN or from the file named by
	// -admin-token-file / TROVE_ADMIN_TOKEN_FILE (never a flag value, which ps would show), and never logged.
	AdminToken     string
	AdminTokenFile string
	OTLPEndpoint   string // OTLP/gRPC collector; "" exports no traces
	LogLevel       string // debug, info, warn, error
}

// Env names of the settings.
const (
	EnvNatsURL        = "TROVE_NATS_URL"
	EnvNatsCreds      = "TROVE_NATS_CREDS"
	EnvNatsNKey       = "TROVE_NATS_NKEY"
	EnvNatsTLSCert    = "TROVE_NATS_TLS_CERT"
	EnvNatsTLSKey     = "TROVE_NATS_TLS_KEY"
	EnvNatsTLSCA      = "TROVE_NATS_TLS_CA"
	EnvAdminAddr      = "TROVE_ADMIN_ADDR"
	EnvAdminToken     = "TROVE_ADMIN_TOKEN"
	EnvAdminTokenFile = "TROVE_ADMIN_TOKEN_FILE"
	EnvOTLPEndpoint   = "TROVE_OTLP_ENDPOINT"
	EnvLogLevel       = "TROVE_LOG_LEVEL"
)

// DefaultAdminAddr keeps a locally started binary's admin port private and free of clashes; deployments set
// TROVE_ADMIN_ADDR (e.g. ":8080") so probes can reach it.
const DefaultAdminAddr = "127.0.0.1:0"

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// Bind registers the flags on fs; each flag's default comes from its environment variable. Call Load after
// fs.Parse.
func (c *Config) Bind(fs *flag.FlagSet) {
	fs.StringVar(&c.NatsURL, "nats-url", envOr(EnvNatsURL, nats.DefaultURL), "NATS server URL(s), comma separated (env "+EnvNatsURL+")")
	fs.StringVar(&c.CredsFile, "nats-creds", envOr(EnvNatsCreds, ""), "NATS credentials file (env "+EnvNatsCreds+")")
	fs.StringVar(&c.NKeyFile, "nats-nkey", envOr(EnvNatsNKey, ""), "NATS NKey seed file, instead of a credentials file (env "+EnvNatsNKey+")")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", envOr(EnvNatsTLSCert, ""), "client certificate for NATS mutual TLS (env "+EnvNatsTLSCert+")")
	fs.StringVar(&c.TLSKey, "nats-tls-key", envOr(EnvNatsTLSKey, ""), "client key for NATS mutual TLS (env "+EnvNatsTLSKey+")")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", envOr(EnvNatsTLSCA, ""), "CA bundle that signed the NATS server's certificate (env "+EnvNatsTLSCA+")")
	fs.StringVar(&c.AdminAddr, "admin-addr", envOr(EnvAdminAddr, DefaultAdminAddr), "admin HTTP address (/healthz, /readyz, /metrics); empty disables it (env "+EnvAdminAddr+")")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", envOr(EnvAdminTokenFile, ""), "file holding the bearer token for mutating admin routes (env "+EnvAdminTokenFile+"; or the token itself in "+EnvAdminToken+")")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", envOr(EnvOTLPEndpoint, ""), "OTLP/gRPC collector, host:port or http(s):// URL; empty exports no traces (env "+EnvOTLPEndpoint+")")
	fs.StringVar(&c.LogLevel, "log-level", envOr(EnvLogLevel, "info"), "debug, info, warn or error (env "+EnvLogLevel+")")
	c.AdminToken = os.Getenv(EnvAdminToken)
}

// Load finishes the configuration after flag parsing: it reads the admin token file (which wins over
// TROVE_ADMIN_TOKEN) and checks the values that can be checked without connecting.
func (c *Config) Load() error {
	if c.AdminTokenFile != "" {
		b, err := os.ReadFile(c.AdminTokenFile)
		if err != nil {
			return errs.Wrap(errs.BadRequest, err, "read admin token file")
		}
		c.AdminToken = strings.TrimSpace(string(b))
		if c.AdminToken == "" {
			return errs.BadRequestf("admin token file %s is empty", c.AdminTokenFile)
		}
	}
	if _, err := c.Level(); err != nil {
		return err
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errs.BadRequestf("NATS TLS needs both a client certificate and its key (-nats-tls-cert and -nats-tls-key)")
	}
	if c.CredsFile != "" && c.NKeyFile != "" {
		return errs.BadRequestf("give either a NATS credentials file or an NKey seed file (-nats-creds or -nats-nkey), not both")
	}
	return nil
}

// Level is the slog level named by LogLevel ("" is info).
func (c Config) Level() (slog.Level, error) {
	var l slog.Level
	if c.LogLevel == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, errs.BadRequestf("log level %q is not one of debug, info, warn, error", c.LogLevel)
	}
	return l, nil
}

// String describes the configuration for a start-up log line; it shows which secrets are set, never their
// values.
func (c Config) String() string {
	set := func(v string) string {
		if v == "" {
			return "unset"
		}
		return "set"
	}
	return "nats=" + c.NatsURL + " creds=" + c.CredsFile + " nkey=" + c.NKeyFile + " tls_cert=" + c.TLSCert + " tls_ca=" + c.TLSCA +
		" admin=" + c.AdminAddr + " admin_token=" + set(c.AdminToken) + " otlp=" + c.OTLPEndpoint + " log=" + c.LogLevel
}

// LogValue keeps the token out of structured logs too.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Connect connects to NATS as name with the configured credentials and TLS. It retries until ctx ends while
// no server answers (a service may start before NATS); once connected it reconnects forever. Connection
// events are logged. extra options go last (e.g. nats.CustomInboxPrefix for an identity whose permissions
// allow only its own inboxes).
func Connect(ctx context.Context, c Config, name string, extra ...nats.Option) (*nats.Conn, error) {
	for _, f := range []struct{ what, path string }{
		{"NATS credentials file", c.CredsFile}, {"NATS NKey seed file", c.NKeyFile}, {"NATS TLS certificate", c.TLSCert},
		{"NATS TLS key", c.TLSKey}, {"NATS TLS CA bundle", c.TLSCA},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, errs.Wrap(errs.BadRequest, err, "%s", f.what)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errs.BadRequestf("NATS TLS needs both a client certificate and its key")
	}
	if c.CredsFile != "" && c.NKeyFile != "" {
		return nil, errs.BadRequestf("give either a NATS credentials file or an NKey seed file, not both")
	}
	log := slog.Default().With("nats_name", name)
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// A link that died without a TCP reset is noticed after 3 unanswered pings (~30 s, not the
		// default's ~4 min), then reconnected.
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted()) }),
		nats.ClosedHandler(func(nc *nats.Conn) { log.Info("NATS connection closed") }),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("NATS error", "subject", subject, "error", err)
		}),
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.NKeyFile != "" {
		// Read and checked now, so a wrong file is a bad request at once rather than a refused connect.
		id, err := natsauth.SeedOption(c.NKeyFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, id)
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	opts = append(opts, extra...)
	url := c.NatsURL
	if url == "" {
		url = nats.DefaultURL
	}

	wait := 250 * time.Millisecond
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			log.Info("NATS connected", "server", nc.ConnectedUrlRedacted())
			return nc, nil
		}
		if natsauth.IsAuthError(err) {
			return nil, errs.Wrap(errs.Unauthorized, err, "NATS refused %s's identity (check -nats-nkey or -nats-creds, and the server's users)", name)
		}
		if !retryable(err) {
			return nil, errs.Wrap(errs.Unavailable, err, "connect to NATS")
		}
		log.Warn("NATS not reachable yet; retrying", "error", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, errs.Wrap(errs.Unavailable, err, "connect to NATS (gave up: %v)", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// retryable: only "no server answered" is worth waiting for; bad credentials or TLS won't fix themselves.
func retryable(err error) bool {
	return errors.Is(err, nats.ErrNoServers) || strings.Contains(err.Error(), "connection refused") ||
		strings.Contains(err.Error(), "i/o timeout") || strings.Contains(err.Error(), "no such host")
}
