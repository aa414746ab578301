package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/toolset"
)

// Call is one tool call as the hook point sees it. Input is the exact input
// the model sent; hooks must not log or export it.
type Call struct {
	ToolUseID     string
	SessionID     string
	WorkID        string
	WorkerID      string
	EnvironmentID string
	// Agent and Metadata are the session's agent id and metadata.
	Agent    string
	Metadata map[string]string
	Tool     string
	Custom   bool
	// Platform is the control plane's evaluated_permission for the call
	// ("" when it gave none). The runner hands over a call whose
	// permission is ask only after a user.tool_confirmation allowed it,
	// and never one whose permission is deny.
	Platform string
	// Input is what runs. A hook may replace it (an approver's edit); the
	// replacement must be a JSON object the tool accepts.
	Input json.RawMessage
	// InputSHA256 is the hex SHA-256 of the input the model sent, the value
	// approvals and audit records bind to. It does not change with Input.
	InputSHA256 string
	// Decision is what the hooks decided, for the call's span and the
	// audit log; the hook that decides fills it in.
	Decision Decision
}

// Decision records how a call was decided.
type Decision struct {
	// Policy is what the policy said: allow, deny, ask or defer.
	Policy string
	// Allowed is the outcome, after any human.
	Allowed bool
	// By is who decided: "rule:<name>", "default", "platform",
	// "human:<who>", "deadline".
	By string
	// Rule is the rule that matched.
	Rule string
	// Waited is how long the call waited for a human (0 when none was asked).
	Waited time.Duration
	// Edited is set when a human approved an edited input.
	Edited bool
	// ReadOnly: the call cannot change the workspace, so no checkpoint is
	// taken before it. RollbackOnError: a call that ends in an error, or
	// had a request refused by the egress proxy, has the workspace
	// restored to its checkpoint.
	ReadOnly, RollbackOnError bool
}

// Outcome is what a call produced.
type Outcome struct {
	Text     string
	IsError  bool
	Duration time.Duration
	// EgressBlocked counts the requests of the call that the egress proxy
	// refused: the call was denied part of what it tried.
	EgressBlocked int
	// Replayed is true when the result came from the journal, not a run.
	Replayed bool
}

// Hook is the one point every tool call passes before and after it runs.
// BeforeCall returning an error denies the call: it does not run, and the
// error's text is the result the model sees (and is journalled as its
// result). Hooks run in order; the first denial wins. AfterCall sees every
// outcome, including denials and replays.
//
// BeforeCall runs before the call is journalled as started, and may block
// (a call waiting for a human): its ctx ends when the session stops being
// served here — drained, lease lost, worker stopping. An error returned
// then is not a denial: the call is left unanswered for whoever serves the
// session next, which asks the hooks again.
type Hook interface {
	BeforeCall(ctx context.Context, c *Call) error
	AfterCall(ctx context.Context, c *Call, o *Outcome)
}

// gatedTool runs one tool through the session's gate.
type gatedTool struct {
	anthropic.BetaTool
	s      *session
	custom bool
}

func (g gatedTool) Execute(ctx context.Context, input json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	o, err := g.s.run(ctx, g.BetaTool, g.custom, input)
	if err != nil {
		return nil, err
	}
	if o.IsError {
		return nil, errors.New(o.Text)
	}
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: o.Text}}}, nil
}

