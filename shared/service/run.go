package service

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"troveng.dev/shared/admin"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry"
)

// StopTimeout bounds a graceful stop; it fits in Kubernetes' default 30 s termination grace period.
const StopTimeout = 25 * time.Second

// RunUntilSignal blocks until SIGINT or SIGTERM arrives (or ctx ends), then calls stop with a context bounded
// by StopTimeout and returns stop's error.
func RunUntilSignal(ctx context.Context, stop func(context.Context) error) error {
	sigCtx, cancel := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer cancel()
	<-sigCtx.Done()
	cancel() // a second signal now kills the process the default way, for an operator who won't wait
	slog.Info("stopping", "reason", context.Cause(sigCtx))
	stopCtx, stopCancel := context.WithTimeout(context.WithoutCancel(ctx), StopTimeout)
	defer stopCancel()
	return stop(stopCtx)
}

// Stopper returns the graceful stop of a standalone service, in order: admin HTTP (probes start failing and
// no new admin calls arrive), the micro service (no new requests), the NATS connection drained (requests
// already received are answered and published messages flushed), then telemetry flushed. Any part may be nil.
func Stopper(adm *admin.Server, svc *Service, nc *nats.Conn, tel *telemetry.Telemetry) func(context.Context) error {
	return func(ctx context.Context) error {
		var all []error
		if adm != nil {
			if err := adm.Shutdown(ctx); err != nil {
				all = append(all, err)
			}
		}
		if svc != nil {
			if err := svc.Stop(); err != nil {
				all = append(all, err)
			}
		}
		if nc != nil {
			if err := Drain(ctx, nc); err != nil {
				all = append(all, err)
			}
		}
		if tel != nil {
			if err := tel.Shutdown(ctx); err != nil {
				all = append(all, err)
			}
		}
		return errors.Join(all...)
	}
}

// Drain drains nc and waits until it is closed or ctx ends (then it is closed at once).
func Drain(ctx context.Context, nc *nats.Conn) error {
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		nc.Close()
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		return errs.Wrap(errs.Unavailable, err, "drain NATS connection")
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !nc.IsClosed() {
		select {
		case <-ctx.Done():
			nc.Close()
			return errs.Wrap(errs.Timeout, ctx.Err(), "drain NATS connection")
		case <-tick.C:
		}
	}
	return nil
}
