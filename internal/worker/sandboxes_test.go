package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// slowRuntime counts the sandboxes it starts and closes; each start takes
// a while, like a real one.
type slowRuntime struct {
	mu              sync.Mutex
	created, closed int
}

func (r *slowRuntime) Name() string { return "slow" }
func (r *slowRuntime) Create(ctx context.Context, _ sandbox.Spec) (sandbox.Sandbox, error) {
	select {
	case <-time.After(20 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created++
	return &countedSandbox{r: r}, nil
}

type countedSandbox struct{ r *slowRuntime }

func (s *countedSandbox) Exec(context.Context, sandbox.Call) (sandbox.Result, error) {
	return sandbox.Result{Text: "ran"}, nil
}
func (s *countedSandbox) Close(context.Context) error {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.closed++
	return nil
}

// The session starts its sandbox at claim, in the background; a session
// that ends while the start is under way (its session was already
// terminated, say) closes that sandbox and starts no other.
func TestASandboxStartedAtClaimIsClosedWhenTheSessionEndsFirst(t *testing.T) {
	for _, wait := range []time.Duration{0, 5 * time.Millisecond, 40 * time.Millisecond} {
		rt := &slowRuntime{}
		s := &session{w: &Worker{opts: Options{Runtime: rt}, metrics: NewMetrics(nil), tracer: noop.NewTracerProvider().Tracer("")}, log: slog.New(slog.DiscardHandler)}
		sb := &sessionSandbox{s: s}
		started := make(chan struct{})
		go func() {
			defer close(started)
			_, _ = sb.current(context.Background())
		}()
		time.Sleep(wait)
		sb.close()
		<-started
		if _, err := sb.Exec(context.Background(), sandbox.Call{Tool: "bash"}); !errors.Is(err, sandbox.ErrClosed) {
			t.Errorf("after %v: a call after close got %v, want ErrClosed", wait, err)
		}
		rt.mu.Lock()
		if rt.created != rt.closed || rt.created > 1 {
			t.Errorf("after %v: %d sandboxes started, %d closed", wait, rt.created, rt.closed)
		}
		rt.mu.Unlock()
	}
}

// The first call waits for the start under way instead of starting a
// second sandbox.
func TestTheFirstCallUsesTheSandboxStartedAtClaim(t *testing.T) {
	rt := &slowRuntime{}
	s := &session{w: &Worker{opts: Options{Runtime: rt}, metrics: NewMetrics(nil), tracer: noop.NewTracerProvider().Tracer("")}, log: slog.New(slog.DiscardHandler)}
	sb := &sessionSandbox{s: s}
	go func() { _, _ = sb.current(context.Background()) }()
	time.Sleep(time.Millisecond)
	res, err := sb.Exec(context.Background(), sandbox.Call{Tool: "bash"})
	if err != nil || res.Text != "ran" {
		t.Fatalf("call: %+v, %v", res, err)
	}
	sb.close()
	if rt.created != 1 || rt.closed != 1 {
		t.Errorf("%d sandboxes started, %d closed; want 1 and 1", rt.created, rt.closed)
	}
}