// run is the gate: journal check, hooks, execution, journal record. The
// error return is reserved for "post nothing" (the session is shutting down
// and the call must be left to whoever serves the session next). A panic
// anywhere in the gate (a hook, the sandbox backend) fails the call, not
// the worker.
func (s *session) run(ctx context.Context, tool anthropic.BetaTool, custom bool, input json.RawMessage) (o *Outcome, err error) {
	id := toolCallID(ctx)
	defer func() {
		if p := recover(); p != nil {
			o, err = s.recovered(ctx, id, p), nil
		}
	}()
	if id == "" {
		// Without the id the call cannot be journalled; running it could
		// execute it twice after a crash, so refuse.
		s.log.Error("tool call without an id; refusing to run it", slog.String("tool", tool.Name()))
		return &Outcome{Text: "internal error: the worker could not identify this tool call; it was not run", IsError: true}, nil
	}
	if !s.enter(id) {
		// Draining: leave the call unanswered for the next worker.
		<-ctx.Done()
		return nil, ctx.Err()
	}
	sum := sha256.Sum256(input)
	c := &Call{
		ToolUseID: id, SessionID: s.sessionID, WorkID: s.workID,
		WorkerID: s.w.opts.WorkerID, EnvironmentID: s.w.opts.EnvironmentID,
		Agent: s.agent, Metadata: s.metadata,
		Tool: tool.Name(), Custom: custom, Platform: s.perms.take(id),
		Input: input, InputSHA256: hex.EncodeToString(sum[:]),
	}
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(
		attribute.String("perimeter.session.id", c.SessionID),
		attribute.String("perimeter.work.id", c.WorkID),
		attribute.String("perimeter.tool_use.id", c.ToolUseID),
		attribute.String("perimeter.sandbox.runtime", s.w.opts.Runtime.Name()),
	)
	span.SetAttributes(s.attrs...)
	start := time.Now()
	o, err = s.decideAndRun(ctx, tool, c)
	if err != nil {
		return nil, err
	}
	o.Duration = time.Since(start)
	span.SetAttributes(attribute.Bool("perimeter.replayed", o.Replayed), attribute.String("perimeter.outcome", outcomeLabel(o)))
	if d := c.Decision; d.By != "" && !o.Replayed {
		span.SetAttributes(attribute.String("perimeter.decision", decisionLabel(d)), attribute.String("perimeter.decided_by", d.By))
	}
	if img := s.w.image(); img != "" {
		span.SetAttributes(attribute.String("perimeter.sandbox.image", img))
	}
	if o.IsError {
		span.SetStatus(codes.Error, "tool error")
	}
	for _, h := range s.w.opts.Hooks {
		h.AfterCall(ctx, c, o)
	}
	s.auditResult(ctx, c, o)
	s.calls.Add(1)
	s.w.metrics.toolCalls.WithLabelValues(c.Tool, outcomeLabel(o)).Inc()
	s.w.metrics.toolDuration.WithLabelValues(c.Tool).Observe(o.Duration.Seconds())
	s.log.Info("tool call",
		slog.String("tool", c.Tool), slog.String("tool_use_id", id), slog.Bool("custom", custom),
		slog.String("outcome", outcomeLabel(o)), slog.Duration("duration", o.Duration),
		slog.Int("result_bytes", len(o.Text)), slog.String("input_sha256", c.InputSHA256))
	return o, nil
}

func (s *session) decideAndRun(ctx context.Context, tool anthropic.BetaTool, c *Call) (*Outcome, error) {
	j := s.w.journal
	switch prev, err := j.lookup(ctx, c.ToolUseID); {
	case errors.Is(err, errNoRecord):
	case err != nil:
		s.log.Error("journal unavailable; not running the call", slog.Any("error", err))
		return &Outcome{Text: "internal error: the worker could not record this tool call, so it was not run", IsError: true}, nil
	default:
		return s.replay(ctx, c, prev), nil
	}

	// The hooks decide; a decision may wait for a human. A call that is
	// still waiting when the session stops being served here is left
	// unanswered: it is not journalled, so the next worker asks again.
	waitCtx, stopWait := context.WithCancel(ctx)
	defer stopWait()
	go func() {
		select {
		case <-s.drainStarted():
			stopWait()
		case <-waitCtx.Done():
		}
	}()
	decideCtx, span := s.w.tracer.Start(waitCtx, "perimeter.policy.decide",
		trace.WithAttributes(attribute.String("perimeter.tool_use.id", c.ToolUseID)))
	for _, h := range s.w.opts.Hooks {
		if err := h.BeforeCall(decideCtx, c); err != nil {
			if waitCtx.Err() != nil {
				span.SetAttributes(attribute.String("perimeter.decision", "none: left for the next worker"))
				span.End()
				return nil, s.leave(ctx, c.ToolUseID)
			}
			if c.Decision.By == "" {
				c.Decision = Decision{By: "hook"}
			}
			c.Decision.Allowed = false
			endDecision(span, c.Decision)
			s.auditDecision(ctx, c)
			o := &Outcome{Text: capText(err.Error(), s.w.opts.MaxOutputBytes), IsError: true}
			s.journalOutcome(ctx, c, o, true)
			return o, nil
		}
	}
	if c.Decision.By == "" {
		c.Decision = Decision{Policy: "allow", By: "no policy"}
	}
	c.Decision.Allowed = true
	endDecision(span, c.Decision)
	s.auditDecision(ctx, c)

	existing, fresh, err := j.begin(ctx, s.record(c))
	switch {
	case err != nil:
		s.log.Error("journal unavailable; not running the call", slog.Any("error", err))
		return &Outcome{Text: "internal error: the worker could not record this tool call, so it was not run", IsError: true}, nil
	case !fresh:
		return s.replay(ctx, c, existing), nil
	}
	cpID := s.checkpoint(ctx, c)
	o := s.execute(ctx, tool, c)
	if (o.IsError || o.EgressBlocked > 0) && c.Decision.RollbackOnError && cpID != "" {
		s.rollbackFailed(ctx, c, cpID, o)
	}
	if note := s.takeRollbackNote(); note != "" {
		o.Text = note + o.Text
	}
	s.journalOutcome(ctx, c, o, false)
	return o, nil
}

