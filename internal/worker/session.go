package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/param"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/toolset"
)

// session supervises one claimed work item: it holds the lease, runs the
// session's tool calls in a sandbox through the gate, and stops or releases
// the item at the end.
type session struct {
	w         *Worker
	work      *anthropic.BetaSelfHostedWork
	sessionID string
	workID    string
	log       *slog.Logger
	itemOpts  []option.RequestOption

	// detached is set once the session is released or its lease lost: from
	// then on nothing may be posted to the session, which may already
	// belong to another worker.
	detached atomic.Bool

	// agent and metadata are the session's, learnt when it is fetched.
	agent    string
	metadata map[string]string
	// perms are the platform's evaluated_permission of its tool uses.
	perms permissions
	// current is the call running in the sandbox (see running).
	current atomic.Pointer[runningCall]
	// workspace is the host directory of the session's files, set before
	// any call runs.
	workspace string
	// persistLost: a workspace saved under the session's persistence key
	// could not be loaded (see loadPersisted).
	persistLost bool
	// calls counts the calls that passed the gate.
	calls atomic.Int64
	// attrs are the span attributes taken from the session's metadata
	// (Options.SessionAttributes).
	attrs []attribute.KeyValue

	mu       sync.Mutex      // guards the fields below
	inFlight map[string]bool // calls that entered the gate and are not yet posted
	draining bool
	drainCh  chan struct{} // closed when draining starts; nil until asked for
	idle     chan struct{} // closed when draining and nothing is in flight
}

// enter registers a call with the gate; false means the session is draining
// and the call must be left for the next worker.
func (s *session) enter(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.inFlight[id] = true
	return true
}

// posted marks a call's result as handed back (or abandoned) by the runner.
func (s *session) posted(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inFlight, id)
	s.maybeIdleLocked()
}

// drain stops new calls from starting; the returned channel closes once
// no call is in flight.
func (s *session) drain() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.draining {
		s.draining = true
		s.idle = make(chan struct{})
		if s.drainCh == nil {
			s.drainCh = make(chan struct{})
		}
		close(s.drainCh)
		s.maybeIdleLocked()
	}
	return s.idle
}

// drainStarted is closed once the session starts draining.
func (s *session) drainStarted() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drainCh == nil {
		s.drainCh = make(chan struct{})
		if s.draining {
			close(s.drainCh)
		}
	}
	return s.drainCh
}

func (s *session) maybeIdleLocked() {
	if s.draining && len(s.inFlight) == 0 {
		select {
		case <-s.idle:
		default:
			close(s.idle)
		}
	}
}

// itemResult is how a work item ended, for metrics and logs.
type itemResult string

const (
	itemCompleted itemResult = "completed"
	itemReleased  itemResult = "released"
	itemLeaseLost itemResult = "lease_lost"
	itemFailed    itemResult = "failed"
	itemSkipped   itemResult = "skipped"
)

// serve runs the item to its end. ctx ends the session at once (the drain
// deadline); drained, when closed, asks the session to finish its in-flight
// call and release the item.
func (s *session) serve(ctx context.Context, drained <-chan struct{}) itemResult {
	attrs := []attribute.KeyValue{
		attribute.String("perimeter.session.id", s.sessionID),
		attribute.String("perimeter.work.id", s.workID),
		attribute.String("perimeter.sandbox.runtime", s.w.opts.Runtime.Name()),
	}
	if img := s.w.image(); img != "" {
		attrs = append(attrs, attribute.String("perimeter.sandbox.image", img))
	}
	ctx, span := s.w.tracer.Start(ctx, "perimeter.session", trace.WithAttributes(attrs...))
	defer span.End()

	sessCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	hbDone := make(chan leaseEnd, 1)
	go func() {
		end := heartbeat(sessCtx, s.w.opts.Client, s.work, s.itemOpts, s.log, nil)
		if end.released() {
			s.detached.Store(true)
		}
		hbDone <- end
		cancel()
	}()

	// A drain request waits for the in-flight call, then ends the session.
	var released bool
	var relMu sync.Mutex
	go func() {
		select {
		case <-drained:
		case <-sessCtx.Done():
			return
		}
		select {
		case <-s.drain():
		case <-sessCtx.Done():
		}
		relMu.Lock()
		released = true
		relMu.Unlock()
		s.detached.Store(true)
		cancel()
	}()

	runErr := s.runSession(sessCtx)
	cancel()
	end := <-hbDone
	relMu.Lock()
	rel := released
	relMu.Unlock()
	span.SetAttributes(attribute.String("perimeter.lease.end", end.String()))

	switch {
	case end.released():
		s.audit(ctx, "", audit.LeaseLost{Reason: end.String()}, nil)
		s.w.metrics.leaseLost.Inc()
		s.log.Warn("lease lost; the item was left to the queue", slog.String("reason", end.String()))
		return itemLeaseLost
	case rel && end != leaseStopping:
		s.log.Info("released the item for another worker (shutting down)")
		return itemReleased
	}
	s.stop(ctx)
	switch {
	case errors.Is(runErr, errSkipped):
		return itemSkipped
	case runErr != nil:
		s.log.Warn("session ended with an error", slog.Any("error", runErr))
		return itemFailed
	}
	return itemCompleted
}

