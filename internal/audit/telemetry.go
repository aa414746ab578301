package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/bridges/otelslog"
	promBridge "go.opentelemetry.io/contrib/bridges/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
)

// Telemetry is the process's OTLP export of metrics and logs, next to
// Tracing's spans, configured by the same standard variables. Its zero
// value exports nothing.
type Telemetry struct {
	// Handler, when set, turns slog records into OpenTelemetry log records
	// (the slog bridge); nil when log export is off.
	Handler slog.Handler

	shutdown []func(context.Context) error
}

// TelemetryOptions configure StartTelemetry.
type TelemetryOptions struct {
	ServiceName, Version string
	// Enabled exports even when no OTLP endpoint is set.
	Enabled bool
	// Metrics is the Prometheus registry whose metrics are also exported
	// over OTLP; nil exports none.
	Metrics *prometheus.Registry
	// MetricInterval is how often metrics are exported; 0 means
	// OTEL_METRIC_EXPORT_INTERVAL, else 60s.
	MetricInterval time.Duration
	// LogExporter and MetricExporter replace the OTLP exporters (tests).
	LogExporter    sdklog.Exporter
	MetricExporter sdkmetric.Exporter
	// Logger receives warnings about settings that have no effect; nil
	// means slog.Default().
	Logger *slog.Logger
}

// StartTelemetry starts OTLP export of logs and metrics, each as
// signalEnabled decides: by OTEL_LOGS_EXPORTER / OTEL_METRICS_EXPORTER when
// set (on when it lists otlp), else when an endpoint is configured
// (OTEL_EXPORTER_OTLP_ENDPOINT, or the signal's own
// OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / _METRICS_ENDPOINT) or opts.Enabled;
// OTEL_SDK_DISABLED=true turns both off. The protocol is
// OTEL_EXPORTER_OTLP_(LOGS_|METRICS_)PROTOCOL: grpc or http/protobuf.
// Headers (OTEL_EXPORTER_OTLP_HEADERS) and the resource
// (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) follow the variables too.
// Other exporter names (console, prometheus, …) are warned about and
// ignored rather than refused, so a setting meant for another process
// sharing the environment does not stop the worker.
func StartTelemetry(ctx context.Context, opts TelemetryOptions) (*Telemetry, error) {
	warnUnsupportedExporters(opts.Logger, "LOGS")
	warnUnsupportedExporters(opts.Logger, "METRICS")
	t := &Telemetry{}
	var res *resource.Resource
	resourceOnce := func() (*resource.Resource, error) {
		if res != nil {
			return res, nil
		}
		var err error
		res, err = processResource(ctx, opts.ServiceName, opts.Version)
		return res, err
	}

	logExp := opts.LogExporter
	if logExp == nil && signalEnabled("LOGS", opts.Enabled) {
		var err error
		switch p, v := signalProtocol("LOGS"); p {
		case "grpc":
			logExp, err = otlploggrpc.New(ctx)
		case "http/protobuf", "":
			logExp, err = otlploghttp.New(ctx)
		default:
			err = unsupportedProtocol(p, v)
		}
		if err != nil {
			return nil, fmt.Errorf("create OTLP log exporter: %w", err)
		}
	}
	if logExp != nil {
		r, err := resourceOnce()
		if err != nil {
			return nil, err
		}
		lp := sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewBatchProcessor(logExp)), sdklog.WithResource(r))
		t.shutdown = append(t.shutdown, lp.Shutdown)
		t.Handler = otelslog.NewHandler("github.com/perimeterhq/perimeter", otelslog.WithLoggerProvider(lp), otelslog.WithSource(false))
	}

	metricExp := opts.MetricExporter
	if metricExp == nil && opts.Metrics != nil && signalEnabled("METRICS", opts.Enabled) {
		var err error
		switch p, v := signalProtocol("METRICS"); p {
		case "grpc":
			metricExp, err = otlpmetricgrpc.New(ctx)
		case "http/protobuf", "":
			metricExp, err = otlpmetrichttp.New(ctx)
		default:
			err = unsupportedProtocol(p, v)
		}
		if err != nil {
			t.Shutdown(ctx)
			return nil, fmt.Errorf("create OTLP metric exporter: %w", err)
		}
	}
	if metricExp != nil && opts.Metrics != nil {
		r, err := resourceOnce()
		if err != nil {
			t.Shutdown(ctx)
			return nil, err
		}
		var readerOpts []sdkmetric.PeriodicReaderOption
		readerOpts = append(readerOpts, sdkmetric.WithProducer(promBridge.NewMetricProducer(promBridge.WithGatherer(opts.Metrics))))
		if opts.MetricInterval > 0 {
			readerOpts = append(readerOpts, sdkmetric.WithInterval(opts.MetricInterval))
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp, readerOpts...)), sdkmetric.WithResource(r))
		t.shutdown = append(t.shutdown, mp.Shutdown)
	}
	return t, nil
}

