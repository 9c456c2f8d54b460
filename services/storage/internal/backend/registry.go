package backend

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/bytesize"
	"troveng.dev/shared/errs"
)

// Factory opens a strategy from its string configuration (keys documented on each strategy).
type Factory func(ctx context.Context, cfg map[string]string) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a strategy available under name. It panics on an empty name, a nil factory or a name
// registered twice: all are programming errors found at init.
func Register(name string, f Factory) {
	if name == "" || f == nil {
		panic("backend: Register needs a name and a factory")
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("backend: strategy %q registered twice", name))
	}
	registry[name] = f
}

// Env holds what the hosting service already has and a strategy may use instead of making its own.
type Env struct {
	// NATS is the service's connection: the nats strategy stores through it when its configuration
	// names no url (the strategy then does not close it).
	NATS *nats.Conn
}

type envKey struct{}

// envFrom returns the Env that Open passed to a factory. (Carried in the context so that the Factory
// signature stays the plain string configuration every strategy shares.)
func envFrom(ctx context.Context) Env {
	env, _ := ctx.Value(envKey{}).(Env)
	return env
}

// Open opens the strategy registered under name with cfg and, optionally, the service's Env. An unknown
// name is errs.BadRequest listing the known names.
func Open(ctx context.Context, name string, cfg map[string]string, env ...Env) (Backend, error) {
	registryMu.RLock()
	f, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, errs.BadRequestf("unknown storage strategy %q; known strategies: %s", name, strings.Join(Names(), ", "))
	}
	if cfg == nil {
		cfg = map[string]string{}
	}
	if len(env) > 0 {
		ctx = context.WithValue(ctx, envKey{}, env[0])
	}
	return f(ctx, cfg)
}

// Names lists the registered strategies, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// config reads a strategy's string configuration and rejects keys the strategy does not know, so a typo in
// a flag or environment variable is reported instead of silently ignored.
type config struct {
	strategy string
	values   map[string]string
	known    []string
}

func newConfig(strategy string, values map[string]string, known ...string) (*config, error) {
	for k := range values {
		if !slices.Contains(known, k) {
			return nil, errs.BadRequestf("%s strategy: unknown configuration key %q; known keys: %s", strategy, k, strings.Join(known, ", "))
		}
	}
	return &config{strategy: strategy, values: values, known: known}, nil
}

func (c *config) str(key, def string) string {
	if v, ok := c.values[key]; ok && v != "" {
		return v
	}
	return def
}

func (c *config) required(key string) (string, error) {
	v := c.values[key]
	if v == "" {
		return "", errs.BadRequestf("%s strategy: configuration key %q is required", c.strategy, key)
	}
	return v, nil
}

func (c *config) boolean(key string, def bool) (bool, error) {
	v, ok := c.values[key]
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errs.BadRequestf("%s strategy: %s=%q is not a boolean (true/false)", c.strategy, key, v)
	}
	return b, nil
}

func (c *config) integer(key string, def, min, max int64) (int64, error) {
	v, ok := c.values[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min || n > max {
		return 0, errs.BadRequestf("%s strategy: %s=%q must be an integer from %d to %d", c.strategy, key, v, min, max)
	}
	return n, nil
}

// bytes reads a size (bytesize.Parse) between min and max.
func (c *config) bytes(key string, def, min, max int64) (int64, error) {
	v, ok := c.values[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := bytesize.Parse(v)
	if err != nil || n < min || n > max {
		return 0, errs.BadRequestf("%s strategy: %s=%q must be a size from %d to %d bytes (suffixes KiB, MiB, GiB allowed)", c.strategy, key, v, min, max)
	}
	return n, nil
}

func (c *config) duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := c.values[key]
	if !ok || v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, errs.BadRequestf("%s strategy: %s=%q is not a positive duration (e.g. 30s, 5m)", c.strategy, key, v)
	}
	return d, nil
}
