package worker

import (
	"context"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// panickingHook panics on every call, as a buggy policy plug-in would.
type panickingHook struct{}

func (panickingHook) BeforeCall(context.Context, *Call) error    { panic("hook bug") }
func (panickingHook) AfterCall(context.Context, *Call, *Outcome) {}

// panickingRuntime panics when asked for a sandbox.
type panickingRuntime struct{ sandbox.Runtime }

func (panickingRuntime) Create(context.Context, sandbox.Spec) (sandbox.Sandbox, error) {
	panic("runtime bug")
}

// panickingAudit panics on a session's start record.
type panickingAudit struct{}

func (panickingAudit) Append(_ context.Context, r audit.Record) error {
	if _, ok := r.Data.(audit.SessionStarted); ok {
		panic("audit bug")
	}
	return nil
}

// A panic while serving one session is that session's failure: the call
// gets an error result (or the item is stopped as failed), and the worker
// keeps serving.
func TestAPanicInOneSessionDoesNotStopTheWorker(t *testing.T) {
	answered := func(contains string) string {
		return scenario(`
  - tool: bash
    input: {command: "echo never"}
    expect: {is_error: true, contains: "` + contains + `"}
  - end: terminate
`)
	}
	for _, tc := range []struct {
		name     string
		mod      func(*Options)
		scenario string
		// failed: the session ends before any call, and its item is
		// stopped as failed; otherwise the call gets an error result.
		failed bool
	}{
		{"Hook", func(o *Options) { o.Hooks = []Hook{panickingHook{}} }, answered("internal error"), false},
		{"SandboxStart", func(o *Options) { o.Runtime = panickingRuntime{o.Runtime} }, answered("sandbox failure"), false},
		{"Session", func(o *Options) { o.Audit = panickingAudit{} }, answered(""), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 5*time.Second, map[string]string{"s": tc.scenario})
			opts := h.workerOptions(t.TempDir())
			tc.mod(&opts)
			w := h.startWorker(opts)
			id := h.newSession("s")
			if tc.failed {
				waitFor(t, "the failed item to be stopped", func() bool { return h.workState(id) == "stopped" })
			} else {
				h.waitScenario(id, "passed")
			}
			if !w.Ready() {
				t.Error("the worker stopped polling after a session panicked")
			}
		})
	}
}