// Shutdown flushes and stops the exporters.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	t.shutdown = nil
	return errors.Join(errs...)
}

// processResource is the resource every signal reports: the service, the
// variables' attributes, the SDK and the host.
func processResource(ctx context.Context, service, version string) (*resource.Resource, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
		resource.WithTelemetrySDK(),
		resource.WithHost(),
	)
	if err != nil {
		return nil, fmt.Errorf("build OpenTelemetry resource: %w", err)
	}
	return res, nil
}

// signalEnabled reports whether a signal (TRACES, LOGS, METRICS) is
// exported over OTLP. When the signal's OTEL_<SIGNAL>_EXPORTER is set, it
// decides, as the OpenTelemetry specification has it: on when it lists
// otlp, off otherwise (none, or only exporters Perimeter does not have,
// such as prometheus). When it is not set: on when enabled or an OTLP
// endpoint is set. OTEL_SDK_DISABLED=true turns every signal off.
func signalEnabled(signal string, enabled bool) bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	if list := exporters(signal); len(list) > 0 {
		return slices.ContainsFunc(list, func(e string) bool { return strings.EqualFold(e, "otlp") })
	}
	return enabled || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

// exporters is the list OTEL_<SIGNAL>_EXPORTER gives, without blanks;
// empty when the variable is not set.
func exporters(signal string) []string {
	var list []string
	for _, e := range strings.Split(os.Getenv("OTEL_"+signal+"_EXPORTER"), ",") {
		if e = strings.TrimSpace(e); e != "" {
			list = append(list, e)
		}
	}
	return list
}

// warnUnsupportedExporters logs a warning for each exporter that
// OTEL_<SIGNAL>_EXPORTER lists other than otlp and none: an SDK would start
// it, Perimeter does not, and a setting with no effect should not pass in
// silence.
func warnUnsupportedExporters(log *slog.Logger, signal string) {
	if log == nil {
		log = slog.Default()
	}
	variable := "OTEL_" + signal + "_EXPORTER"
	supported := "otlp, none"
	if signal == "METRICS" {
		supported += "; metrics are also served at /metrics"
	}
	for _, e := range exporters(signal) {
		if strings.EqualFold(e, "otlp") || strings.EqualFold(e, "none") {
			continue
		}
		log.Warn(fmt.Sprintf("%s lists %q, which Perimeter does not support; it is ignored, and without otlp in the list nothing of the signal goes out over OTLP (supported: %s)", variable, e, supported),
			slog.String("variable", variable), slog.String("exporter", e))
	}
}

// signalProtocol is the OTLP protocol of a signal: its own variable, else
// the generic one. variable names the one that was read, for errors.
func signalProtocol(signal string) (protocol, variable string) {
	variable = "OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL"
	if p := os.Getenv(variable); p != "" {
		return p, variable
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"
}

func unsupportedProtocol(protocol, variable string) error {
	return fmt.Errorf("%s=%q is not supported: use grpc or http/protobuf", variable, protocol)
}

// Logger is a logger whose records are exported as OpenTelemetry log
// records, or nil when log export is off.
func (t *Telemetry) Logger() *slog.Logger {
	if t.Handler == nil {
		return nil
	}
	return slog.New(t.Handler)
}

// Events tees audit records to OpenTelemetry log records: each record is
// also an event named for its kind (tool_decision, tool_result,
// approval_requested, approval_decided, egress_blocked,
// credential_injected, lease_lost, …) with the same ids and data, in the
// trace of the context it was appended with. Payload fields never leave
// the local log, and a record the log refuses as holding a forbidden value
// (ErrSecret) is not emitted either.
type Events struct {
	// Log is the local audit log; nil writes none.
	Log *Writer
	// OTel receives the events; nil sends none.
	OTel *slog.Logger
}

// Append writes r to the log and emits it as an event.
func (e Events) Append(ctx context.Context, r Record) error {
	var err error
	if e.Log != nil {
		err = e.Log.Append(ctx, r)
	}
	if e.OTel != nil && !errors.Is(err, ErrSecret) {
		kind := r.Kind
		if d, ok := r.Data.(Data); ok && kind == "" {
			kind = d.Kind()
		}
		attrs := []slog.Attr{slog.String("event.name", string(kind))}
		for _, id := range []struct{ k, v string }{{"session_id", r.SessionID}, {"work_id", r.WorkID}, {"tool_use_id", r.ToolUseID}} {
			if id.v != "" {
				attrs = append(attrs, slog.String(id.k, id.v))
			}
		}
		if r.Data != nil {
			var fields map[string]any
			if b, jerr := json.Marshal(r.Data); jerr == nil && json.Unmarshal(b, &fields) == nil {
				var data []any
				for k, v := range fields {
					data = append(data, slog.Any(k, v))
				}
				attrs = append(attrs, slog.Group("data", data...))
			}
		}
		e.OTel.LogAttrs(ctx, slog.LevelInfo, string(kind), attrs...)
	}
	return err
}
