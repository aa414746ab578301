package approval

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/perimeterhq/perimeter/internal/audit"
)

// An approved call nests its approval wait under the span it was decided
// in, and the audit log records the request and the decision.
func TestAnApprovalWaitIsASpanAndTwoAuditRecords(t *testing.T) {
	rcv := newReceiver(t)
	g := newGate(t, t.TempDir(), "1h", rcv)
	dir := filepath.Join(t.TempDir(), "audit")
	aw, err := audit.Open(dir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g.opts.Audit = aw
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	ctx, parent := tp.Tracer("test").Start(context.Background(), "perimeter.policy.decide")

	c := call("sevt_w", "write", `{"file_path":"a.txt","content":"x"}`)
	done := make(chan error, 1)
	go func() { done <- g.BeforeCall(ctx, c) }()
	waitUntil(t, "the request to be notified", func() bool { return rcv.n.Load() == 1 })
	if _, err := g.Decide(context.Background(), "sevt_w", true, "human:alice", "fine", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("approved call: %v", err)
	}
	parent.End()
	if c.Decision.Policy != "defer" || !c.Decision.Allowed || c.Decision.By != "human:alice" || c.Decision.Waited <= 0 {
		t.Errorf("the call's decision: %+v", c.Decision)
	}
	var wait sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.Name() == "perimeter.approval.wait" {
			wait = s
		}
	}
	if wait == nil {
		t.Fatal("no approval wait span")
	}
	if wait.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Error("the wait span is not under the decision's span")
	}
	for k, want := range map[string]string{"perimeter.approval.outcome": "allowed", "perimeter.decided_by": "human:alice", "perimeter.policy.decision": "defer"} {
		if got := spanAttr(wait, k); got != want {
			t.Errorf("wait span %s = %q, want %q", k, got, want)
		}
	}

	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	var kinds []audit.Kind
	if err := audit.Read(dir, func(e audit.Entry) error {
		kinds = append(kinds, e.Kind)
		if e.Kind == audit.KindApprovalDecided {
			var d audit.ApprovalDecided
			if err := e.Decode(&d); err != nil || !d.Approved || d.DecidedBy != "human:alice" {
				t.Errorf("approval_decided: %+v, %v", d, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(kinds) != 2 || kinds[0] != audit.KindApprovalRequested || kinds[1] != audit.KindApprovalDecided {
		t.Errorf("audit records: %v", kinds)
	}
}

func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// A decision given while no worker waited (through the store, between two
// workers) is audited by the worker that applies it, edited input and all.
func TestADecisionMadeWhileNoWorkerWaitedIsAudited(t *testing.T) {
	dir := t.TempDir()
	rcv := newReceiver(t)
	input := `{"file_path":"a.txt","content":"x"}`
	g1 := newGate(t, dir, "1h", rcv)
	leftWaiting(t, g1, rcv, "sevt_w", input)

	edit := []byte(`{"file_path":"a.txt","content":"edited"}`)
	if _, err := g1.Store().Decide(context.Background(), "sevt_w", true, "human:carol", "fixed the content", edit, time.Now()); err != nil {
		t.Fatal(err)
	}
	g2 := newGate(t, dir, "1h", rcv)
	auditDir := filepath.Join(t.TempDir(), "audit")
	aw, err := audit.Open(auditDir, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g2.opts.Audit = aw
	c := call("sevt_w", "write", input)
	if err := g2.BeforeCall(context.Background(), c); err != nil {
		t.Fatalf("second worker: %v", err)
	}
	if string(c.Input) != string(edit) {
		t.Fatalf("the call runs %s, want the edited input", c.Input)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	var decided []audit.ApprovalDecided
	if err := audit.Read(auditDir, func(e audit.Entry) error {
		if e.Kind == audit.KindApprovalDecided {
			var d audit.ApprovalDecided
			if err := e.Decode(&d); err != nil {
				return err
			}
			decided = append(decided, d)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := audit.ApprovalDecided{Approved: true, DecidedBy: "human:carol", Reason: "fixed the content", EditedInputSHA256: sha256Hex(edit)}
	if len(decided) != 1 || decided[0] != want {
		t.Errorf("approval_decided records: %+v, want one %+v", decided, want)
	}
}
