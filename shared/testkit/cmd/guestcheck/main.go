// Command guestcheck starts one guest per engine named on the command line (mariadb, postgresql, redis)
// with the test kit (an in-process NATS on the containers' gateway), waits until each agent is registered
// with its engine healthy, prints how long that took and what the guest reported, and removes it. Exit
// status 1 when any guest failed. Used by `scripts/build-guest-image.sh --check`.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"troveng.dev/shared/testkit"
)

func main() {
	engines := os.Args[1:]
	if len(engines) == 0 {
		engines = []string{"mariadb", "postgresql", "redis"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := testkit.New(ctx, testkit.Options{Prefix: "check", ReadyTimeout: 2 * time.Minute})
	if err != nil {
		fmt.Fprintf(os.Stderr, "!! guestcheck: %v\n", err)
		os.Exit(1)
	}
	failed := false
	for _, e := range engines {
		t0 := time.Now()
		g, err := k.AddGuest(ctx, testkit.GuestOptions{Engine: e})
		if err != nil {
			fmt.Fprintf(os.Stderr, "!! guestcheck: %s: %v\n", e, err)
			failed = true
			continue
		}
		r, err := g.Registration(ctx)
		if err != nil {
			fmt.Fprintf(os.Stderr, "!! guestcheck: %s: %v\n", e, err)
			failed = true
			continue
		}
		fmt.Fprintf(os.Stderr, "== guestcheck: %s healthy %.2fs after start: %s %s (agent %s, %s:%d, %d tools)\n",
			e, time.Since(t0).Seconds(), r.Engine, r.EngineVersion, r.AgentVersion, g.IP(), g.Port(), len(r.Tools))
	}
	if err := k.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "!! guestcheck: %v\n", err)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}
