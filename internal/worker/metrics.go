package worker

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the worker's Prometheus metrics.
type Metrics struct {
	reg               *prometheus.Registry
	toolCalls         *prometheus.CounterVec
	toolDuration      *prometheus.HistogramVec
	sessionsActive    prometheus.Gauge
	workItems         *prometheus.CounterVec
	leaseLost         prometheus.Counter
	pollLatency       prometheus.Histogram
	sandboxStart      *prometheus.HistogramVec
	sandboxFailures   *prometheus.CounterVec
	egressRequests    *prometheus.CounterVec
	egressBytes       *prometheus.CounterVec
	injections        *prometheus.CounterVec
	checkpointSeconds prometheus.Histogram
}

// NewMetrics registers the worker's metrics in reg; nil = a new registry
// with the Go and process collectors.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := &Metrics{
		reg: reg,
		toolCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_tool_calls_total", Help: "Tool calls by tool and outcome (ok, error, replayed, unknown_tool).",
		}, []string{"tool", "outcome"}),
		toolDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "perimeter_tool_call_duration_seconds", Help: "Tool call duration through the gate.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"tool"}),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "perimeter_sessions_active", Help: "Sessions being served now.",
		}),
		workItems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_work_items_total", Help: "Work items by how they ended (completed, released, lease_lost, failed, skipped).",
		}, []string{"result"}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "perimeter_lease_lost_total", Help: "Work-item leases lost (412 or expired).",
		}),
		pollLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "perimeter_poll_claim_seconds", Help: "Time from starting to poll to holding an acked work item.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
		sandboxStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "perimeter_sandbox_start_seconds", Help: "Sandbox start time by runtime.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 10),
		}, []string{"runtime"}),
		sandboxFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_sandbox_failures_total", Help: "Sandboxes that died (exited, OOM-killed, wedged) while serving a session, by runtime.",
		}, []string{"runtime"}),
		egressRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_egress_requests_total", Help: "Requests through the sessions' egress proxies by host (as a rule names it: the host, or a wildcard such as \"*.example.com\"; \"unlisted\" when no rule does) and verdict (allowed, blocked).",
		}, []string{"host", "verdict"}),
		egressBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_egress_bytes_total", Help: "Body bytes through the egress proxies by host (as a rule names it: the host, or a wildcard such as \"*.example.com\"; \"unlisted\" when no rule does) and direction (out: to the upstream, in: to the sandbox).",
		}, []string{"host", "direction"}),
		injections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perimeter_credential_injections_total", Help: "Requests a credential's value was substituted into, by secret name.",
		}, []string{"secret"}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "perimeter_checkpoint_seconds", Help: "Time to checkpoint a workspace before a call that may write.",
			Buckets: prometheus.ExponentialBuckets(0.001, 3, 10),
		}),
	}
	reg.MustRegister(m.checkpointSeconds, m.egressRequests, m.egressBytes, m.injections, m.sandboxFailures, m.toolCalls, m.toolDuration, m.sessionsActive, m.workItems, m.leaseLost, m.pollLatency, m.sandboxStart)
	return m
}

// AdminHandler serves /healthz (the process is up), /readyz (the worker is
// polling) and /metrics.
func (w *Worker) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.Ready() {
			http.Error(rw, "not ready: not polling (starting or draining)", http.StatusServiceUnavailable)
			return
		}
		rw.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(w.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}
