package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// memLogs keeps the log records exported to it.
type memLogs struct {
	mu      sync.Mutex
	records []sdklog.Record
}

func (m *memLogs) Export(_ context.Context, rs []sdklog.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rs {
		m.records = append(m.records, r.Clone())
	}
	return nil
}
func (m *memLogs) Shutdown(context.Context) error   { return nil }
func (m *memLogs) ForceFlush(context.Context) error { return nil }

func TestEventsWriteTheLogAndEmitOneLogRecordPerRecordInItsTrace(t *testing.T) {
	exp := &memLogs{}
	tel, err := StartTelemetry(context.Background(), TelemetryOptions{ServiceName: "t", LogExporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "audit")
	w, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := Events{Log: w, OTel: tel.Logger()}
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "call")
	err = ev.Append(ctx, Record{SessionID: "sesn_1", ToolUseID: "sevt_1",
		Data:    ToolDecision{Tool: "bash", InputSHA256: "ab", Decision: "deny", DecidedBy: "rule:x"},
		Payload: map[string]any{"input": "rm -rf /"}})
	span.End()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(dir); err != nil || rep.Records != 1 {
		t.Errorf("the local log: %+v, %v", rep, err)
	}
	exp.mu.Lock()
	defer exp.mu.Unlock()
	if len(exp.records) != 1 {
		t.Fatalf("%d log records exported, want 1", len(exp.records))
	}
	r := exp.records[0]
	if r.Body().AsString() != "tool_decision" || r.TraceID() != span.SpanContext().TraceID() || r.SpanID() != span.SpanContext().SpanID() {
		t.Errorf("record %q in trace %s span %s; want tool_decision in the call's span", r.Body().AsString(), r.TraceID(), r.SpanID())
	}
	attrs := map[string]string{}
	r.WalkAttributes(func(kv attribute.KeyValue) bool {
		// Every value in full, nested ones included.
		attrs[string(kv.Key)] = fmt.Sprint(kv.Value.AsInterface())
		return true
	})
	if attrs["event.name"] != "tool_decision" || attrs["tool_use_id"] != "sevt_1" || attrs["session_id"] != "sesn_1" {
		t.Errorf("attributes: %v", attrs)
	}
	for k, v := range attrs {
		if strings.Contains(v, "rm -rf") || strings.Contains(k, "payload") {
			t.Errorf("the payload reached the exported record: %s=%s", k, v)
		}
	}
}

