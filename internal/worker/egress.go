package worker

import (
	"context"
	"log/slog"
	"maps"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// runningCall is the tool call a session's sandbox is running, to which
// the egress requests made meanwhile are attributed.
type runningCall struct {
	id   string
	span trace.SpanContext
	// blocked counts the call's requests the proxy refused.
	blocked atomic.Int32
}

// running marks c as the session's running call until the returned func is
// called. Calls of one session that overlap are attributed to the latest.
func (s *session) running(ctx context.Context, id string) (rc *runningCall, done func()) {
	rc = &runningCall{id: id, span: trace.SpanContextFromContext(ctx)}
	s.current.Store(rc)
	return rc, func() { s.current.CompareAndSwap(rc, nil) }
}

func (s *session) currentCall() string {
	if rc := s.current.Load(); rc != nil {
		return rc.id
	}
	return ""
}

// openEgress starts the session's egress proxy, when the worker has one,
// and points spec at it; close stops it.
func (s *session) openEgress(ctx context.Context, spec *sandbox.Spec) (close func(), err error) {
	m := s.w.opts.Egress
	if m == nil {
		return func() {}, nil
	}
	sessionSpan := trace.SpanContextFromContext(ctx)
	eg, err := m.Open(egress.SessionOptions{
		SessionID:   s.sessionID,
		OnRecord:    func(r egress.Record) { s.egressRecord(sessionSpan, r) },
		CurrentCall: s.currentCall,
	})
	if err != nil {
		return nil, err
	}
	if eg == nil {
		return func() {}, nil // nothing allowed: no network at all
	}
	spec.Egress = eg.Sandbox
	spec.Env = maps.Clone(spec.Env)
	maps.Copy(spec.Env, eg.Env)
	return func() {
		if err := eg.Close(); err != nil {
			s.log.Warn("closing the egress proxy", slog.Any("error", err))
		}
	}, nil
}

// unlistedHost is the host label of the egress metrics for requests to a
// host that no rule names.
const unlistedHost = "unlisted"

// egressRecord reports one request through the session's proxy: a log
// line, a span under the tool call that made it, and metrics. A record
// holds names and sizes, never a secret value.
func (s *session) egressRecord(sessionSpan trace.SpanContext, r egress.Record) {
	verdict := "allowed"
	if !r.Allowed {
		verdict = "blocked"
	}
	// The sandbox chooses the host freely and must not be able to add
	// metric series at will, so the label is drawn from the rules: the
	// rule's entry the host matched (the host itself for an exact name,
	// "*.example.com" for any name under a wildcard), or one label for
	// hosts no rule names. The log line, span and audit record name the
	// host.
	host := r.HostPattern
	if host == "" {
		host = unlistedHost
	}
	m := s.w.metrics
	m.egressRequests.WithLabelValues(host, verdict).Inc()
	m.egressBytes.WithLabelValues(host, "out").Add(float64(r.BytesOut))
	m.egressBytes.WithLabelValues(host, "in").Add(float64(r.BytesIn))
	for _, name := range r.Secrets {
		m.injections.WithLabelValues(name).Inc()
	}

	// The span's parent is the call that was running, when the record
	// names it; a request between calls hangs off the session.
	parent := trace.ContextWithSpanContext(context.Background(), sessionSpan)
	if rc := s.current.Load(); rc != nil && rc.id == r.ToolUseID {
		if !r.Allowed {
			rc.blocked.Add(1)
		}
		if rc.span.IsValid() {
			parent = trace.ContextWithSpanContext(context.Background(), rc.span)
		}
	}
	end := time.Now()
	ctx, span := s.w.tracer.Start(parent, "egress "+r.Method+" "+r.Host,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(end.Add(-r.Duration)),
		trace.WithAttributes(
			attribute.String("perimeter.session.id", s.sessionID),
			attribute.String("perimeter.tool_use.id", r.ToolUseID),
			attribute.String("http.request.method", r.Method),
			attribute.String("server.address", r.Host),
			attribute.Int("server.port", r.Port),
			attribute.String("perimeter.egress.verdict", verdict),
			attribute.String("perimeter.egress.rule", r.Rule),
			attribute.StringSlice("perimeter.egress.credentials", r.Secrets),
			attribute.Int64("perimeter.egress.bytes_out", r.BytesOut),
			attribute.Int64("perimeter.egress.bytes_in", r.BytesIn),
			attribute.Bool("perimeter.egress.intercepted", r.Intercepted),
		))
	// The audit records and the log line are in the request's span, so
	// their OpenTelemetry log records join the trace of the call.
	s.auditEgress(ctx, r)

	attrs := []slog.Attr{
		slog.String("tool_use_id", r.ToolUseID), slog.String("method", r.Method),
		slog.String("host", r.Host), slog.Int("port", r.Port), slog.String("verdict", verdict),
		slog.String("rule", r.Rule), slog.Int("status", r.Status),
		slog.Int64("bytes_out", r.BytesOut), slog.Int64("bytes_in", r.BytesIn),
		slog.Duration("duration", r.Duration), slog.Bool("intercepted", r.Intercepted),
	}
	if r.Path != "" {
		attrs = append(attrs, slog.String("path", r.Path))
	}
	if len(r.Secrets) > 0 {
		attrs = append(attrs, slog.Any("credentials", r.Secrets))
	}
	if r.Reason != "" {
		attrs = append(attrs, slog.String("reason", r.Reason))
	}
	level, msg := slog.LevelInfo, "egress request"
	if !r.Allowed {
		level, msg = slog.LevelWarn, "egress blocked"
	}
	s.log.LogAttrs(ctx, level, msg, attrs...)

	if r.Status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", r.Status))
	}
	if len(r.Secrets) > 0 {
		span.AddEvent("perimeter.credential_injected", trace.WithAttributes(
			attribute.StringSlice("perimeter.egress.credentials", r.Secrets)), trace.WithTimestamp(end.Add(-r.Duration)))
	}
	if !r.Allowed || r.Reason != "" {
		span.SetStatus(codes.Error, r.Reason)
	}
	span.End(trace.WithTimestamp(end))
}
