package testkit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
)

// ContainerOptions describe a container on the kit's network (guests are made with AddGuest; this is for
// anything else a test needs beside them).
type ContainerOptions struct {
	Name       string // default: generated
	Image      string // default: the kit's guest image
	Entrypoint []string
	Cmd        []string
	Env        map[string]string
	// Ports are container ports ("3306/tcp") published on random host ports when the kit publishes
	// (Docker Desktop); on Linux the container's own address is used and nothing is published.
	Ports []string
}

// Container is a running (or stopped) container on the kit's network.
type Container struct {
	Name string
	kit  *Kit
	c    *testcontainers.DockerContainer

	mu      sync.Mutex
	ip      string
	started time.Time
}

// RunContainer creates and starts a container on the kit's network.
func (k *Kit) RunContainer(ctx context.Context, o ContainerOptions) (*Container, error) {
	img := o.Image
	if img == "" {
		img = k.image
	}
	ct := &Container{Name: o.Name, kit: k}
	if ct.Name == "" {
		ct.Name = k.network.Name + "-" + randomHex(4)
	}
	req := testcontainers.ContainerRequest{
		Image:      img,
		Name:       ct.Name,
		Entrypoint: o.Entrypoint,
		Cmd:        o.Cmd,
		Env:        o.Env,
		Labels:     k.labels(),
		Networks:   []string{k.network.Name},
		NetworkAliases: map[string][]string{
			k.network.Name: {ct.Name},
		},
		HostConfigModifier: func(hc *container.HostConfig) {
			if k.hostAddr == "host.docker.internal" {
				hc.ExtraHosts = append(hc.ExtraHosts, "host.docker.internal:host-gateway")
			}
		},
	}
	if k.publish {
		req.ExposedPorts = o.Ports
	}
	ct.started = time.Now()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req,
		Started:          true,
		Logger:           tclog.NewNoopLogger(),
	})
	if c != nil {
		ct.c = c.(*testcontainers.DockerContainer)
	}
	if err != nil {
		if ct.c != nil {
			_ = ct.terminate(context.WithoutCancel(ctx))
		}
		return nil, fmt.Errorf("testkit: start container %s from %s (build it: scripts/build-guest-image.sh): %w", ct.Name, img, err)
	}
	if err := ct.refreshIP(ctx); err != nil {
		_ = ct.terminate(context.WithoutCancel(ctx))
		return nil, err
	}
	return ct, nil
}

// ID is the container's id.
func (c *Container) ID() string { return c.c.GetContainerID() }

// Raw is the testcontainers-go container, for what this type does not cover.
func (c *Container) Raw() *testcontainers.DockerContainer { return c.c }

// IP is the container's address on the kit's network (as of its last start). The host reaches it on
// Linux; guests reach each other by it (or by Name).
func (c *Container) IP() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ip
}

// StartedAt is when the kit last started the container.
func (c *Container) StartedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}

func (c *Container) refreshIP(ctx context.Context) error {
	res, err := c.kit.docker.ContainerInspect(ctx, c.ID(), client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("testkit: inspect %s: %w", c.Name, err)
	}
	ip := ""
	if res.Container.NetworkSettings != nil {
		if ep := res.Container.NetworkSettings.Networks[c.kit.network.Name]; ep != nil && ep.IPAddress.IsValid() {
			ip = ep.IPAddress.String()
		}
	}
	if ip == "" {
		return fmt.Errorf("testkit: %s has no address on network %s", c.Name, c.kit.network.Name)
	}
	c.mu.Lock()
	c.ip = ip
	c.mu.Unlock()
	return nil
}

// ExecResult is the outcome of a command run in a container.
type ExecResult struct {
	Code   int
	Stdout []byte
	Stderr []byte
}

// String is the combined output, for test messages.
func (r ExecResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.Code, trimTail(r.Stdout), trimTail(r.Stderr))
}

