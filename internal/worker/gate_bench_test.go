package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// BenchmarkCapText caps tool results: one under the 100 KiB cap (returned
// as is) and one of 1 MiB of multi-byte text (cut on a rune boundary).
func BenchmarkCapText(b *testing.B) {
	const limit = 100 * 1024
	for _, bc := range []struct {
		name string
		text string
	}{
		{"under", strings.Repeat("x", 4*1024)},
		{"over", strings.Repeat("héllo wörld\n", 1<<20/14)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if out := capText(bc.text, limit); len(out) > limit {
					b.Fatalf("capped to %d bytes", len(out))
				}
			}
		})
	}
}

// BenchmarkJournalCall is the journal's share of one tool call: the begin
// and finish records, each a durable (synchronous=FULL) SQLite commit in
// the state directory, which is under $TMPDIR: put it on the disk a real
// state directory would be on.
func BenchmarkJournalCall(b *testing.B) {
	j, err := openJournal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = j.close() })
	ctx := context.Background()
	i := 0
	for b.Loop() {
		id := "sevt_" + strconv.Itoa(i)
		i++
		r := record{ToolUseID: id, SessionID: "sesn_1", WorkID: "work_1", WorkerID: "bench", Tool: "bash",
			InputSHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", StartedAt: time.Now()}
		if _, ok, err := j.begin(ctx, r); err != nil || !ok {
			b.Fatalf("begin: ok=%t err=%v", ok, err)
		}
		if err := j.finish(ctx, id, "", false, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// echoTool is a tool that answers at once, so that a benchmark measures
// the gate around it.
type echoTool struct{}

func (echoTool) Name() string        { return "echo" }
func (echoTool) Description() string { return "echo" }
func (echoTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{}
}
func (echoTool) Execute(context.Context, json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: "ok"}}}, nil
}

// sandboxTool runs its call in a real sandbox.
type sandboxTool struct{ sb sandbox.Sandbox }

func (sandboxTool) Name() string        { return "bash" }
func (sandboxTool) Description() string { return "bash" }
func (sandboxTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{}
}
func (t sandboxTool) Execute(ctx context.Context, in json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	res, err := t.sb.Exec(ctx, sandbox.Call{Tool: "bash", Input: in})
	if err != nil {
		return nil, err
	}
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: res.Text}}}, nil
}

// benchTool is "echo" (answers at once: the gate's own cost) or "sandbox"
// (bash in a process sandbox: a real call).
func benchTool(b *testing.B, name string) anthropic.BetaTool {
	if name == "echo" {
		return echoTool{}
	}
	rt := process.New(process.Options{Binary: testenv.Binary(b)})
	sb, err := rt.Create(context.Background(), sandbox.Spec{Workspace: b.TempDir(), Env: SandboxEnv(nil)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sb.Close(context.Background()) })
	return sandboxTool{sb: sb}
}

// BenchmarkGateCall is one tool call through the whole gate (journal,
// hooks, decision, metrics, log line) with telemetry and the audit log off,
// and on: spans recorded by the SDK (batched to an exporter that drops
// them) and every record appended to an audit log (fsynced each second, the
// worker's default). The tool is either an echo that answers at once (the
// gate's own cost) or `bash true` in a process sandbox (a real call).
// Compare off and on within one run.
func BenchmarkGateCall(b *testing.B) {
	for _, tool := range []string{"echo", "sandbox"} {
		tl := benchTool(b, tool)
		for _, on := range []bool{false, true} {
			name := "tool=" + tool + "/telemetry=off"
			if on {
				name = "tool=" + tool + "/telemetry=on"
			}
			b.Run(name, func(b *testing.B) { benchGateCall(b, tl, on) })
		}
	}
}

// BenchmarkTelemetryThroughput alternates calls with telemetry and audit
// off and on, one each per iteration on the same sandbox, so that both see
// the same machine load, and reports throughput on / off
// ("throughput-ratio"; the target is ≥ 0.95).
func BenchmarkTelemetryThroughput(b *testing.B) {
	for _, tool := range []string{"echo", "sandbox"} {
		b.Run("tool="+tool, func(b *testing.B) {
			tl := benchTool(b, tool)
			off, on := newBenchGate(b, false), newBenchGate(b, true)
			var tOff, tOn time.Duration
			for b.Loop() {
				start := time.Now()
				off.call(b, tl)
				mid := time.Now()
				on.call(b, tl)
				tOff += mid.Sub(start)
				tOn += time.Since(mid)
			}
			b.ReportMetric(float64(tOff)/float64(tOn), "throughput-ratio")
			b.ReportMetric(float64(tOn-tOff)/float64(b.N)/1e3, "added-µs/call")
		})
	}
}

// benchGate is a session's gate set up for benchmarks.
type benchGate struct {
	s      *session
	tracer trace.Tracer
	n      int
}

func newBenchGate(b *testing.B, on bool) *benchGate {
	dir := b.TempDir()
	j, err := openJournal(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = j.close() })
	opts := Options{Runtime: fakeRuntime{}, ToolTimeout: time.Minute, MaxOutputBytes: 100 << 10}
	var tp trace.TracerProvider = noop.NewTracerProvider()
	if on {
		sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
		b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
		tp = sdk
		aw, err := audit.Open(filepath.Join(dir, "audit"), audit.Options{SyncInterval: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = aw.Close() })
		opts.Audit = aw
	}
	w := &Worker{opts: opts, journal: j, metrics: NewMetrics(nil), tracer: tp.Tracer("bench")}
	s := &session{w: w, sessionID: "sesn_bench", workID: "work_bench", inFlight: map[string]bool{},
		log: slog.New(slog.DiscardHandler)}
	return &benchGate{s: s, tracer: callIDTracer{Tracer: tp.Tracer("runner")}}
}

func (g *benchGate) call(b *testing.B, tool anthropic.BetaTool) {
	g.n++
	ctx, span := g.tracer.Start(context.Background(), "execute_tool",
		trace.WithAttributes(genAIToolCallID.String("sevt_"+strconv.Itoa(g.n))))
	o, err := g.s.run(ctx, tool, false, json.RawMessage(`{"command":"true"}`))
	span.End()
	if err != nil || o.IsError {
		b.Fatalf("call: %+v, %v", o, err)
	}
}

func benchGateCall(b *testing.B, tool anthropic.BetaTool, on bool) {
	g := newBenchGate(b, on)
	for b.Loop() {
		g.call(b, tool)
	}
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }
