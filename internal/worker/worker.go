// Package worker is Perimeter's environment worker: it claims work items from
// a Managed Agents environment queue through the official SDK's WorkPoller,
// and for each one runs a supervisor that holds the lease, runs the session's
// tool calls in a sandbox through the SDK's SessionToolRunner, and stops the
// item at the end (or releases it, when the lease was lost or the worker is
// shutting down).
//
// Every tool call passes one gate (gate.go): the journal that makes each
// call's effect happen once across crashes and re-claims, the Hook chain
// where policy, checkpoints and audit plug in, a size cap on results, a log
// line, metrics and the call's span.
//
// Trust: the worker holds the environment key and each item's sessions token;
// neither ever reaches the sandbox, which starts from an allow-listed
// environment (sandboxEnv) and speaks to the worker only through tool calls.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/lib/environments"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/param"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/toolset"
)

// Options configure a Worker. Zero values are documented defaults.
type Options struct {
	// Client is the SDK client (base URL, retries). Its API key, if any, is
	// never sent on worker calls: every call carries the environment key or
	// the item's sessions token.
	Client anthropic.Client
	// EnvironmentID and EnvironmentKey select and authorise the queue. Required.
	EnvironmentID  string
	EnvironmentKey string
	// WorkerID is reported to the control plane; "" = <hostname>-<pid>.
	WorkerID string
	// Runtime runs the sandboxes. Required.
	Runtime sandbox.Runtime
	// RuntimeWarning, when set, is logged on every session (the process
	// runtime's "no isolation" warning).
	RuntimeWarning string
	// Limits bound each sandbox; zero fields take sandbox.DefaultLimits.
	Limits sandbox.Limits
	// NoSandboxRestart keeps a session's sandbox dead once it dies: later
	// calls get an error instead of a fresh sandbox.
	NoSandboxRestart bool
	// StateDir holds the call journal and the session workspaces. Required.
	StateDir string
	// MaxSessions bounds concurrent sessions; 0 = 4.
	MaxSessions int
	// MaxIdle is how long a session stays attached after its turn ends;
	// 0 = 60s; negative disables the idle timeout.
	MaxIdle time.Duration
	// ToolTimeout bounds one tool call; 0 = 120s.
	ToolTimeout time.Duration
	// DecisionWait is the longest a Hook may hold a call before it runs (a
	// human approval's deadline); ToolTimeout then bounds the run.
	DecisionWait time.Duration
	// DrainTimeout bounds how long in-flight calls may finish on shutdown;
	// 0 = 30s.
	DrainTimeout time.Duration
	// MaxOutputBytes caps each tool result; 0 = 100 KiB.
	MaxOutputBytes int
	// SandboxEnv adds variables to the sandbox's allow-listed environment.
	SandboxEnv map[string]string
	// Egress, when set, gives each session an egress proxy, its sandbox's
	// only way out; nil leaves sandboxes without any network.
	Egress *egress.Manager
	// CustomTools are operator-declared tools run as commands in the sandbox.
	CustomTools []config.CustomTool
	// Hooks see every tool call before and after it runs.
	Hooks []Hook
	// Audit receives a record of every session, decision, result, egress
	// request and lost lease; nil writes none.
	Audit AuditLog
	// Checkpoints, when set, snapshots the workspace before every call that
	// may write to it (all but read, glob and grep).
	Checkpoints *checkpoint.Store
	// PersistKey names the session metadata key whose value keeps a
	// workspace across sessions: at the end of a session its workspace is
	// saved under that value, and a later session with the same value
	// starts from it. Empty keeps nothing. Needs Checkpoints.
	PersistKey string
	// PersistRemote, when set, keeps the saved workspaces in an object
	// store as well, for sessions on other workers: a session's workspace
	// is pushed there when it ends, and a new session starts from the one
	// the store names for its key, falling back to this worker's own.
	PersistRemote checkpoint.Remote
	// SessionAttributes maps span attribute names (tenant.id, enduser.id)
	// to the session metadata keys whose values they take, on the session's
	// span and each of its tool calls' spans.
	SessionAttributes map[string]string
	// TracerProvider receives the work-item, session and tool-call spans;
	// nil = no spans.
	TracerProvider trace.TracerProvider
	// Metrics receives the worker's metrics; nil = a private registry.
	Metrics *Metrics
	// RequestOptions apply to every API call (e.g. a proxy header).
	RequestOptions []option.RequestOption
	// Logger; nil = slog.Default().
	Logger *slog.Logger
}

