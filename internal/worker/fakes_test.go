package worker

import (
	"context"
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// fakeRuntime is a Runtime that never starts anything.
type fakeRuntime struct{}

func (fakeRuntime) Name() string { return "fake" }
func (fakeRuntime) Create(context.Context, sandbox.Spec) (sandbox.Sandbox, error) {
	return nil, errors.New("fake runtime")
}

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func testutilGauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}

func testutilCounterVec(c *prometheus.CounterVec, labels ...string) float64 {
	return testutilCounter(c.WithLabelValues(labels...))
}

// recordingAudit is an AuditLog that keeps each record with the span
// context it was appended in.
type recordingAudit struct {
	mu      sync.Mutex
	records []audit.Record
	spans   []trace.SpanContext
}

func (a *recordingAudit) Append(ctx context.Context, r audit.Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.records = append(a.records, r)
	a.spans = append(a.spans, trace.SpanContextFromContext(ctx))
	return nil
}
