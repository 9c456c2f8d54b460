package service_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"troveng.dev/shared/admin"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/natstest"
	"troveng.dev/shared/rpc"
	"troveng.dev/shared/service"
	"troveng.dev/shared/telemetry/telemetrytest"
)

func TestRunUntilSignalStopsWhenContextEnds(t *testing.T) {
	// Sending a real SIGTERM to the test process would kill it if it raced the handler's installation, so
	// the context path is what is tested; both paths end in the same stop call.
	ctx, cancel := context.WithCancel(context.Background())
	called := make(chan bool, 1)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	err := service.RunUntilSignal(ctx, func(stopCtx context.Context) error {
		dl, ok := stopCtx.Deadline()
		called <- ok && time.Until(dl) > 20*time.Second && stopCtx.Err() == nil
		return errs.Conflictf("stop result")
	})
	if !errs.Is(err, errs.Conflict) {
		t.Fatalf("stop's error not returned: %v", err)
	}
	if !<-called {
		t.Fatal("stop did not get a live, bounded context")
	}
}

func TestStopperOrder(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	tel, _ := telemetrytest.New(t)
	svc, err := service.Start(nc, testSpec("stopper", "a"), tel, nil)
	if err != nil {
		t.Fatal(err)
	}
	adm := admin.New(admin.Config{Addr: "127.0.0.1:0", Service: "trove-stopper", Version: "1.2.3", Metrics: tel.MetricsHandler()})
	addr, err := adm.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := service.Stopper(adm, svc, nc, tel)(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("admin still serving")
	}
	if !svc.Micro().Stopped() || !nc.IsClosed() {
		t.Fatalf("stopped=%v closed=%v", svc.Micro().Stopped(), nc.IsClosed())
	}
	if err := rpc.Call(ctx, srv.Connect(), "trove.stopper.v1.echo", nil, nil); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("service still answering: %v", err)
	}
	// Stopping twice is harmless.
	if err := service.Stopper(adm, svc, nc, nil)(ctx); err != nil {
		t.Fatal(err)
	}
}
