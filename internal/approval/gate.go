package approval

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/approval/notify"
	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// GateOptions configures [NewGate].
type GateOptions struct {
	Policy *policy.Policy // required
	Store  *Store         // required
	// Notifiers are the channels a policy rule may name.
	Notifiers []notify.Notifier
	// Labels are the environment labels policy conditions see.
	Labels map[string]string
	// Terminal, when set, also prompts the human at the worker's terminal
	// about calls a rule says ask for.
	Terminal *Terminal
	// Instructions tells reviewers how to decide a request; %s is its id.
	Instructions string
	// Poll is how often a waiting call looks for a decision made by another
	// process; 0 means 250ms. Decisions made through this gate wake it at
	// once.
	Poll   time.Duration
	Logger *slog.Logger
	// Registerer receives the gate's metrics; nil means none.
	Registerer prometheus.Registerer
	// Audit receives approval_requested and approval_decided records; nil
	// writes none.
	Audit worker.AuditLog
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Gate is the policy gate: a [worker.Hook] that decides every tool call
// before it runs. Each decision is recorded in the store first. A call a
// rule asks a human about waits, notifying the rule's channels once per
// call, until someone decides it or its deadline denies it.
type Gate struct {
	opts      GateOptions
	policy    atomic.Pointer[policy.Policy]
	notifiers map[string]notify.Notifier

	mu      sync.Mutex
	waiters map[string]chan struct{} // closed when the call's record changes here

	decisions *prometheus.CounterVec
	latency   prometheus.Histogram
	waiting   prometheus.Gauge
	waitTime  *prometheus.HistogramVec
}

var _ worker.Hook = (*Gate)(nil)

// NewGate checks that every channel the policy names is configured.
func NewGate(opts GateOptions) (*Gate, error) {
	if opts.Policy == nil || opts.Store == nil {
		return nil, errors.New("approval gate: a policy and a store are required")
	}
	opts.Poll = cmp.Or(opts.Poll, 250*time.Millisecond)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Instructions == "" {
		opts.Instructions = "perimeter approvals approve %[1]s --by NAME  |  perimeter approvals deny %[1]s --by NAME --reason WHY"
	}
	g := &Gate{
		opts:      opts,
		notifiers: map[string]notify.Notifier{},
		waiters:   map[string]chan struct{}{},
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_policy_decisions_total", Help: "Tool-call decisions by outcome and who made them.",
		}, []string{"decision", "by"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "perimeter_policy_evaluation_seconds", Help: "Time to evaluate the policy for one call.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2},
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "perimeter_approvals_waiting", Help: "Tool calls waiting for a human decision.",
		}),
		waitTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "perimeter_approval_wait_seconds", Help: "Time a tool call waited for a human, by the policy's decision (ask, defer) and the outcome.",
			Buckets: prometheus.ExponentialBuckets(0.5, 4, 9),
		}, []string{"policy", "state"}),
	}
	for _, n := range opts.Notifiers {
		g.notifiers[n.Name()] = n
	}
	if err := g.SetPolicy(opts.Policy); err != nil {
		return nil, err
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{g.decisions, g.latency, g.waiting, g.waitTime} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("approval gate metrics: %w", err)
			}
		}
	}
	return g, nil
}

// SetPolicy replaces the policy for calls decided from now on; calls
// already waiting keep their request. It refuses a policy naming a channel
// that is not configured.
func (g *Gate) SetPolicy(p *policy.Policy) error {
	var missing []string
	for _, ch := range p.Channels() {
		if g.notifiers[ch] == nil {
			missing = append(missing, ch)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("policy %s names channels that are not configured: %s (configure them under approvals.channels)", p.Source(), strings.Join(missing, ", "))
	}
	g.policy.Store(p)
	return nil
}

// Policy is the policy in force.
func (g *Gate) Policy() *policy.Policy { return g.policy.Load() }

// BeforeCall decides c; see [Gate].
func (g *Gate) BeforeCall(ctx context.Context, c *worker.Call) error {
	p := g.policy.Load()
	start := time.Now()
	res := p.Evaluate(policy.Call{
		Tool: c.Tool, Input: c.Input, Platform: c.Platform,
		Session:     policy.Session{ID: c.SessionID, Agent: c.Agent, Metadata: c.Metadata},
		Environment: policy.Environment{ID: c.EnvironmentID, WorkerID: c.WorkerID, Labels: g.opts.Labels},
	})
	g.latency.Observe(time.Since(start).Seconds())

	now := g.opts.Now()
	rec := Record{
		ToolUseID: c.ToolUseID, SessionID: c.SessionID, WorkID: c.WorkID, WorkerID: c.WorkerID,
		Tool: c.Tool, Input: c.Input, InputSHA256: c.InputSHA256,
		Policy: res.Decision.String(), Rule: res.Rule, Message: res.Message,
		Channels: res.Channels, AllowEdit: res.AllowEdit, RequestedAt: now,
	}
	switch {
	case res.Decision == policy.Allow:
		// Decided and used at once: recording it is the only write.
		rec.State, rec.DecidedBy, rec.DecidedAt, rec.UsedAt = Allowed, decider(res), now, now
	case res.Decision == policy.Deny:
		rec.State, rec.DecidedBy, rec.DecidedAt, rec.Reason = Denied, decider(res), now, res.Message
	case res.Source == policy.SourcePlatform:
		// The platform asked, and the runner only hands the call over
		// once a user.tool_confirmation allowed it.
		rec.State, rec.DecidedBy, rec.DecidedAt, rec.UsedAt = Allowed, "platform", now, now
	default:
		rec.State, rec.Deadline = Pending, now.Add(res.Deadline)
	}
	stored, created, err := g.opts.Store.Create(context.WithoutCancel(ctx), rec)
	if err != nil {
		g.opts.Logger.Error("could not record the decision; denying the call", slog.String("tool_use_id", c.ToolUseID), slog.Any("error", err))
		return errors.New("internal error: the worker could not record the policy decision for this call, so it was not run")
	}
	if stored.SessionID != c.SessionID {
		g.opts.Logger.Error("refusing the call: its id was decided for another session", slog.String("tool_use_id", c.ToolUseID),
			slog.String("session_id", c.SessionID), slog.String("decided_for", stored.SessionID))
		return errors.New("this call's id was already decided for a call of another session; it was not run")
	}
	if stored.InputSHA256 != c.InputSHA256 {
		return fmt.Errorf("this call's input differs from the one its decision was recorded for (sha256 %s); it was not run", stored.InputSHA256)
	}
	if !created {
		g.opts.Logger.Info("found this call's decision already recorded", slog.String("tool_use_id", c.ToolUseID), slog.String("state", string(stored.State)))
	}
	var waited time.Duration
	if stored.State == Pending {
		if created {
			g.audit(ctx, c, audit.ApprovalRequested{
				Tool: c.Tool, InputSHA256: c.InputSHA256, Decision: stored.Policy, Rule: stored.Rule,
				Deadline: stored.Deadline, Channels: stored.Channels,
			})
		}
		waitStart := time.Now()
		wctx, span := tracer(ctx).Start(ctx, "perimeter.approval.wait", trace.WithAttributes(
			attribute.String("perimeter.tool_use.id", c.ToolUseID),
			attribute.String("perimeter.policy.decision", stored.Policy),
			attribute.String("perimeter.policy.rule", stored.Rule),
			attribute.StringSlice("perimeter.approval.channels", stored.Channels),
		))
		stored, err = g.wait(wctx, stored)
		waited = time.Since(waitStart)
		g.waitTime.WithLabelValues(stored.Policy, string(stored.State)).Observe(waited.Seconds())
		if err != nil {
			span.SetAttributes(attribute.String("perimeter.approval.outcome", "left for the next worker"))
			span.End()
			return err
		}
		span.SetAttributes(attribute.String("perimeter.approval.outcome", string(stored.State)), attribute.String("perimeter.decided_by", stored.DecidedBy))
		span.End()
		g.audit(ctx, c, approvalDecided(stored))
	} else if !created && !stored.Deadline.IsZero() && (stored.State == Denied || stored.UsedAt.IsZero()) {
		// A request decided while no worker waited for it (through the
		// store, between two workers): no wait saw the decision, so it
		// is audited here, before the call runs. An approval already
		// used was audited by the worker that used it.
		g.audit(ctx, c, approvalDecided(stored))
	}
	edited := len(stored.EditedInput) > 0
	c.Decision = worker.Decision{
		Policy: stored.Policy, Allowed: stored.State != Denied, By: stored.DecidedBy, Rule: stored.Rule,
		Waited: waited, Edited: edited,
		// read_only vouches for the input the rule matched, not for an
		// approver's edit of it: an edited call is checkpointed.
		ReadOnly: res.ReadOnly && !edited, RollbackOnError: res.RollbackOnError,
	}
	g.decisions.WithLabelValues(string(stored.State), byLabel(stored.DecidedBy)).Inc()
	if created && rec.State == Allowed {
		return nil // recorded as used when it was created
	}
	return g.apply(ctx, c, stored)
}

// approvalDecided is the audit record of how a request was decided.
func approvalDecided(r Record) audit.ApprovalDecided {
	return audit.ApprovalDecided{
		Approved: r.State != Denied, DecidedBy: r.DecidedBy, Reason: r.Reason, EditedInputSHA256: r.EditedSHA256,
	}
}

// AfterCall does nothing: the decision is recorded before the call runs.
func (g *Gate) AfterCall(context.Context, *worker.Call, *worker.Outcome) {}

// apply lets an allowed call run (consuming its approval, with the input
// an approver edited) or turns a denial into the text the model sees.
func (g *Gate) apply(ctx context.Context, c *worker.Call, r Record) error {
	if r.State == Denied {
		return errors.New(denialText(r))
	}
	if err := g.opts.Store.Use(context.WithoutCancel(ctx), r.ToolUseID, c.InputSHA256, g.opts.Now()); err != nil {
		g.opts.Logger.Warn("refusing the call: its approval cannot be used", slog.String("tool_use_id", c.ToolUseID), slog.Any("error", err))
		return fmt.Errorf("this call was not run: %v", err)
	}
	if len(r.EditedInput) > 0 {
		g.opts.Logger.Info("running the call with the input its approver edited", slog.String("tool_use_id", c.ToolUseID),
			slog.String("decided_by", r.DecidedBy), slog.String("edited_sha256", r.EditedSHA256))
		c.Input = r.EditedInput
	}
	return nil
}

// wait notifies the request's channels (once per call, across workers) and
// waits for its decision or deadline. It returns ctx's error when the
// session stops being served here first. Past the deadline the call is
// denied even when the store cannot be read or written.
func (g *Gate) wait(ctx context.Context, r Record) (Record, error) {
	log := g.opts.Logger.With(slog.String("tool_use_id", r.ToolUseID), slog.String("tool", r.Tool), slog.String("rule", r.Rule))
	g.waiting.Inc()
	defer g.waiting.Dec()
	if r.NotifiedAt.IsZero() {
		g.notify(ctx, r, log)
	}
	log.Info("waiting for a decision", slog.String("policy", r.Policy), slog.Time("deadline", r.Deadline))
	wake := g.waiter(r.ToolUseID)
	if term := g.opts.Terminal; term != nil && r.Policy == "ask" {
		tctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			allow, reason, ok := term.Ask(tctx, r)
			if !ok {
				return
			}
			if _, err := g.Decide(context.WithoutCancel(ctx), r.ToolUseID, allow, "human:"+term.who+" (terminal)", reason, nil); err != nil {
				log.Warn("the terminal's answer was not recorded", slog.Any("error", err))
			}
		}()
	}
	defer g.dropWaiter(r.ToolUseID)
	t := time.NewTicker(g.opts.Poll)
	defer t.Stop()
	// timedOut denies the call at its deadline when the store cannot say
	// or record how the request ended: nobody answering means deny, and an
	// unreadable store is no answer.
	timedOut := func(err error) (Record, error) {
		log.Error("the store failed at the deadline; denying the call", slog.Any("error", err))
		r.State, r.DecidedBy, r.Reason, r.DecidedAt = Denied, "timeout", "no decision before the deadline", g.opts.Now()
		return r, nil
	}
	for {
		cur, err := g.opts.Store.Get(ctx, r.ToolUseID)
		switch {
		case ctx.Err() != nil:
			return r, ctx.Err()
		case err != nil && !g.opts.Now().Before(r.Deadline):
			return timedOut(err)
		case err != nil:
			log.Warn("could not read the request; retrying", slog.Any("error", err))
		case cur.State != Pending:
			log.Info("decided", slog.String("state", string(cur.State)), slog.String("decided_by", cur.DecidedBy))
			return cur, nil
		case !g.opts.Now().Before(cur.Deadline):
			cur, err = g.opts.Store.Expire(ctx, r.ToolUseID, g.opts.Now())
			switch {
			case ctx.Err() != nil:
				return r, ctx.Err()
			case err == nil && cur.State != Pending:
				log.Info("no decision before the deadline; denied", slog.String("decided_by", cur.DecidedBy))
				return cur, nil
			case err != nil && !errors.Is(err, ErrDeadlineNotPast):
				return timedOut(err)
			}
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-t.C:
		case <-wake:
			wake = g.waiter(r.ToolUseID)
		}
	}
}

// notify sends the request to its channels. The store records that it was
// sent, so a worker that picks the call up later does not send it again; a
// channel that fails is logged and the others still get it (the deadline
// denies the call if nobody decides).
func (g *Gate) notify(ctx context.Context, r Record, log *slog.Logger) {
	req := notify.Request{
		ID: r.ToolUseID, SessionID: r.SessionID, WorkID: r.WorkID, WorkerID: r.WorkerID,
		Tool: r.Tool, Input: r.Input, InputSHA256: r.InputSHA256, Decision: r.Policy, Rule: r.Rule,
		Message: r.Message, Deadline: r.Deadline, AllowEdit: r.AllowEdit, RequestedAt: r.RequestedAt,
		Instructions: fmt.Sprintf(g.opts.Instructions, r.ToolUseID),
	}
	for _, name := range r.Channels {
		n := g.notifiers[name]
		if n == nil {
			log.Error("approval channel not configured", slog.String("channel", name))
			continue
		}
		if err := n.Notify(ctx, req); err != nil {
			log.Error("could not notify reviewers", slog.String("channel", name), slog.Any("error", err))
			continue
		}
		log.Info("notified reviewers", slog.String("channel", name))
	}
	if _, err := g.opts.Store.Notified(context.WithoutCancel(ctx), r.ToolUseID, g.opts.Now()); err != nil {
		log.Warn("could not record the notification", slog.Any("error", err))
	}
}

