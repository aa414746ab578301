package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/controlplane"
)

// denyBash is a hook that denies bash calls, as a policy rule would, and
// allows the rest.
type denyBash struct{}

func (denyBash) BeforeCall(_ context.Context, c *Call) error {
	if c.Tool == "bash" {
		c.Decision = Decision{Policy: "deny", By: "rule:no shell", Rule: "no shell"}
		return errors.New("no shell here")
	}
	c.Decision = Decision{Policy: "allow", By: "rule:files", Rule: "files"}
	return nil
}
func (denyBash) AfterCall(context.Context, *Call, *Outcome) {}

func TestADeniedCallHasADecisionSpanAndNoExecAndEveryCallIsAudited(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: write
    input: {file_path: a.txt, content: "secret-payload-text"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "echo secret-payload-text"}
    expect: {is_error: true, contains: "no shell here"}
  - end: terminate
`)})
	spans := tracetest.NewSpanRecorder()
	opts := h.workerOptions(t.TempDir())
	opts.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	opts.Hooks = []Hook{denyBash{}}
	dir := filepath.Join(t.TempDir(), "audit")
	aw, err := audit.Open(dir, audit.Options{SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	opts.Audit = aw
	opts.SessionAttributes = map[string]string{"tenant.id": "tenant", "enduser.id": "user"}
	rw := h.startWorker(opts)
	sess, err := h.client.Beta.Sessions.New(context.Background(), anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: anthropic.String("agent_s")},
		EnvironmentID: controlplane.DefaultEnvironmentID,
		Metadata:      map[string]string{"tenant": "acme", "user": "alice@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := sess.ID
	h.waitScenario(id, "passed")
	waitFor(t, "work span ended", func() bool { return hasSpan(spans.Ended(), "perimeter.work") })
	if err := rw.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}

	// Spans: each call has a decision span under its tool span; only the
	// allowed one reached the sandbox.
	toolOf := map[string]string{} // tool span id → tool name
	for _, s := range spans.Ended() {
		if attr(s, "gen_ai.operation.name") == "execute_tool" {
			toolOf[s.SpanContext().SpanID().String()] = attr(s, "gen_ai.tool.name")
		}
	}
	decisions := map[string]string{} // tool → decision
	execs := map[string]int{}
	for _, s := range spans.Ended() {
		tool := toolOf[s.Parent().SpanID().String()]
		switch s.Name() {
		case "perimeter.policy.decide":
			decisions[tool] = attr(s, "perimeter.decision") + " by " + attr(s, "perimeter.decided_by")
		case "perimeter.sandbox.exec":
			execs[attr(s, "perimeter.sandbox.tool")]++
		}
	}
	if decisions["write"] != "allow by rule:files" || decisions["bash"] != "deny by rule:no shell" {
		t.Errorf("decision spans by tool: %v", decisions)
	}
	if execs["bash"] != 0 || execs["write"] != 1 {
		t.Errorf("sandbox exec spans by tool: %v; want the write only", execs)
	}
	if !hasSpan(spans.Ended(), "perimeter.sandbox.start") {
		t.Error("no sandbox start span")
	}
	// The operator's metadata attributes are on the session and its calls.
	for _, s := range spans.Ended() {
		if s.Name() == "perimeter.session" || attr(s, "gen_ai.operation.name") == "execute_tool" {
			if attr(s, "tenant.id") != "acme" || attr(s, "enduser.id") != "alice@example.com" {
				t.Errorf("span %s lacks the session's metadata attributes: %v", s.Name(), s.Attributes())
			}
		}
	}

	// The audit log verifies, holds no payload, and tells each call's story.
	if _, err := audit.Verify(dir); err != nil {
		t.Fatalf("the audit log does not verify: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "secret-payload-text") {
			t.Errorf("%s holds a tool input or output", f)
		}
		for _, kind := range []string{`"session_started"`, `"tool_decision"`, `"tool_result"`, `"session_ended"`} {
			if !strings.Contains(string(b), kind) {
				t.Errorf("the log has no %s record", kind)
			}
		}
	}
	ds, err := audit.Dossiers(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range ds {
		got[d.Tool] = d.Decision + "/" + d.DecidedBy + "/" + d.Status
		if d.InputSHA256 == "" {
			t.Errorf("dossier of %s has no input hash", d.Tool)
		}
	}
	if got["write"] != "allow/rule:files/ok" || got["bash"] != "deny/rule:no shell/denied" || len(ds) != 2 {
		t.Errorf("dossiers: %v", got)
	}
}