func (s *session) record(c *Call) record {
	return record{
		ToolUseID: c.ToolUseID, SessionID: c.SessionID, WorkID: c.WorkID, WorkerID: s.w.opts.WorkerID,
		Tool: c.Tool, InputSHA256: c.InputSHA256, StartedAt: time.Now(),
	}
}

// journalOutcome records how the call ended; begin says whether it still
// has to be recorded as started (a denial never was).
func (s *session) journalOutcome(ctx context.Context, c *Call, o *Outcome, begin bool) {
	ctx = context.WithoutCancel(ctx)
	if begin {
		if _, fresh, err := s.w.journal.begin(ctx, s.record(c)); err != nil || !fresh {
			s.log.Error("journal begin failed", slog.Any("error", err), slog.Bool("already_recorded", !fresh))
			return
		}
	}
	if err := s.w.journal.finish(ctx, c.ToolUseID, o.Text, o.IsError, time.Now()); err != nil {
		s.log.Error("journal finish failed", slog.Any("error", err))
	}
}

// replay answers a call the journal already knows.
func (s *session) replay(ctx context.Context, c *Call, prev record) *Outcome {
	if prev.SessionID != c.SessionID {
		// Tool-use ids are unique, so this is a reused one: the record,
		// and its output, belong to the other session's call.
		s.log.Error("refusing the call: its id is journalled for another session's call",
			slog.String("tool_use_id", c.ToolUseID), slog.String("journalled_for", prev.SessionID))
		return &Outcome{Text: "this call's id was already used by a call of another session; it was not run", IsError: true}
	}
	if prev.State == callFinished {
		s.log.Info("answering a call from the journal instead of running it again", slog.String("tool_use_id", c.ToolUseID))
		return &Outcome{Text: prev.Output, IsError: prev.IsError, Replayed: true}
	}
	// Started and never finished: the worker that ran it died. Its
	// effects are unknown, so it is not run blind a second time.
	msg := fmt.Sprintf("this %s call was started by a worker that stopped before it finished; it may have partly run and was not run again", c.Tool)
	_ = s.w.journal.finish(context.WithoutCancel(ctx), c.ToolUseID, msg, true, time.Now())
	return &Outcome{Text: msg, IsError: true, Replayed: true}
}

// recovered answers a call whose handling panicked: with its journalled
// result when it has one (the panic came after the call ran), else with an
// error, recorded as its result if the call was journalled as started.
func (s *session) recovered(ctx context.Context, id string, p any) *Outcome {
	logPanic(s.log, "tool call handling panicked", p, slog.String("tool_use_id", id))
	ctx = context.WithoutCancel(ctx)
	const msg = "internal error: the worker failed while handling this call; it may have partly run"
	prev, err := s.w.journal.lookup(ctx, id)
	switch {
	case err != nil || prev.SessionID != s.sessionID:
	case prev.State == callFinished:
		return &Outcome{Text: prev.Output, IsError: prev.IsError}
	default:
		if err := s.w.journal.finish(ctx, id, msg, true, time.Now()); err != nil {
			s.log.Error("journal finish failed", slog.Any("error", err))
		}
	}
	return &Outcome{Text: msg, IsError: true}
}

// leave gives up a call without answering it: it stops counting as in
// flight (so a drain can finish), and returns once the session is no
// longer served here, when nothing can be posted any more.
func (s *session) leave(ctx context.Context, id string) error {
	s.log.Info("leaving a waiting call unanswered for the next worker", slog.String("tool_use_id", id))
	s.posted(id)
	<-ctx.Done()
	return ctx.Err()
}