// Decide records a human decision and wakes the call if it waits here.
func (g *Gate) Decide(ctx context.Context, id string, allow bool, by, reason string, edited []byte) (Record, error) {
	r, err := g.opts.Store.Decide(ctx, id, allow, by, reason, edited, g.opts.Now())
	if err == nil {
		g.mu.Lock()
		if ch, ok := g.waiters[id]; ok {
			close(ch)
			delete(g.waiters, id)
		}
		g.mu.Unlock()
	}
	return r, err
}

// Store is the gate's store.
func (g *Gate) Store() *Store { return g.opts.Store }

func (g *Gate) waiter(id string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch, ok := g.waiters[id]
	if !ok {
		ch = make(chan struct{})
		g.waiters[id] = ch
	}
	return ch
}

func (g *Gate) dropWaiter(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.waiters, id)
}

// decider names what decided a call without a human.
func decider(res policy.Result) string {
	switch res.Source {
	case policy.SourceRule:
		return "rule:" + res.Rule
	case policy.SourcePlatform:
		return "platform"
	}
	return "default"
}

// byLabel is a bounded metric label for a decider.
func byLabel(by string) string {
	switch {
	case strings.HasPrefix(by, "rule:"):
		return "rule"
	case strings.HasPrefix(by, "human:"):
		return "human"
	}
	return by
}

// denialText is what the model sees for a denied call.
func denialText(r Record) string {
	switch {
	case r.DecidedBy == "timeout":
		return fmt.Sprintf("this %s call was not run: it needed a human's approval (policy rule %q) and none came before the deadline", r.Tool, r.Rule)
	case strings.HasPrefix(r.DecidedBy, "human:"):
		msg := fmt.Sprintf("this %s call was denied by a reviewer (%s)", r.Tool, strings.TrimPrefix(r.DecidedBy, "human:"))
		if r.Reason != "" {
			msg += ": " + r.Reason
		}
		return msg
	case r.Reason != "":
		return r.Reason
	}
	return fmt.Sprintf("this %s call was denied by policy rule %q", r.Tool, r.Rule)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// audit writes one record about c, if the gate has an audit log.
func (g *Gate) audit(ctx context.Context, c *worker.Call, data audit.Data) {
	if g.opts.Audit == nil {
		return
	}
	if err := g.opts.Audit.Append(context.WithoutCancel(ctx), audit.Record{
		SessionID: c.SessionID, WorkID: c.WorkID, ToolUseID: c.ToolUseID, Data: data,
	}); err != nil {
		g.opts.Logger.Error("could not write the audit record", slog.String("kind", string(data.Kind())), slog.String("tool_use_id", c.ToolUseID), slog.Any("error", err))
	}
}

// tracer makes the gate's spans with the provider of the call's span, so
// they join its trace.
func tracer(ctx context.Context) trace.Tracer {
	return trace.SpanFromContext(ctx).TracerProvider().Tracer("github.com/perimeterhq/perimeter/internal/approval")
}