func trimTail(b []byte) string {
	const n = 2048
	if len(b) > n {
		return "..." + string(b[len(b)-n:])
	}
	return string(b)
}

// Exec runs a command in the container (an argument vector; use "sh", "-c", ... for a pipeline) and
// returns its exit code and outputs. The error is about running it at all, not about its exit code.
func (c *Container) Exec(ctx context.Context, cmd ...string) (ExecResult, error) {
	code, r, err := c.c.Exec(ctx, cmd)
	if err != nil {
		return ExecResult{Code: -1}, fmt.Errorf("testkit: exec %q in %s: %w", cmd, c.Name, err)
	}
	var out, errOut bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errOut, r); err != nil {
		return ExecResult{Code: code}, fmt.Errorf("testkit: exec %q in %s: read output: %w", cmd, c.Name, err)
	}
	return ExecResult{Code: code, Stdout: out.Bytes(), Stderr: errOut.Bytes()}, nil
}

// Output runs a command that must exit 0 and returns its stdout with surrounding space trimmed.
func (c *Container) Output(ctx context.Context, cmd ...string) (string, error) {
	r, err := c.Exec(ctx, cmd...)
	if err != nil {
		return "", err
	}
	if r.Code != 0 {
		return "", fmt.Errorf("testkit: %q in %s: %s", cmd, c.Name, r)
	}
	return strings.TrimSpace(string(r.Stdout)), nil
}

// Stop stops the container: SIGTERM to its PID 1, SIGKILL after timeout.
func (c *Container) Stop(ctx context.Context, timeout time.Duration) error {
	if err := c.c.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("testkit: stop %s: %w", c.Name, err)
	}
	return nil
}

// Kill sends SIGKILL to the container's processes (a crash: nothing shuts down cleanly) and waits until
// the container is no longer running.
func (c *Container) Kill(ctx context.Context) error { return c.Signal(ctx, "SIGKILL") }

// Signal sends a signal to the container's PID 1; for SIGKILL it waits until the container has stopped.
func (c *Container) Signal(ctx context.Context, sig string) error {
	if _, err := c.kit.docker.ContainerKill(ctx, c.ID(), client.ContainerKillOptions{Signal: sig}); err != nil {
		return fmt.Errorf("testkit: %s to %s: %w", sig, c.Name, err)
	}
	if sig != "SIGKILL" && sig != "KILL" && sig != "9" {
		return nil
	}
	for {
		running, err := c.Running(ctx)
		if err != nil || !running {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Running reports whether the container runs now.
func (c *Container) Running(ctx context.Context) (bool, error) {
	res, err := c.kit.docker.ContainerInspect(ctx, c.ID(), client.ContainerInspectOptions{})
	if err != nil {
		return false, fmt.Errorf("testkit: inspect %s: %w", c.Name, err)
	}
	return res.Container.State != nil && res.Container.State.Running, nil
}

// Start starts a stopped container again (same file system, same name) and refreshes its address.
func (c *Container) Start(ctx context.Context) error {
	c.mu.Lock()
	c.started = time.Now()
	c.mu.Unlock()
	if err := c.c.Start(ctx); err != nil {
		return fmt.Errorf("testkit: start %s: %w", c.Name, err)
	}
	return c.refreshIP(ctx)
}

// Logs returns the container's output so far (stdout and stderr interleaved as written).
func (c *Container) Logs(ctx context.Context) (string, error) {
	r, err := c.c.Logs(ctx)
	if err != nil {
		return "", fmt.Errorf("testkit: logs of %s: %w", c.Name, err)
	}
	defer func() { _ = r.Close() }()
	b, err := io.ReadAll(r)
	return string(b), err
}

func (c *Container) terminate(ctx context.Context) error {
	if c.c == nil {
		return nil
	}
	if err := c.c.Terminate(ctx, testcontainers.StopTimeout(0)); err != nil {
		return fmt.Errorf("testkit: remove %s: %w", c.Name, err)
	}
	return nil
}
