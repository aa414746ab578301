package e2e

import (
	"encoding/hex"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// collector is a minimal OTLP/HTTP receiver of traces, logs and metrics.
type collector struct {
	mu      sync.Mutex
	spans   []*tracepb.Span
	logs    []*logspb.LogRecord
	metrics []string // names
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var resp proto.Message
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/v1/traces":
		var req coltrace.ExportTraceServiceRequest
		if proto.Unmarshal(body, &req) != nil {
			break
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				c.spans = append(c.spans, ss.Spans...)
			}
		}
		resp = &coltrace.ExportTraceServiceResponse{}
	case "/v1/logs":
		var req collogs.ExportLogsServiceRequest
		if proto.Unmarshal(body, &req) != nil {
			break
		}
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				c.logs = append(c.logs, sl.LogRecords...)
			}
		}
		resp = &collogs.ExportLogsServiceResponse{}
	case "/v1/metrics":
		var req colmetrics.ExportMetricsServiceRequest
		if proto.Unmarshal(body, &req) != nil {
			break
		}
		for _, rm := range req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					c.metrics = append(c.metrics, m.Name)
				}
			}
		}
		resp = &colmetrics.ExportMetricsServiceResponse{}
	}
	if resp == nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(resp)
	w.Write(b)
}

// TestWorkerExportsSpansThroughTheStandardOTELVariables runs a session with
// OTEL_EXPORTER_OTLP_ENDPOINT pointing at a collector and TRACEPARENT set:
// the work item, session and tool-call spans arrive in that trace, carrying
// ids and no payloads.
func TestWorkerExportsSpansThroughTheStandardOTELVariables(t *testing.T) {
	col := &collector{}
	addr := freeAddr(t)
	srv := &http.Server{Addr: addr, Handler: col}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Close() })
	waitDial(t, addr)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	w := startWorkerEnv(t, cp.url, t.TempDir(), []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + addr,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_SERVICE_NAME=perimeter-e2e",
		"TRACEPARENT=00-" + traceID + "-00f067aa0ba902b7-01",
	})
	id := newSession(t, op, "quickstart")
	waitPassed(t, op, id)
	w.signal(sigterm)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("worker exited %d", code)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	names := map[string]int{}
	for _, s := range col.spans {
		names[strings.Fields(s.Name)[0]]++
		if got := hex.EncodeToString(s.TraceId); got != traceID {
			t.Errorf("span %s in trace %s, want the TRACEPARENT trace %s", s.Name, got, traceID)
		}
		for _, kv := range s.Attributes {
			if v := kv.Value.GetStringValue(); strings.Contains(v, "Hello from Perimeter") || strings.Contains(v, "echo ") {
				t.Errorf("span %s attribute %s carries a payload: %q", s.Name, kv.Key, v)
			}
		}
	}
	if names["perimeter.work"] != 1 || names["perimeter.session"] != 1 || names["anthropic.tool_use"] != 8 {
		t.Errorf("exported spans by name = %v; want one work item, one session and 8 tool calls", names)
	}

	// The audit events arrive as log records in the session's trace, and
	// the Prometheus metrics as OTLP metrics.
	events := map[string]int{}
	for _, l := range col.logs {
		if l.Body.GetStringValue() != "tool_decision" && l.Body.GetStringValue() != "tool_result" {
			continue
		}
		events[l.Body.GetStringValue()]++
		if got := hex.EncodeToString(l.TraceId); got != traceID {
			t.Errorf("log record %s in trace %q, want %s", l.Body.GetStringValue(), got, traceID)
		}
		var hasID bool
		for _, kv := range l.Attributes {
			hasID = hasID || kv.Key == "tool_use_id" && kv.Value.GetStringValue() != ""
			if strings.Contains(kv.Value.String(), "Hello from Perimeter") {
				t.Errorf("log record %s carries a payload in %s", l.Body.GetStringValue(), kv.Key)
			}
		}
		if !hasID {
			t.Errorf("log record %s has no tool_use_id", l.Body.GetStringValue())
		}
	}
	if events["tool_decision"] != 8 || events["tool_result"] != 8 {
		t.Errorf("audit events exported as logs: %v; want 8 of each", events)
	}
	if !slices.Contains(col.metrics, "perimeter_tool_calls_total") {
		t.Errorf("exported metrics %v lack perimeter_tool_calls_total", col.metrics)
	}
}
