package worker

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/egress"
)

// AuditLog receives the worker's audit records; *audit.Writer is one.
type AuditLog interface {
	Append(ctx context.Context, r audit.Record) error
}

// audit appends one record of the session; a failure is logged, never
// fatal to the call (the record's absence is what the log then shows).
func (s *session) audit(ctx context.Context, toolUseID string, data audit.Data, payload map[string]any) {
	s.w.audit(ctx, audit.Record{
		SessionID: s.sessionID, WorkID: s.workID, ToolUseID: toolUseID, Data: data, Payload: payload,
	})
}

// audit appends r, if the worker keeps an audit log, on a context that
// outlives a cancelled call, and logs a failure.
func (w *Worker) audit(ctx context.Context, r audit.Record) {
	if w.opts.Audit == nil {
		return
	}
	if err := w.opts.Audit.Append(context.WithoutCancel(ctx), r); err != nil {
		kind := r.Kind
		if d, ok := r.Data.(audit.Data); ok {
			kind = d.Kind()
		}
		w.log.Error("could not write the audit record", slog.String("kind", string(kind)),
			slog.String("session_id", r.SessionID), slog.String("tool_use_id", r.ToolUseID), slog.Any("error", err))
	}
}

// auditDecision records how a call was decided.
func (s *session) auditDecision(ctx context.Context, c *Call) {
	d := c.Decision
	s.audit(ctx, c.ToolUseID, audit.ToolDecision{
		Tool: c.Tool, InputSHA256: c.InputSHA256, Decision: cmp.Or(d.Policy, decisionLabel(d)),
		DecidedBy: d.By, Rule: d.Rule,
	}, map[string]any{"input": rawJSON(c.Input)})
}

// auditResult records how a call ended.
func (s *session) auditResult(ctx context.Context, c *Call, o *Outcome) {
	status := audit.StatusOK
	switch {
	case !c.Decision.Allowed && c.Decision.By != "":
		status = audit.StatusDenied
	case o.IsError:
		status = audit.StatusError
	}
	sum := sha256.Sum256([]byte(o.Text))
	s.audit(ctx, c.ToolUseID, audit.ToolResult{
		Status: status, DurationMS: o.Duration.Milliseconds(), OutputBytes: int64(len(o.Text)),
		OutputSHA256: hex.EncodeToString(sum[:]), Truncated: strings.HasPrefix(o.Text, truncatedMarker),
		Replayed: o.Replayed,
	}, map[string]any{"output": o.Text})
}

// auditEgress records one request through the session's proxy and the
// credentials it carried (names only).
func (s *session) auditEgress(ctx context.Context, r egress.Record) {
	if !r.Allowed {
		s.audit(ctx, r.ToolUseID, audit.EgressBlocked{Method: r.Method, Host: r.Host, Port: r.Port, Rule: r.Rule, Reason: r.Reason},
			map[string]any{"path": r.Path})
		return
	}
	s.audit(ctx, r.ToolUseID, audit.EgressRequest{
		Method: r.Method, Host: r.Host, Port: r.Port, Rule: r.Rule, Status: r.Status,
		BytesOut: r.BytesOut, BytesIn: r.BytesIn, DurationMS: r.Duration.Milliseconds(),
		Intercepted: r.Intercepted, Reason: r.Reason,
	}, map[string]any{"path": r.Path})
	if len(r.Secrets) > 0 {
		s.audit(ctx, r.ToolUseID, audit.CredentialInjected{Names: r.Secrets, Host: r.Host, Method: r.Method, Rule: r.Rule}, nil)
	}
}

// rawJSON keeps a JSON input as it is in a payload, and anything else as a
// string.
func rawJSON(b []byte) any {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	return string(b)
}
