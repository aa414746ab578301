package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	sdklog "go.opentelemetry.io/otel/sdk/log"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// memLogs keeps the bodies of the log records exported to it.
type memLogs struct {
	mu     sync.Mutex
	bodies []string
}

func (m *memLogs) Export(_ context.Context, rs []sdklog.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rs {
		m.bodies = append(m.bodies, r.Body().AsString())
	}
	return nil
}
func (m *memLogs) Shutdown(context.Context) error   { return nil }
func (m *memLogs) ForceFlush(context.Context) error { return nil }

// The process log goes out over OTLP at the level --log-level sets, not
// every record the code writes; the audit events go out all the same.
func TestOTLPLogExportFollowsTheLogLevel(t *testing.T) {
	exp := &memLogs{}
	tel, err := audit.StartTelemetry(context.Background(), audit.TelemetryOptions{ServiceName: "t", LogExporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	base := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	log := withOTelLogs(base, tel.Handler)
	log.Debug("debug line")
	log.Info("info line")
	log.With(slog.String("session_id", "sesn_1")).WithGroup("g").Info("info line with attributes")
	log.Warn("warn line")
	log.With(slog.String("session_id", "sesn_1")).Error("error line with attributes")
	_ = audit.Events{OTel: tel.Logger()}.Append(context.Background(), audit.Record{Data: audit.LeaseLost{Reason: "expired"}})
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	exp.mu.Lock()
	defer exp.mu.Unlock()
	want := []string{"warn line", "error line with attributes", "lease_lost"}
	if !slices.Equal(exp.bodies, want) {
		t.Errorf("exported log records %q, want %q", exp.bodies, want)
	}
}

// A flag value no worker can run with is refused before anything starts,
// naming the flag, as the same value in the config file is.
func TestWorkerRefusesANegativeFlagBeforeStarting(t *testing.T) {
	t.Setenv("ANTHROPIC_ENVIRONMENT_ID", "env_test")
	t.Setenv("ANTHROPIC_ENVIRONMENT_KEY", "sk-ant-oat01-test")
	for _, tc := range []struct{ flag, want string }{
		{"--max-sessions=-1", "--max-sessions) is -1"},
		{"--tool-timeout=-1s", "--tool-timeout) is -1s"},
		{"--drain-timeout=-1s", "--drain-timeout) is -1s"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			root := newRootCmd()
			root.SetArgs([]string{"worker", tc.flag, "--state-dir", state, "--admin-listen", "off",
				"--runtime", "process", "--insecure-process-runtime", "--base-url", "http://127.0.0.1:1"})
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			if _, err := os.Stat(state); !os.IsNotExist(err) {
				t.Errorf("the state directory was created (%v): the worker started before refusing the flag", err)
			}
		})
	}
}

// A collector that refuses the spans flushed at exit is reported in the
// process log, as a line like any other; so is an exporter that cannot
// finish flushing.
func TestTelemetryFailuresAreLogged(t *testing.T) {
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "refused", http.StatusBadRequest)
	}))
	defer collector.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")

	var out testenv.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	defer otel.SetErrorHandler(otel.GetErrorHandler())
	reportExportErrors(log)
	tp, shutdown, err := audit.Tracing(context.Background(), audit.TracingOptions{ServiceName: "t"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(context.Background(), "call")
	span.End()
	flushTelemetry(context.Background(), log, "spans", shutdown)
	if got := out.String(); !strings.Contains(got, `msg="telemetry: export failed"`) || !strings.Contains(got, "400 Bad Request") {
		t.Errorf("log after a refused flush: %q", got)
	}

	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{context.DeadlineExceeded, `level=WARN msg="telemetry: the last spans may not have been exported" error="context deadline exceeded"` + "\n"},
	} {
		var out testenv.Buffer
		log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
		flushTelemetry(context.Background(), log, "spans", func(context.Context) error { return tc.err })
		if out.String() != tc.want {
			t.Errorf("log after a flush that returned %v: %q, want %q", tc.err, out.String(), tc.want)
		}
	}
}

// A worker with no environment to serve, or no key for it, is refused
// before it creates its state directory or starts a sandbox.
func TestWorkerRefusesMissingCredentialsBeforeStarting(t *testing.T) {
	for _, tc := range []struct{ name, id, key, want string }{
		{"NoEnvironmentID", "", "sk-ant-oat01-test", "set ANTHROPIC_ENVIRONMENT_ID, --environment-id"},
		{"NoEnvironmentKey", "env_test", "", "set ANTHROPIC_ENVIRONMENT_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("ANTHROPIC_ENVIRONMENT_ID", tc.id)
			t.Setenv("ANTHROPIC_ENVIRONMENT_KEY", tc.key)
			state := filepath.Join(t.TempDir(), "state")
			root := newRootCmd()
			root.SetArgs([]string{"worker", "--state-dir", state, "--admin-listen", "off",
				"--runtime", "process", "--insecure-process-runtime", "--base-url", "http://127.0.0.1:1"})
			if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
			if _, err := os.Stat(state); !os.IsNotExist(err) {
				t.Errorf("the state directory was created (%v): the worker started before refusing", err)
			}
		})
	}
}
