package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// jaeger is a running Jaeger all-in-one with in-memory storage and every
// listener on loopback: the four the test talks to (OTLP/HTTP, OTLP/gRPC,
// the query API and the admin health check) on free ports picked here, the
// rest on ports the kernel picks, so none of Jaeger's well-known ports is
// taken and parallel runs do not collide.
type jaeger struct {
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}

	otlpHTTP, otlpGRPC, query string // host:port
}

// startJaeger starts $PERIMETER_JAEGER (built by scripts/jaeger.sh) and
// waits until its admin health check reports it ready.
func startJaeger(t *testing.T) *jaeger {
	t.Helper()
	bin := os.Getenv("PERIMETER_JAEGER")
	fi, err := os.Stat(bin)
	testenv.Need(t, bin != "" && err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0,
		fmt.Sprintf("PERIMETER_JAEGER (now %q) to name an executable Jaeger all-in-one: export PERIMETER_JAEGER=$(scripts/jaeger.sh)", bin))

	j := &jaeger{out: &testenv.Buffer{}, done: make(chan struct{}),
		otlpHTTP: freeAddr(t), otlpGRPC: freeAddr(t), query: freeAddr(t)}
	admin := freeAddr(t)
	j.cmd = exec.Command(bin,
		"--admin.http.host-port="+admin,
		"--collector.otlp.enabled=true",
		"--collector.otlp.http.host-port="+j.otlpHTTP,
		"--collector.otlp.grpc.host-port="+j.otlpGRPC,
		"--query.http-server.host-port="+j.query,
		// Listeners the test does not use: Jaeger's own collector
		// protocols and the query gRPC API.
		"--collector.http-server.host-port=127.0.0.1:0",
		"--collector.grpc-server.host-port=127.0.0.1:0",
		"--query.grpc-server.host-port=127.0.0.1:0",
		"--collector.zipkin.host-port=", // off
		"--memory.max-traces=1000",
	)
	j.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"SPAN_STORAGE_TYPE=memory",
		// Jaeger traces itself through the OTLP variables, by default to
		// localhost:4317, which may be anyone's collector: record nothing,
		// and point it at itself all the same.
		"OTEL_TRACES_SAMPLER=always_off",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + j.otlpGRPC,
	}
	j.cmd.Stdout, j.cmd.Stderr = j.out, j.out
	if err := j.cmd.Start(); err != nil {
		t.Fatalf("start jaeger: %v", err)
	}
	go func() { _ = j.cmd.Wait(); close(j.done) }()
	t.Cleanup(func() {
		_ = j.cmd.Process.Kill()
		<-j.done
		if t.Failed() {
			t.Logf("--- jaeger output:\n%s", j.out.String())
		}
	})

	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + admin + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return j
			}
		}
		select {
		case <-j.done:
			t.Fatalf("jaeger exited (%v) before it was ready", j.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("jaeger's health check never reported it ready")
		}
	}
}

// jaegerTrace is a trace as Jaeger's query API (/api/traces/{id}) returns it.
type jaegerTrace struct {
	TraceID   string                   `json:"traceID"`
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
}

type jaegerSpan struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64       `json:"startTime"`
	Tags      []jaegerTag `json:"tags"`
	Logs      []struct {
		Fields []jaegerTag `json:"fields"`
	} `json:"logs"`
	ProcessID string `json:"processID"`
}

type jaegerTag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

type jaegerProcess struct {
	ServiceName string      `json:"serviceName"`
	Tags        []jaegerTag `json:"tags"`
}