// execute runs the tool, bounded by the tool timeout, capping what it
// returns.
func (s *session) execute(ctx context.Context, tool anthropic.BetaTool, c *Call) *Outcome {
	ctx, cancel := context.WithTimeout(ctx, s.w.opts.ToolTimeout)
	defer cancel()
	rc, done := s.running(ctx, c.ToolUseID)
	defer done()
	o := s.executeTool(ctx, tool, c)
	o.EgressBlocked = int(rc.blocked.Load())
	return o
}

// executeTool runs the tool and makes its result the model's outcome.
func (s *session) executeTool(ctx context.Context, tool anthropic.BetaTool, c *Call) *Outcome {
	blocks, err := tool.Execute(ctx, c.Input)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &Outcome{Text: fmt.Sprintf("tool %q timed out after %s", c.Tool, s.w.opts.ToolTimeout), IsError: true}
	case ctx.Err() != nil:
		return &Outcome{Text: fmt.Sprintf("tool %q was cancelled: the worker stopped serving this session", c.Tool), IsError: true}
	case err != nil:
		// A sandbox failure carries its cause for operators apart from the
		// sentence the model sees.
		if ce, ok := errors.AsType[*toolset.CallError](err); ok {
			s.log.Warn("sandbox failure", slog.String("tool", c.Tool), slog.String("tool_use_id", c.ToolUseID), slog.Any("cause", ce.Err))
		}
		return &Outcome{Text: capText(err.Error(), s.w.opts.MaxOutputBytes), IsError: true}
	}
	var text string
	for _, b := range blocks {
		if b.OfText != nil {
			text += b.OfText.Text
		}
	}
	return &Outcome{Text: capText(text, s.w.opts.MaxOutputBytes)}
}

// truncatedMarker prefixes a result whose head was cut, as the SDK's tools do.
const truncatedMarker = "[output truncated]\n"

// capText keeps the last max bytes of s (on a rune boundary), prefixed with
// a marker, so a hostile sandbox cannot flood the model or the control plane.
func capText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := len(s) - (max - len(truncatedMarker))
	for cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut++
	}
	return truncatedMarker + s[cut:]
}

// endDecision ends the decision span with what was decided.
func endDecision(span trace.Span, d Decision) {
	span.SetAttributes(
		attribute.String("perimeter.decision", decisionLabel(d)),
		attribute.String("perimeter.policy.decision", d.Policy),
		attribute.String("perimeter.policy.rule", d.Rule),
		attribute.String("perimeter.decided_by", d.By),
		attribute.Int64("perimeter.approval.waited_ms", d.Waited.Milliseconds()),
		attribute.Bool("perimeter.approval.edited", d.Edited),
	)
	span.End()
}

// decisionLabel is allow or deny, as the call's span shows it.
func decisionLabel(d Decision) string {
	if d.Allowed {
		return "allow"
	}
	return "deny"
}

func outcomeLabel(o *Outcome) string {
	switch {
	case o.Replayed:
		return "replayed"
	case o.IsError:
		return "error"
	}
	return "ok"
}

// toolCallIDKey carries the tool-use event id of the call being executed.
type toolCallIDKey struct{}

func toolCallID(ctx context.Context) string {
	id, _ := ctx.Value(toolCallIDKey{}).(string)
	return id
}

// callIDTracerProvider hands the SDK's session runner a tracer that also
// records the gen_ai.tool.call.id of each execute_tool span in the context
// the tool runs with. The SDK's BetaTool.Execute receives no event id; the
// runner's OpenTelemetry span is where it documents one, so the gate reads
// it from there.
type callIDTracerProvider struct {
	trace.TracerProvider
}

func (p callIDTracerProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return callIDTracer{Tracer: p.TracerProvider.Tracer(name, opts...)}
}

type callIDTracer struct {
	trace.Tracer
}

const genAIToolCallID = attribute.Key("gen_ai.tool.call.id")

func (t callIDTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	cfg := trace.NewSpanStartConfig(opts...)
	for _, kv := range cfg.Attributes() {
		if kv.Key == genAIToolCallID {
			ctx = context.WithValue(ctx, toolCallIDKey{}, kv.Value.AsString())
			break
		}
	}
	return t.Tracer.Start(ctx, name, opts...)
}
