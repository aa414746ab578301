package worker

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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