// Worker claims and serves work items. Create it with New.
type Worker struct {
	opts    Options
	log     *slog.Logger
	journal *journal
	metrics *Metrics
	tracer  trace.Tracer
	builtin map[string]bool
	ready   atomic.Bool
	// rollbacks holds, by session id, the note the session's next tool
	// result carries after an operator restored its workspace.
	rollbacks sync.Map
}

// New validates opts and opens the state directory.
func New(opts Options) (*Worker, error) {
	if err := (config.Anthropic{EnvironmentID: opts.EnvironmentID}).Check(opts.EnvironmentKey); err != nil {
		return nil, err
	}
	switch {
	case opts.Runtime == nil:
		return nil, errors.New("no sandbox runtime configured")
	case opts.StateDir == "":
		return nil, errors.New("no state directory configured")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WorkerID == "" {
		host, _ := os.Hostname()
		opts.WorkerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	opts.MaxSessions = cmpOr(opts.MaxSessions, 4)
	opts.MaxIdle = cmpOr(opts.MaxIdle, 60*time.Second)
	opts.ToolTimeout = cmpOr(opts.ToolTimeout, 120*time.Second)
	opts.DrainTimeout = cmpOr(opts.DrainTimeout, 30*time.Second)
	opts.MaxOutputBytes = cmpOr(opts.MaxOutputBytes, 100*1024)
	if opts.TracerProvider == nil {
		opts.TracerProvider = noop.NewTracerProvider()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if _, err := toolset.Custom(nil, opts.CustomTools); err != nil {
		return nil, fmt.Errorf("custom tools: %w", err)
	}
	if err := PrepareStateDir(opts.StateDir); err != nil {
		return nil, err
	}
	j, err := openJournal(opts.StateDir)
	if err != nil {
		return nil, err
	}
	return &Worker{
		opts:    opts,
		log:     opts.Logger,
		journal: j,
		metrics: opts.Metrics,
		tracer:  opts.TracerProvider.Tracer("github.com/perimeterhq/perimeter/internal/worker"),
		builtin: toolset.Names(toolset.Builtin(nil)),
	}, nil
}

func cmpOr[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Close releases the state directory.
func (w *Worker) Close() error { return w.journal.close() }

// Ready reports whether the worker is polling for work (for /readyz).
func (w *Worker) Ready() bool { return w.ready.Load() }

// Run polls for work until ctx is cancelled, then drains: it claims nothing
// more, lets each in-flight tool call finish and post its result (up to
// DrainTimeout, after which calls are cancelled), and releases the items so
// another worker can claim them. A cancelled ctx is a clean shutdown: Run
// returns nil. A poll error that retrying cannot fix is returned.
func (w *Worker) Run(ctx context.Context) error {
	poller := environments.NewWorkPoller(ctx, w.opts.Client, environments.WorkPollerOptions{
		EnvironmentID:  w.opts.EnvironmentID,
		EnvironmentKey: w.opts.EnvironmentKey,
		WorkerID:       w.opts.WorkerID,
		AutoStop:       param.NewOpt(false),
		RequestOptions: w.opts.RequestOptions,
		Logger:         w.log,
	})
	defer poller.Close()

	// Sessions outlive the poll context: a signal drains them, it does not
	// cut them off.
	sessCtx, cancelSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSessions()
	drain := make(chan struct{})
	slots := make(chan struct{}, w.opts.MaxSessions)
	var wg sync.WaitGroup

	w.log.Info("polling for work",
		slog.String("environment_id", w.opts.EnvironmentID), slog.String("worker_id", w.opts.WorkerID),
		slog.String("runtime", w.opts.Runtime.Name()), slog.Int("max_sessions", w.opts.MaxSessions))
	w.ready.Store(true)
poll:
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break poll
		}
		start := time.Now()
		if !poller.Next() {
			<-slots
			break
		}
		w.metrics.pollLatency.Observe(time.Since(start).Seconds())
		work := poller.Current()
		if work == nil {
			<-slots
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			w.serveItem(sessCtx, work, drain)
		}()
	}
	w.ready.Store(false)
	pollErr := poller.Err()

	close(drain)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if n := len(slots); n > 0 {
		w.log.Info("draining in-flight sessions", slog.Int("sessions", n), slog.Duration("deadline", w.opts.DrainTimeout))
	}
	select {
	case <-done:
	case <-time.After(w.opts.DrainTimeout):
		w.log.Warn("drain deadline passed; cancelling in-flight tool calls")
		cancelSessions()
		<-done
	}
	if pollErr != nil && !errors.Is(pollErr, context.Canceled) && !errors.Is(pollErr, context.DeadlineExceeded) {
		var apiErr *anthropic.Error
		if errors.As(pollErr, &apiErr) && (apiErr.StatusCode == 401 || apiErr.StatusCode == 403) {
			return fmt.Errorf("the control plane rejected the environment key (HTTP %d): check ANTHROPIC_ENVIRONMENT_KEY and ANTHROPIC_ENVIRONMENT_ID: %w", apiErr.StatusCode, pollErr)
		}
		return fmt.Errorf("polling for work: %w", pollErr)
	}
	w.log.Info("worker stopped")
	return nil
}

// serveItem runs one claimed work item.
func (w *Worker) serveItem(ctx context.Context, work *anthropic.BetaSelfHostedWork, drain <-chan struct{}) {
	ctx, span := w.tracer.Start(ctx, "perimeter.work", trace.WithAttributes(
		attribute.String("perimeter.work.id", work.ID),
		attribute.String("perimeter.environment.id", work.EnvironmentID),
		attribute.String("perimeter.session.id", work.Data.ID),
		attribute.String("perimeter.worker.id", w.opts.WorkerID),
	))
	defer span.End()
	log := w.log.With(slog.String("work_id", work.ID), slog.String("session_id", work.Data.ID))

	cred := sessionsToken(work.Secret)
	if cred == "" {
		if work.Secret != "" {
			log.Warn("work item secret carries no sessions token; using the environment key")
		}
		cred = w.opts.EnvironmentKey
	}
	s := &session{
		w: w, work: work, sessionID: work.Data.ID, workID: work.ID, log: log,
		itemOpts: append(slices.Clip(w.opts.RequestOptions), bearer(cred)...),
		inFlight: map[string]bool{},
	}
	w.metrics.sessionsActive.Inc()
	defer w.metrics.sessionsActive.Dec()
	log.Info("claimed work item")
	start := time.Now()
	result := s.serve(ctx, drain)
	if result != itemSkipped {
		s.audit(ctx, "", audit.SessionEnded{Reason: string(result), ToolCalls: int(s.calls.Load())}, nil)
	}
	span.SetAttributes(attribute.String("perimeter.work.result", string(result)))
	w.metrics.workItems.WithLabelValues(string(result)).Inc()
	log.Info("work item ended", slog.String("result", string(result)), slog.Duration("duration", time.Since(start)))
}

// sandboxEnv is the complete environment of the sandbox.
func (w *Worker) sandboxEnv() map[string]string { return SandboxEnv(w.opts.SandboxEnv) }

// SandboxEnv is the complete environment of a sandbox: an allow-list plus
// the operator's extra variables, never the worker's own environment.
func SandboxEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG": "C.UTF-8",
		"TERM": "dumb",
	}
	maps.Copy(env, extra)
	return env
}

