package e2e

import (
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// collector is a minimal OTLP/HTTP trace receiver.
type collector struct {
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req coltrace.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
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
}