var errSkipped = errors.New("nothing to run")

// metadataAttributes are the span attributes the operator takes from the
// session's metadata.
func (s *session) metadataAttributes() []attribute.KeyValue {
	var out []attribute.KeyValue
	for name, key := range s.w.opts.SessionAttributes {
		if v, ok := s.metadata[key]; ok {
			out = append(out, attribute.String(name, v))
		}
	}
	return out
}

// logPanic logs a recovered panic with the stack that raised it: it is
// called from the deferred function that recovered, before the stack
// unwinds.
func logPanic(log *slog.Logger, msg string, p any, attrs ...any) {
	log.Error(msg, append(attrs, slog.Any("panic", p), slog.String("stack", string(debug.Stack())))...)
}

// runSession runs the tool loop until the session ends, the lease ends or
// ctx is cancelled. A panic while setting the session up or serving it ends
// the session with an error, not the worker.
func (s *session) runSession(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			logPanic(s.log, "session panicked", p)
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	if s.work.Data.Type != "session" {
		s.log.Debug("skipping non-session work item", slog.String("type", string(s.work.Data.Type)))
		return errSkipped
	}
	workspace, err := s.w.workspace(s.sessionID)
	if err != nil {
		return err
	}
	s.workspace = workspace
	spec := sandbox.Spec{
		SessionID: s.sessionID, WorkID: s.workID, Workspace: workspace,
		Env: s.w.sandboxEnv(), Limits: s.w.opts.Limits,
	}
	closeEgress, err := s.openEgress(ctx, &spec)
	if err != nil {
		return fmt.Errorf("start the session's egress proxy: %w", err)
	}
	defer closeEgress()
	if cps := s.w.opts.Checkpoints; cps != nil {
		// The session's stat cache and the watches on its workspace
		// serve only while it runs here (a later work item of the same
		// session starts with a full walk).
		defer cps.Forget(s.sessionID)
	}
	// A workspace kept under a persistence key is saved once the sandbox
	// is gone (deferred before its close, so run after it).
	defer s.savePersisted(ctx)
	sb := &sessionSandbox{s: s, spec: spec}
	defer sb.close()
	// Start the sandbox now, while the session is fetched and its event
	// stream attached, so its start is off the first call's path (which
	// waits for it) and a slow or failing start shows at claim time. A
	// failure here is retried by the first call, which reports it to the
	// model if it persists. With workspace persistence on, the sandbox
	// waits for the session's metadata: a saved workspace must be in place
	// before the sandbox takes it over.
	persist := s.w.opts.Checkpoints != nil && s.w.opts.PersistKey != ""
	if !persist {
		go func() { _, _ = sb.current(ctx) }()
	}

	sess, err := s.w.opts.Client.Beta.Sessions.Get(ctx, s.sessionID, anthropic.BetaSessionGetParams{}, s.itemOpts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("retrieve session: %w", err)
	}
	if sess.Status == anthropic.BetaManagedAgentsSessionStatusTerminated {
		s.log.Info("session already terminated; stopping its work item")
		return errSkipped
	}
	s.agent, s.metadata = sess.Agent.ID, sess.Metadata
	s.attrs = s.metadataAttributes()
	trace.SpanFromContext(ctx).SetAttributes(s.attrs...)
	if persist {
		s.loadPersisted(ctx)
		go func() { _, _ = sb.current(ctx) }()
	}
	s.audit(ctx, "", audit.SessionStarted{
		EnvironmentID: s.w.opts.EnvironmentID, WorkerID: s.w.opts.WorkerID, Agent: s.agent,
		Runtime: s.w.opts.Runtime.Name(), Image: s.w.image(),
	}, nil)

	tools, err := s.w.tools(sb)
	if err != nil {
		return err
	}
	gated := make([]anthropic.BetaTool, len(tools))
	for i, t := range tools {
		gated[i] = gatedTool{BetaTool: t, s: s, custom: !s.w.builtin[t.Name()]}
	}
	served := toolset.Names(tools)

	runnerOpts := append(append([]option.RequestOption{}, s.itemOpts...),
		option.WithMiddleware(s.refuseWhenDetached, s.learnPermissions),
		option.WithTracerProvider(callIDTracerProvider{TracerProvider: s.w.opts.TracerProvider}),
		option.WithOpenTelemetryTraces(true),
		option.WithOpenTelemetryTracesContentMode(option.OpenTelemetryContentModeMetadataOnly),
	)
	runner := s.w.opts.Client.Beta.Sessions.Events.NewToolRunner(ctx, s.sessionID, anthropic.SessionToolRunnerOptions{
		Tools:          gated,
		MaxIdle:        &s.w.opts.MaxIdle,
		Logger:         s.log,
		RequestOptions: runnerOpts,
		// The gate bounds the run itself by ToolTimeout; before it, a
		// decision may hold the call for up to DecisionWait.
		ToolTimeout:  s.w.opts.ToolTimeout + s.w.opts.DecisionWait,
		DrainTimeout: s.w.opts.DrainTimeout,
	})
	for runner.Next() {
		call := runner.Current()
		if !call.Posted && call.Confirmation != "deny" && !served[call.Name] {
			s.answerUnknown(ctx, call)
		}
		s.posted(call.ToolUseID)
	}
	err = runner.Err()
	_ = runner.Close()
	if err == nil || errors.Is(err, anthropic.ErrSessionTerminated) || errors.Is(err, anthropic.ErrIdleTimeout) || ctx.Err() != nil {
		return nil
	}
	return err
}