// RuntimeName names the sandbox runtime sessions run in.
func (w *Worker) RuntimeName() string { return w.opts.Runtime.Name() }

// tools builds the session's tools: the SDK's toolset proxied into the
// sandbox, then the operator's custom tools.
func (w *Worker) tools(sb toolset.Executor) ([]anthropic.BetaTool, error) {
	custom, err := toolset.Custom(sb, w.opts.CustomTools)
	if err != nil {
		return nil, err
	}
	return append(toolset.Builtin(sb), custom...), nil
}

// toolList names the tools this worker serves, for error messages.
func (w *Worker) toolList() string {
	names := slices.Sorted(maps.Keys(w.builtin))
	for _, t := range w.opts.CustomTools {
		names = append(names, t.Name)
	}
	return strings.Join(names, ", ")
}

// image is the pinned image of the runtime's sandboxes, when it has one.
func (w *Worker) image() string {
	if i, ok := w.opts.Runtime.(interface{ Image() string }); ok {
		return i.Image()
	}
	return ""
}

// PrepareStateDir creates dir as a worker's state directory, or sets the
// mode of an existing one: searchable but not listable by other users, so
// that sandboxes running as another host uid reach their own workspace and
// the sandboxd binary in it, and nothing else (see workspace).
func PrepareStateDir(dir string) error {
	if err := sandbox.MkdirMode(dir, 0o711); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	return nil
}