// A record the log refuses because it holds a forbidden value is not sent
// to OpenTelemetry either: the export is no way around Forbid.
func TestEventsDoNotExportARecordHoldingAForbiddenValue(t *testing.T) {
	const canary = "canary-3f9a1c"
	var out strings.Builder
	w, err := Open(filepath.Join(t.TempDir(), "audit"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Forbid([]byte(canary))
	ev := Events{Log: w, OTel: slog.New(slog.NewJSONHandler(&out, nil))}

	err = ev.Append(context.Background(), Record{SessionID: "sesn_1",
		Data: EgressBlocked{Method: "GET", Host: "example.com", Reason: "token " + canary}})
	if !errors.Is(err, ErrSecret) {
		t.Fatalf("Append: %v, want ErrSecret", err)
	}
	if strings.Contains(out.String(), canary) {
		t.Fatalf("the refused record was exported with the value: %s", out.String())
	}

	// Records the log accepts are still exported.
	if err := ev.Append(context.Background(), Record{SessionID: "sesn_1", Data: LeaseLost{Reason: "expired"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"event.name":"lease_lost"`) {
		t.Fatalf("the accepted record was not exported: %s", out.String())
	}
}

// clearOTelEnv unsets, for t, every variable that decides whether and how
// a signal is exported, so that a test sets only what it is about.
func clearOTelEnv(t *testing.T) {
	for _, signal := range []string{"", "TRACES_", "LOGS_", "METRICS_"} {
		t.Setenv("OTEL_EXPORTER_OTLP_"+signal+"ENDPOINT", "")
		t.Setenv("OTEL_EXPORTER_OTLP_"+signal+"PROTOCOL", "")
	}
	for _, v := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_LOGS_EXPORTER", "OTEL_METRICS_EXPORTER"} {
		t.Setenv(v, "")
	}
}

// An unsupported protocol is refused naming the variable that asked for
// it, the signal's own when that is the one set.
func TestAnUnsupportedProtocolIsRefusedNamingItsVariable(t *testing.T) {
	for _, signal := range []string{"TRACES", "LOGS", "METRICS"} {
		t.Run(signal, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			t.Setenv("OTEL_EXPORTER_OTLP_"+signal+"_PROTOCOL", "http/json")
			var err error
			if signal == "TRACES" {
				_, _, err = Tracing(context.Background(), TracingOptions{ServiceName: "t"})
			} else {
				var tel *Telemetry
				tel, err = StartTelemetry(context.Background(), TelemetryOptions{ServiceName: "t", Metrics: prometheus.NewRegistry()})
				if err == nil {
					tel.Shutdown(context.Background())
				}
			}
			want := `OTEL_EXPORTER_OTLP_` + signal + `_PROTOCOL="http/json" is not supported`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v, want one saying %s", err, want)
			}
		})
	}
}

// OTEL_TRACES_EXPORTER=otlp (and its logs and metrics siblings) asks for
// OTLP export as plainly as an endpoint does; the SDK's default endpoint
// is then used.
func TestAnOTLPExporterVariableTurnsExportOn(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_LOGS_EXPORTER", "console, OTLP")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")
	// Nothing is exported: no span ends, nothing is logged, and the
	// shutdown's context is already done.
	done, cancel := context.WithCancel(context.Background())
	cancel()

	tp, shutdown, err := Tracing(context.Background(), TracingOptions{ServiceName: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(done)
	if _, span := tp.Tracer("t").Start(context.Background(), "call"); !span.IsRecording() {
		t.Error("OTEL_TRACES_EXPORTER=otlp: spans are not recorded for export")
	}
	tel, err := StartTelemetry(context.Background(), TelemetryOptions{ServiceName: "t", Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(done)
	if tel.Handler == nil {
		t.Error("OTEL_LOGS_EXPORTER=console,otlp: logs are not exported")
	}
	if len(tel.shutdown) != 2 {
		t.Errorf("%d exporters started, want logs and metrics", len(tel.shutdown))
	}
}

// An OTEL_*_EXPORTER that lists no otlp keeps its signal off OTLP even
// with an endpoint set, as the specification has it; one that is not set
// leaves the endpoint to decide.
func TestAnExporterListWithoutOTLPTurnsItsSignalOff(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	t.Setenv("OTEL_LOGS_EXPORTER", "")
	t.Setenv("OTEL_METRICS_EXPORTER", "prometheus")
	done, cancel := context.WithCancel(context.Background())
	cancel()
	quiet := TracingOptions{ServiceName: "t", Logger: slog.New(slog.DiscardHandler)}

	tp, shutdown, err := Tracing(context.Background(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(done)
	if _, span := tp.Tracer("t").Start(context.Background(), "call"); span.IsRecording() {
		t.Error("OTEL_TRACES_EXPORTER=zipkin with an endpoint: spans are exported over OTLP")
	}
	tel, err := StartTelemetry(context.Background(), TelemetryOptions{ServiceName: "t", Metrics: prometheus.NewRegistry(), Logger: quiet.Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(done)
	if tel.Handler == nil {
		t.Error("OTEL_LOGS_EXPORTER unset with an endpoint: logs are not exported")
	}
	if len(tel.shutdown) != 1 {
		t.Errorf("%d exporters started, want logs only (OTEL_METRICS_EXPORTER=prometheus)", len(tel.shutdown))
	}
}

// An exporter Perimeter does not provide (console, zipkin, prometheus, …)
// is not refused, since the same environment may configure another
// process, but it is warned about by name rather than ignored in silence.
func TestAnUnsupportedExporterIsWarnedAboutNamingItsVariable(t *testing.T) {
	clearOTelEnv(t)
	for _, tc := range []struct {
		signal, value string
		want          []string // exporters warned about; none for none
	}{
		{"TRACES", "zipkin", []string{"zipkin"}},
		{"TRACES", "console, jaeger", []string{"console", "jaeger"}},
		{"LOGS", "console", []string{"console"}},
		{"METRICS", "prometheus", []string{"prometheus"}},
		{"METRICS", "none", nil},
		{"LOGS", "", nil},
	} {
		t.Run(tc.signal+"="+tc.value, func(t *testing.T) {
			for _, s := range []string{"TRACES", "LOGS", "METRICS"} {
				t.Setenv("OTEL_"+s+"_EXPORTER", "")
			}
			variable := "OTEL_" + tc.signal + "_EXPORTER"
			t.Setenv(variable, tc.value)
			var out strings.Builder
			log := slog.New(slog.NewTextHandler(&out, nil))
			if tc.signal == "TRACES" {
				_, shutdown, err := Tracing(context.Background(), TracingOptions{ServiceName: "t", Logger: log})
				if err != nil {
					t.Fatal(err)
				}
				shutdown(context.Background())
			} else {
				tel, err := StartTelemetry(context.Background(), TelemetryOptions{ServiceName: "t", Metrics: prometheus.NewRegistry(), Logger: log})
				if err != nil {
					t.Fatal(err)
				}
				tel.Shutdown(context.Background())
			}
			got := strings.Count(out.String(), "level=WARN")
			if got != len(tc.want) {
				t.Fatalf("%d warnings, want %d:\n%s", got, len(tc.want), out.String())
			}
			for _, e := range tc.want {
				if !strings.Contains(out.String(), variable+` lists \"`+e+`\"`) || !strings.Contains(out.String(), "supported: otlp, none") {
					t.Errorf("no warning naming %s and %q and what is supported:\n%s", variable, e, out.String())
				}
			}
			if tc.signal == "METRICS" && len(tc.want) > 0 && !strings.Contains(out.String(), "/metrics") {
				t.Errorf("the warning does not point to /metrics:\n%s", out.String())
			}
		})
	}
}