// errDetached refuses a post from a session that no longer holds its item.
var errDetached = errors.New("session released: not posting")

// refuseWhenDetached stops the SDK runner from posting a result once the
// session is released or its lease lost. The runner makes one post attempt
// even on a cancelled context; this keeps a call that was never run (or was
// cut off) unanswered for whoever holds the item now.
func (s *session) refuseWhenDetached(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	if s.detached.Load() && req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/events") {
		return nil, errDetached
	}
	return next(req)
}

// answerUnknown answers a call to a tool this worker does not serve with an
// error naming it, so the session never hangs on a call nobody will run.
func (s *session) answerUnknown(ctx context.Context, call anthropic.DispatchedToolCall) {
	msg := fmt.Sprintf("unknown tool %q: this worker does not serve a tool by that name; served tools are %s", call.Name, s.w.toolList())
	s.log.Warn("answering a call to an unknown tool with an error", slog.String("tool", call.Name), slog.String("tool_use_id", call.ToolUseID))
	s.w.metrics.toolCalls.WithLabelValues("unknown", "unknown_tool").Inc()
	text := []anthropic.BetaManagedAgentsTextBlockParam{{Text: msg}}
	var ev anthropic.BetaManagedAgentsEventParamsUnion
	if call.Custom {
		ev.OfUserCustomToolResult = &anthropic.BetaManagedAgentsUserCustomToolResultEventParams{
			CustomToolUseID: call.ToolUseID, IsError: param.NewOpt(true),
			Content: []anthropic.BetaManagedAgentsUserCustomToolResultEventParamsContentUnion{{OfText: &text[0]}},
		}
	} else {
		ev.OfUserToolResult = &anthropic.BetaManagedAgentsUserToolResultEventParams{
			ToolUseID: call.ToolUseID, IsError: param.NewOpt(true),
			Content: []anthropic.BetaManagedAgentsUserToolResultEventParamsContentUnion{{OfText: &text[0]}},
		}
	}
	if _, err := s.w.opts.Client.Beta.Sessions.Events.Send(ctx, s.sessionID, anthropic.BetaSessionEventSendParams{
		Events: []anthropic.BetaManagedAgentsEventParamsUnion{ev},
	}, s.itemOpts...); err != nil && !statusIs(err, 409) {
		s.log.Warn("could not answer the unknown tool call", slog.Any("error", err))
	}
}

// stop force-stops the item on a context that outlives ctx; 409 means it is
// already stopped.
func (s *session) stop(ctx context.Context) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// The control plane answers 204 with no body; read it raw.
	var raw *http.Response
	_, err := s.w.opts.Client.Beta.Environments.Work.Stop(sctx, s.workID, anthropic.BetaEnvironmentWorkStopParams{
		EnvironmentID:                 s.work.EnvironmentID,
		BetaSelfHostedWorkStopRequest: anthropic.BetaSelfHostedWorkStopRequestParam{Force: param.NewOpt(true)},
	}, append(s.itemOpts[:len(s.itemOpts):len(s.itemOpts)], option.WithResponseBodyInto(&raw))...)
	if raw != nil && raw.Body != nil {
		_ = raw.Body.Close()
	}
	if err != nil && !statusIs(err, 409) {
		s.log.Warn("force-stop failed", slog.Any("error", err))
	}
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// workspace returns the session's workspace directory, shared by every work
// item of the session (and every worker using the same state directory).
func (w *Worker) workspace(sessionID string) (string, error) {
	if !safeID.MatchString(sessionID) {
		return "", fmt.Errorf("session id %q is not a safe directory name", sessionID)
	}
	// The workspaces directory is searchable but not listable (0711): a
	// sandbox running as an unprivileged host uid (bwrap under a root
	// worker) must reach its own workspace, and nothing else.
	parent := filepath.Join(w.opts.StateDir, "workspaces")
	if err := sandbox.MkdirMode(parent, 0o711); err != nil {
		return "", fmt.Errorf("create workspace: %w", err)
	}
	dir := filepath.Join(parent, sessionID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create workspace: %w", err)
	}
	return dir, nil
}
