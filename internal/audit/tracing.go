package audit

// Tracing: spans carry ids and decisions, never tool inputs, outputs or
// credentials; exporters are chosen by the standard OTEL_* environment
// variables.

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TracingOptions configure Tracing.
type TracingOptions struct {
	// ServiceName is the default service.name (OTEL_SERVICE_NAME overrides).
	ServiceName string
	// Version is service.version.
	Version string
	// Enabled exports even when no OTEL_EXPORTER_OTLP_*ENDPOINT is set.
	Enabled bool
	// Exporter, when set, replaces the OTLP exporter (tests record spans).
	Exporter sdktrace.SpanExporter
	// Logger receives warnings about settings that have no effect; nil
	// means slog.Default().
	Logger *slog.Logger
}

// Tracing returns the tracer provider for the process and its shutdown,
// which flushes pending spans. Export is on with an explicit exporter, or
// when OTEL_TRACES_EXPORTER lists otlp; when that variable is set without
// otlp (none, zipkin …), or OTEL_SDK_DISABLED=true, it is off; else it is on
// when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or opts.Enabled. The protocol follows
// OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: grpc or http/protobuf (the default).
// Other exporter names (console, zipkin, …) are warned about and ignored.
func Tracing(ctx context.Context, opts TracingOptions) (trace.TracerProvider, func(context.Context) error, error) {
	warnUnsupportedExporters(opts.Logger, "TRACES")
	exp := opts.Exporter
	if exp == nil && signalEnabled("TRACES", opts.Enabled) {
		var err error
		switch proto, v := signalProtocol("TRACES"); proto {
		case "grpc":
			exp, err = otlptracegrpc.New(ctx)
		case "http/protobuf", "":
			exp, err = otlptracehttp.New(ctx)
		default:
			return nil, nil, unsupportedProtocol(proto, v)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("create OTLP trace exporter: %w", err)
		}
	}
	if exp == nil {
		// Spans are still created (so ids propagate) but go nowhere.
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		return tp, tp.Shutdown, nil
	}
	res, err := processResource(ctx, opts.ServiceName, opts.Version)
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// ParentFromEnv returns ctx carrying the remote span context in the
// TRACEPARENT (and TRACESTATE) environment variables, so a worker started by
// a traced job joins its trace.
func ParentFromEnv(ctx context.Context) context.Context {
	carrier := propagation.MapCarrier{}
	if tp := os.Getenv("TRACEPARENT"); tp != "" {
		carrier["traceparent"] = tp
		carrier["tracestate"] = os.Getenv("TRACESTATE")
	}
	return propagation.TraceContext{}.Extract(ctx, carrier)
}
