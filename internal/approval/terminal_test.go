package approval

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

const askPolicy = `version: 1
default: {decision: allow}
rules:
  - name: ask first
    tools: [write]
    decision: ask
    deadline: 1m
    message: a human at the terminal decides
`

// terminalGate is a gate asking at a terminal fed from the returned
// writer, whose prompts land in the returned buffer.
func terminalGate(t *testing.T) (*Gate, io.Writer, *testenv.Buffer) {
	t.Helper()
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	in, typed := io.Pipe()
	t.Cleanup(func() { typed.Close() })
	var out testenv.Buffer
	g.opts.Terminal = NewTerminal(in, &out, "alice")
	p := mustParse(t, askPolicy)
	if err := g.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	return g, typed, &out
}

func TestTheTerminalAnswersAnAsk(t *testing.T) {
	for _, tc := range []struct {
		typed, wantErr, wantBy string
	}{
		{"y\n", "", "human:alice (terminal)"},
		{"maybe\nn not before the release\n", "denied by a reviewer (alice (terminal)): not before the release", "human:alice (terminal)"},
	} {
		g, typed, out := terminalGate(t)
		done := make(chan error, 1)
		go func() {
			done <- g.BeforeCall(context.Background(), call("sevt_w", "write", `{"file_path":"a","content":"x"}`))
		}()
		waitUntil(t, "the prompt", func() bool { return strings.Contains(out.String(), "approve? [y/N") })
		if !strings.Contains(out.String(), "a human at the terminal decides") || !strings.Contains(out.String(), `"file_path":"a"`) {
			t.Errorf("prompt lacks the rule's message or the input:\n%s", out.String())
		}
		go typed.Write([]byte(tc.typed))
		var err error
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the answer did not decide the call")
		}
		if (tc.wantErr == "" && err != nil) || (tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr))) {
			t.Errorf("typed %q: %v, want %q", tc.typed, err, tc.wantErr)
		}
		r, _ := g.Store().Get(context.Background(), "sevt_w")
		if r.DecidedBy != tc.wantBy {
			t.Errorf("decided by %q, want %q", r.DecidedBy, tc.wantBy)
		}
		if strings.Contains(tc.typed, "maybe") && !strings.Contains(out.String(), "answer y or n") {
			t.Error("an unclear answer was not asked again")
		}
	}
}

func TestADecisionElsewhereWithdrawsThePrompt(t *testing.T) {
	g, _, out := terminalGate(t)
	done := make(chan error, 1)
	go func() {
		done <- g.BeforeCall(context.Background(), call("sevt_w", "write", `{"file_path":"a","content":"x"}`))
	}()
	waitUntil(t, "the prompt", func() bool { return strings.Contains(out.String(), "approve?") })
	if _, err := g.Decide(context.Background(), "sevt_w", true, "human:bob", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the prompt to be withdrawn", func() bool { return strings.Contains(out.String(), "no longer waiting") })
}

func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