func tag(tags []jaegerTag, key string) string {
	for _, kv := range tags {
		if kv.Key == key {
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

func (s *jaegerSpan) tag(key string) string { return tag(s.Tags, key) }

func (s *jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// tree renders the trace as an indented span tree with each span's tags,
// for the log of a failed test.
func (tr *jaegerTrace) tree() string {
	children := map[string][]*jaegerSpan{}
	ids := map[string]bool{}
	for i := range tr.Spans {
		ids[tr.Spans[i].SpanID] = true
	}
	var roots []*jaegerSpan
	for i := range tr.Spans {
		s := &tr.Spans[i]
		if p := s.parent(); ids[p] {
			children[p] = append(children[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(ss []*jaegerSpan, depth int)
	walk = func(ss []*jaegerSpan, depth int) {
		sort.Slice(ss, func(i, j int) bool { return ss[i].StartTime < ss[j].StartTime })
		for _, s := range ss {
			fmt.Fprintf(&b, "%s%s span=%s parent=%s service=%s", strings.Repeat("  ", depth), s.OperationName, s.SpanID, s.parent(), tr.Processes[s.ProcessID].ServiceName)
			for _, kv := range s.Tags {
				v := fmt.Sprint(kv.Value)
				if len(v) > 60 {
					v = v[:60] + "…"
				}
				fmt.Fprintf(&b, " %s=%q", kv.Key, v)
			}
			b.WriteByte('\n')
			walk(children[s.SpanID], depth+1)
		}
	}
	walk(roots, 0)
	return b.String()
}

// trace polls the query API until the trace holds its perimeter.work span
// (the last to end) and two reads a moment apart agree on its spans: the
// worker has exported everything before it exits, but the collector
// stores spans from a queue.
func (j *jaeger) trace(t *testing.T, traceID string) *jaegerTrace {
	t.Helper()
	var last *jaegerTrace
	seen := -1
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		tr, err := j.get(traceID)
		if err == nil && slices.ContainsFunc(tr.Spans, func(s jaegerSpan) bool { return s.OperationName == "perimeter.work" }) {
			if len(tr.Spans) == seen {
				return tr
			}
			seen, last = len(tr.Spans), tr
		}
		time.Sleep(300 * time.Millisecond)
	}
	if last != nil {
		t.Logf("span tree so far:\n%s", last.tree())
	}
	t.Fatalf("jaeger never held a complete trace %s", traceID)
	return nil
}

func (j *jaeger) get(traceID string) (*jaegerTrace, error) {
	resp, err := http.Get("http://" + j.query + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/traces/%s: %s", traceID, resp.Status)
	}
	var body struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if len(body.Data) != 1 {
		return nil, fmt.Errorf("GET /api/traces/%s: %d traces", traceID, len(body.Data))
	}
	return &body.Data[0], nil
}

// TestJaegerShowsAWorkerSessionAsOneSpanTree exports a worker's traces to a
// real Jaeger, over OTLP/HTTP and OTLP/gRPC as the standard OTEL_* variables
// choose, and reads the session back from Jaeger's query API: the work
// item's span joins the TRACEPARENT trace, the session span is its child,
// every span of the trace is below the work item, every tool call is a span
// below the session carrying its ids with its policy decision and sandbox
// run below it, the resource attributes become the process's tags, and no
// tag carries a payload.
func TestJaegerShowsAWorkerSessionAsOneSpanTree(t *testing.T) {
	j := startJaeger(t)
	const parentSpanID = "00f067aa0ba902b7"
	for _, tc := range []struct {
		name, protocol, endpoint, traceID string
	}{
		{"http", "http/protobuf", "http://" + j.otlpHTTP, "7a3e9c1f0b5d4e2a8c6b1d3f5e7a9c0b"},
		{"grpc", "grpc", "http://" + j.otlpGRPC, "8b4fad20c16e5f3b9d7c2e4a6f8bad1c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startControlPlane(t, t.TempDir(), "")
			op := operator(cp.url)
			w := startWorkerEnv(t, cp.url, t.TempDir(), []string{
				"OTEL_EXPORTER_OTLP_ENDPOINT=" + tc.endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL=" + tc.protocol,
				"OTEL_SERVICE_NAME=perimeter-e2e-jaeger",
				"OTEL_RESOURCE_ATTRIBUTES=tenant.id=acme,enduser.id=alice%40example.com",
				"TRACEPARENT=00-" + tc.traceID + "-" + parentSpanID + "-01",
			})
			id := newSession(t, op, "quickstart")
			waitPassed(t, op, id)
			w.signal(sigterm)
			if code := w.wait(30 * time.Second); code != 0 {
				t.Fatalf("worker exited %d on SIGTERM, want 0", code)
			}

			tr := j.trace(t, tc.traceID)
			defer func() {
				if t.Failed() {
					t.Logf("span tree of trace %s:\n%s", tc.traceID, tr.tree())
				}
			}()
			checkSessionTrace(t, tr, id, parentSpanID)
		})
	}
}

// checkSessionTrace checks the trace of one quickstart session.
func checkSessionTrace(t *testing.T, tr *jaegerTrace, sessionID, parentSpanID string) {
	byID := map[string]*jaegerSpan{}
	children := map[string][]*jaegerSpan{}
	var work, sessions, tools []*jaegerSpan
	for i := range tr.Spans {
		s := &tr.Spans[i]
		byID[s.SpanID] = s
		children[s.parent()] = append(children[s.parent()], s)
		switch {
		case s.OperationName == "perimeter.work":
			work = append(work, s)
		case s.OperationName == "perimeter.session":
			sessions = append(sessions, s)
		case s.tag("gen_ai.operation.name") == "execute_tool":
			tools = append(tools, s)
		}
	}
	if len(work) != 1 || len(sessions) != 1 {
		t.Fatalf("%d perimeter.work and %d perimeter.session spans, want one of each", len(work), len(sessions))
	}
	root, sess := work[0], sessions[0]
	if got := root.parent(); got != parentSpanID {
		t.Errorf("perimeter.work's parent = %q, want the TRACEPARENT span %s", got, parentSpanID)
	}
	if got := sess.parent(); got != root.SpanID {
		t.Errorf("perimeter.session's parent = %q, want perimeter.work %s", got, root.SpanID)
	}
	for _, s := range []*jaegerSpan{root, sess} {
		if got := s.tag("perimeter.session.id"); got != sessionID {
			t.Errorf("%s perimeter.session.id = %q, want %s", s.OperationName, got, sessionID)
		}
	}

	// under reports whether s descends from anc.
	under := func(s, anc *jaegerSpan) bool {
		for hops := 0; hops < len(tr.Spans); hops++ {
			p, ok := byID[s.parent()]
			if !ok {
				return false
			}
			if p == anc {
				return true
			}
			s = p
		}
		return false
	}
	for i := range tr.Spans {
		if s := &tr.Spans[i]; s != root && !under(s, root) {
			t.Errorf("span %s (%s) is not below perimeter.work", s.OperationName, s.SpanID)
		}
	}

	// The quickstart's eight calls, each a span of the SDK's runner below
	// the session, identified by its tool-use id.
	var names []string
	callIDs := map[string]bool{}
	for _, s := range tools {
		names = append(names, s.tag("gen_ai.tool.name"))
		if !strings.HasPrefix(s.OperationName, "anthropic.tool_use ") {
			t.Errorf("execute_tool span named %q, want anthropic.tool_use <tool>", s.OperationName)
		}
		if !under(s, sess) {
			t.Errorf("tool span %s (%s) is not below perimeter.session", s.OperationName, s.SpanID)
		}
		callID := s.tag("gen_ai.tool.call.id")
		if callID == "" || callIDs[callID] {
			t.Errorf("tool span %s gen_ai.tool.call.id = %q, want a distinct tool-use id", s.SpanID, callID)
		}
		callIDs[callID] = true
		if got := s.tag("perimeter.tool_use.id"); got != callID {
			t.Errorf("tool span %s perimeter.tool_use.id = %q, want its gen_ai.tool.call.id %q", s.SpanID, got, callID)
		}
		if got := s.tag("perimeter.session.id"); got != sessionID {
			t.Errorf("tool span %s perimeter.session.id = %q, want %s", s.SpanID, got, sessionID)
		}
		// Below each call: its policy decision and its run in the sandbox.
		var decide, exec []*jaegerSpan
		for _, c := range children[s.SpanID] {
			switch c.OperationName {
			case "perimeter.policy.decide":
				decide = append(decide, c)
			case "perimeter.sandbox.exec":
				exec = append(exec, c)
			}
		}
		if len(decide) != 1 || decide[0].tag("perimeter.tool_use.id") != callID {
			t.Errorf("tool span %s has %d perimeter.policy.decide children, want one for %s", s.SpanID, len(decide), callID)
		}
		if len(exec) != 1 || exec[0].tag("perimeter.sandbox.tool") != s.tag("gen_ai.tool.name") {
			t.Errorf("tool span %s has %d perimeter.sandbox.exec children, want one running %s", s.SpanID, len(exec), s.tag("gen_ai.tool.name"))
		}
	}
	sort.Strings(names)
	if diff := cmp.Diff([]string{"bash", "bash", "edit", "glob", "grep", "read", "write", "write"}, names); diff != "" {
		t.Errorf("tool spans by gen_ai.tool.name (-want +got):\n%s", diff)
	}

	// The resource, as Jaeger's process: OTEL_SERVICE_NAME and the
	// percent-decoded OTEL_RESOURCE_ATTRIBUTES.
	for i := range tr.Spans {
		s := &tr.Spans[i]
		p, ok := tr.Processes[s.ProcessID]
		if !ok {
			t.Errorf("span %s names no process", s.SpanID)
			continue
		}
		want := map[string]string{"service.name": "perimeter-e2e-jaeger", "tenant.id": "acme", "enduser.id": "alice@example.com"}
		got := map[string]string{"service.name": p.ServiceName, "tenant.id": tag(p.Tags, "tenant.id"), "enduser.id": tag(p.Tags, "enduser.id")}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("process of span %s (%s) (-want +got):\n%s", s.OperationName, s.SpanID, diff)
			break
		}
	}

	// Ids and decisions only: neither the script the agent wrote nor the
	// command it ran appears in any tag or event.
	for i := range tr.Spans {
		s := &tr.Spans[i]
		fields := slices.Clone(s.Tags)
		for _, l := range s.Logs {
			fields = append(fields, l.Fields...)
		}
		for _, kv := range fields {
			if v := fmt.Sprint(kv.Value); strings.Contains(v, "Hello from Perimeter") || strings.Contains(v, "echo ") {
				t.Errorf("span %s tag %s carries a payload: %q", s.OperationName, kv.Key, v)
			}
		}
	}
}
