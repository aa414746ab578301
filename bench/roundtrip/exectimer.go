package main

import (
	"context"
	"encoding/json"
	"io"
	"sync/atomic"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/perimeterhq/perimeter/internal/worker"
)

// execTimer totals the time tool calls spend executing: as a wrapper around
// the SDK's tools, and as a Perimeter hook reading the gate's own timing.
// Like the per-call round trip, it leaves out a session's first call, which
// also starts the shell.
type execTimer struct {
	seen  atomic.Int64
	total atomic.Int64 // nanoseconds, of every call but the first
}

func (t *execTimer) add(d time.Duration) {
	if t.seen.Add(1) > 1 {
		t.total.Add(int64(d))
	}
}

// mean is the average per call but the first; zero before the second.
func (t *execTimer) mean() time.Duration {
	n := t.seen.Load() - 1
	if n < 1 {
		return 0
	}
	return time.Duration(t.total.Load() / n)
}

// wrap times each tool's Execute.
func (t *execTimer) wrap(tools []anthropic.BetaTool) []anthropic.BetaTool {
	out := make([]anthropic.BetaTool, len(tools))
	for i, tool := range tools {
		out[i] = timedTool{BetaTool: tool, t: t}
	}
	return out
}

// BeforeCall lets every call run.
func (t *execTimer) BeforeCall(context.Context, *worker.Call) error { return nil }

// AfterCall records the gate's duration of the call: journal and sandbox.
func (t *execTimer) AfterCall(_ context.Context, _ *worker.Call, o *worker.Outcome) {
	t.add(o.Duration)
}

var _ worker.Hook = (*execTimer)(nil)

// timedTool is an SDK tool whose Execute is timed.
type timedTool struct {
	anthropic.BetaTool
	t *execTimer
}

func (tt timedTool) Execute(ctx context.Context, in json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	start := time.Now()
	defer func() { tt.t.add(time.Since(start)) }()
	return tt.BetaTool.Execute(ctx, in)
}

// Close closes the wrapped tool (the SDK worker closes a session's tools).
func (tt timedTool) Close() error {
	if c, ok := tt.BetaTool.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
