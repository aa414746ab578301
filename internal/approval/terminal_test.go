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

// A line typed while no prompt shows (for a prompt withdrawn just before,
// or by accident) answers nothing: it must not approve the next call.
func TestALineTypedBeforeAPromptDoesNotAnswerIt(t *testing.T) {
	in, typed := io.Pipe()
	t.Cleanup(func() { typed.Close() })
	var out testenv.Buffer
	term := NewTerminal(in, &out, "alice")

	first, withdraw := context.WithCancel(context.Background())
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		term.Ask(first, Record{ToolUseID: "sevt_first", Tool: "write"})
	}()
	waitUntil(t, "the first prompt", func() bool { return strings.Contains(out.String(), "approve?") })
	withdraw()
	<-asked
	// The human answers the withdrawn prompt; the terminal has read the
	// line before the next prompt shows.
	if _, err := typed.Write([]byte("y\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)

	type answer struct{ allow, ok bool }
	got := make(chan answer, 1)
	go func() {
		allow, _, ok := term.Ask(context.Background(), Record{ToolUseID: "sevt_second", Tool: "write"})
		got <- answer{allow, ok}
	}()
	select {
	case a := <-got:
		t.Fatalf("the line typed before the prompt answered it: allow=%v ok=%v", a.allow, a.ok)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := typed.Write([]byte("n\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-got:
		if a.allow || !a.ok {
			t.Errorf("the answer typed at the prompt: allow=%v ok=%v, want a denial", a.allow, a.ok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer typed at the prompt did not answer it")
	}
}
