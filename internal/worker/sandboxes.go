package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// sessionSandbox is the session's sandbox as the tools see it. It starts the
// sandbox on demand and, when one dies (exits, is OOM-killed, or stops
// answering), replaces it for the next call if RestartOnFailure allows —
// the workspace is kept, everything else starts fresh. A sandbox is never
// shared between sessions.
type sessionSandbox struct {
	s    *session
	spec sandbox.Spec

	mu       sync.Mutex // guards the fields below
	sb       sandbox.Sandbox
	dead     error // why the last sandbox died, when it may not be replaced
	restarts int
	closed   bool // the session is over: no sandbox may start
}

// Exec runs call in the current sandbox, starting one if needed.
func (x *sessionSandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	sb, err := x.current(ctx)
	if err != nil {
		return sandbox.Result{}, err
	}
	ctx, span := x.s.w.tracer.Start(ctx, "perimeter.sandbox.exec", trace.WithAttributes(
		attribute.String("perimeter.sandbox.runtime", x.s.w.opts.Runtime.Name()),
		attribute.String("perimeter.sandbox.tool", call.Tool),
	))
	defer span.End()
	res, err := sb.Exec(ctx, call)
	if isDead(err) {
		x.retire(sb, err)
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attribute.Bool("perimeter.sandbox.tool_error", res.IsError))
	}
	return res, err
}

func isDead(err error) bool {
	return errors.Is(err, sandbox.ErrExited) || errors.Is(err, sandbox.ErrProtocol) ||
		errors.Is(err, sandbox.ErrClosed) || errors.Is(err, sandbox.ErrUnresponsive)
}

// current returns the live sandbox, creating it when there is none.
func (x *sessionSandbox) current(ctx context.Context) (sandbox.Sandbox, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sb != nil {
		return x.sb, nil
	}
	if x.closed {
		return nil, fmt.Errorf("%w: the session is over", sandbox.ErrClosed)
	}
	if x.dead != nil {
		return nil, fmt.Errorf("%w: the session's sandbox died (%v) and the worker is configured not to replace it", sandbox.ErrClosed, x.dead)
	}
	w := x.s.w
	start := time.Now()
	ctx, span := w.tracer.Start(ctx, "perimeter.sandbox.start", trace.WithAttributes(
		attribute.String("perimeter.sandbox.runtime", w.opts.Runtime.Name()),
		attribute.Int("perimeter.sandbox.restarts", x.restarts),
		attribute.Bool("perimeter.egress", x.spec.Egress != nil),
	))
	defer span.End()
	if img := w.image(); img != "" {
		span.SetAttributes(attribute.String("perimeter.sandbox.image", img))
	}
	sb, err := x.create(ctx)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		x.s.log.Error("could not start the sandbox", slog.String("runtime", w.opts.Runtime.Name()), slog.Any("error", err))
		return nil, fmt.Errorf("%w: start sandbox: %w", sandbox.ErrClosed, err)
	}
	w.metrics.sandboxStart.WithLabelValues(w.opts.Runtime.Name()).Observe(time.Since(start).Seconds())
	if w.opts.RuntimeWarning != "" {
		x.s.log.Warn(w.opts.RuntimeWarning)
	}
	x.sb = sb
	return sb, nil
}

// create asks the runtime for a sandbox; a runtime that panics fails the
// start, not the worker.
func (x *sessionSandbox) create(ctx context.Context) (sb sandbox.Sandbox, err error) {
	defer func() {
		if p := recover(); p != nil {
			logPanic(x.s.log, "the sandbox runtime panicked", p)
			sb, err = nil, fmt.Errorf("the sandbox runtime failed: %v", p)
		}
	}()
	return x.s.w.opts.Runtime.Create(ctx, x.spec)
}

// retire closes a sandbox that died and decides whether another may start.
func (x *sessionSandbox) retire(sb sandbox.Sandbox, why error) {
	x.mu.Lock()
	if x.sb != sb {
		x.mu.Unlock()
		return
	}
	x.sb = nil
	if x.s.w.opts.NoSandboxRestart {
		x.dead = why
	} else {
		x.restarts++
	}
	x.mu.Unlock()
	x.s.w.metrics.sandboxFailures.WithLabelValues(x.s.w.opts.Runtime.Name()).Inc()
	x.s.log.Warn("sandbox failed; the workspace is kept", slog.Any("error", why), slog.Bool("replaced_on_next_call", !x.s.w.opts.NoSandboxRestart))
	closeSandbox(sb, x.s.log)
}

// close closes the live sandbox, if any, waiting for one being started,
// and keeps any other from starting.
func (x *sessionSandbox) close() {
	x.mu.Lock()
	sb := x.sb
	x.sb = nil
	x.closed = true
	x.mu.Unlock()
	if sb != nil {
		closeSandbox(sb, x.s.log)
	}
}

// closeSandbox stops and removes sb on a context of its own: cleanup must
// happen even when the session was cancelled.
func closeSandbox(sb sandbox.Sandbox, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sb.Close(ctx); err != nil {
		log.Warn("sandbox close failed", slog.Any("error", err))
	}
}
