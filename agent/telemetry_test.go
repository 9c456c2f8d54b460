package agent

import (
	"io"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"go.opentelemetry.io/otel"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/telemetry/telemetrytest"
)

func TestTracesAndMetrics(t *testing.T) {
	tel, exp := telemetrytest.New(t)
	h := newHarnessTel(t, tel, func(c *Config) { c.MaxExecs = 1 })
	ctx, root := otel.Tracer("test").Start(ctxFor(t, 30*time.Second), "caller")
	r, err := h.gc.Run(ctx, guestv1.ExecRequest{Tool: "datagen", Args: datagenArgs(100000, 1),
		Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutStorage, Storage: &guestv1.StorageRef{Key: "tel/x", Frames: &guestv1.FrameSpec{ArtifactID: "x"}}}}, nil)
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "datagen", r)
	// One trace from the caller through the request, the run, the tool and the transfer.
	want := []string{"caller", "rpc trove.guest.g1.exec", "guest.exec", "guest.exec.run", "guest.exec.tool", "guest.exec.transfer", "guest.exec_wait"}
	waitFor(t, "the spans of the exec", 5*time.Second, func() bool {
		spans := telemetrytest.SpansOfTrace(exp, root.SpanContext().TraceID())
		for _, name := range want {
			if _, ok := telemetrytest.SpanNamed(spans, name); !ok {
				return false
			}
		}
		return true
	})
	spans := telemetrytest.SpansOfTrace(exp, root.SpanContext().TraceID())
	run, _ := telemetrytest.SpanNamed(spans, "guest.exec.run")
	tool, _ := telemetrytest.SpanNamed(spans, "guest.exec.tool")
	server, _ := telemetrytest.SpanNamed(spans, "guest.exec")
	if tool.Parent.SpanID() != run.SpanContext.SpanID() || run.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Fatal("the tool's span is not a child of the run's, or the run's not of the request's")
	}

	// A refusal past the limit, a refused tool and a failing tool are counted.
	st, err := h.gc.Exec(ctxFor(t, 5*time.Second), guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "sleep 300"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.gc.Exec(ctxFor(t, 5*time.Second), guestv1.ExecRequest{Tool: "cat"})
	wantErrCode(t, "busy", err, errs.Busy)
	if _, err := h.gc.Cancel(ctxFor(t, 5*time.Second), st.ExecID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gc.Wait(ctxFor(t, 10*time.Second), st.ExecID, nil); err != nil {
		t.Fatal(err)
	}
	_, _ = h.gc.Exec(ctxFor(t, 5*time.Second), guestv1.ExecRequest{Tool: "no-such-tool"})
	r = h.run(guestv1.ExecRequest{Tool: "sh", Args: []string{"-c", "exit 2"}}, nil)
	if r.ExitCode != 2 {
		t.Fatal(r)
	}
	patterns := []string{
		`(?m)^trove_guest_execs_total\{[^}]*outcome="ok"[^}]*tool="datagen"[^}]*\} 1$`,
		`(?m)^trove_guest_execs_total\{[^}]*outcome="busy"[^}]*tool="cat"[^}]*\} 1$`,
		`(?m)^trove_guest_execs_total\{[^}]*outcome="cancelled"[^}]*tool="sh"[^}]*\} 1$`,
		`(?m)^trove_guest_execs_total\{[^}]*outcome="exit_nonzero"[^}]*tool="sh"[^}]*\} 1$`,
		`(?m)^trove_guest_execs_total\{[^}]*outcome="bad_request"[^}]*tool="other"[^}]*\} 1$`,
		`(?m)^trove_guest_busy_total\{[^}]*op="exec"[^}]*\} 1$`,
		`(?m)^trove_bytes_total\{[^}]*direction="out"[^}]*op="exec"[^}]*\} 100000$`,
		`(?m)^trove_requests_total\{[^}]*code="ok"[^}]*endpoint="guest.exec"[^}]*\} [0-9]+$`,
	}
	var text string
	waitFor(t, "the metrics", 5*time.Second, func() bool {
		rec := httptest.NewRecorder()
		tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		text = string(b)
		for _, p := range patterns {
			if !regexp.MustCompile(p).MatchString(text) {
				return false
			}
		}
		return true
	})
}
