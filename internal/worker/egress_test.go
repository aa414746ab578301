package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// fetchRuntime wraps a runtime: a bash call "fetch URL" is answered by an
// HTTP GET through the sandbox's egress socket, as a process in the sandbox
// would make it through sandboxd's bridge, with the Authorization header
// built from the sandbox's API_TOKEN. It records the specs it was given.
type fetchRuntime struct {
	sandbox.Runtime
	mu    sync.Mutex
	specs []sandbox.Spec
}

func (r *fetchRuntime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	r.mu.Lock()
	r.specs = append(r.specs, spec)
	r.mu.Unlock()
	sb, err := r.Runtime.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &fetchSandbox{Sandbox: sb, spec: spec}, nil
}

type fetchSandbox struct {
	sandbox.Sandbox
	spec sandbox.Spec
}

func (s *fetchSandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	var in struct{ Command string }
	_ = json.Unmarshal(call.Input, &in)
	target, ok := strings.CutPrefix(in.Command, "fetch ")
	if call.Tool != "bash" || !ok {
		return s.Sandbox.Exec(ctx, call)
	}
	if s.spec.Egress == nil {
		return sandbox.Result{Text: "no egress", IsError: true}, nil
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: sandbox.EgressListen}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.spec.Egress.Socket)
		},
	}}
	req, _ := http.NewRequestWithContext(ctx, "GET", target, nil)
	req.Header.Set("Authorization", "Bearer "+s.spec.Env["API_TOKEN"])
	resp, err := client.Do(req)
	if err != nil {
		return sandbox.Result{Text: err.Error(), IsError: true}, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return sandbox.Result{Text: fmt.Sprintf("%d %s", resp.StatusCode, body)}, nil
}

func TestSessionEgressIsRecordedAgainstItsToolCall(t *testing.T) {
	const secret = "real-secret-value-0042"
	var seen []string
	var seenMu sync.Mutex
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenMu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		seenMu.Unlock()
		fmt.Fprintf(w, "hello, %s", r.Header.Get("Authorization"))
	}))
	defer up.Close()
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	portN, _ := strconv.Atoi(port)

	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "fetch http://127.0.0.1:` + port + `/x"}
    expect: {is_error: false, contains: "200 hello, Bearer", not_contains: "` + secret + `"}
  - tool: bash
    input: {command: "fetch http://blocked.test/"}
    expect: {is_error: false, contains: ["403", "blocked.test"]}
  - tool: bash
    input: {command: "fetch http://made-up-7.wild.test/"}
    expect: {is_error: false, contains: ["403", "allows POST only"]}
  - end: terminate
`)})
	m, err := egress.NewManager(egress.ManagerOptions{
		Dir: testenv.ShortDir(t),
		Config: func() egress.Config {
			return egress.Config{
				Rules: []egress.Rule{
					{Name: "upstream", Hosts: []string{"127.0.0.1"}, Ports: []int{portN}},
					{Name: "wild", Hosts: []string{"*.wild.test"}, Methods: []string{"POST"}},
				},
				Credentials: []egress.EnvCredential{{
					Credential: egress.Credential{Name: "api", Hosts: []string{"127.0.0.1"}}, Env: "API_TOKEN",
				}},
			}
		},
		Secrets: secretsMap{"api": secret},
	})
	if err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewSpanRecorder()
	opts := h.workerOptions(t.TempDir())
	rt := &fetchRuntime{Runtime: opts.Runtime}
	opts.Runtime = rt
	opts.Egress = m
	opts.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	opts.Metrics = NewMetrics(nil)
	rec := &recordingAudit{}
	opts.Audit = rec
	h.startWorker(opts)
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	waitFor(t, "work span ended", func() bool { return hasSpan(spans.Ended(), "perimeter.work") })

	seenMu.Lock()
	if len(seen) != 1 || seen[0] != "Bearer "+secret {
		t.Errorf("the upstream received %q, want the real value once", seen)
	}
	seenMu.Unlock()
	rt.mu.Lock()
	spec := rt.specs[0]
	rt.mu.Unlock()
	if spec.Egress == nil || !strings.HasPrefix(spec.Env["API_TOKEN"], egress.PlaceholderPrefix+"api:") || spec.Env["HTTPS_PROXY"] == "" {
		t.Errorf("the sandbox spec: egress %+v, env %v", spec.Egress, spec.Env)
	}
	if _, err := os.Stat(spec.Egress.Socket); !os.IsNotExist(err) {
		t.Errorf("the session's socket outlived it: %v", err)
	}

	// Each request is a span under the tool call that made it.
	callSpans := map[string]sdktrace.ReadOnlySpan{} // by span id
	var egressSpans []sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if attr(s, "gen_ai.operation.name") == "execute_tool" {
			callSpans[s.SpanContext().SpanID().String()] = s
		}
		if strings.HasPrefix(s.Name(), "egress ") {
			egressSpans = append(egressSpans, s)
		}
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), secret) {
				t.Errorf("span %s carries the secret in %s", s.Name(), kv.Key)
			}
		}
	}
	if len(egressSpans) != 3 {
		t.Fatalf("%d egress spans, want 3", len(egressSpans))
	}
	for _, s := range egressSpans {
		call, ok := callSpans[s.Parent().SpanID().String()]
		if !ok {
			t.Errorf("egress span %s is not under a tool call span", s.Name())
			continue
		}
		if attr(s, "perimeter.tool_use.id") != attr(call, "gen_ai.tool.call.id") {
			t.Errorf("egress span %s names call %q, its parent is %q", s.Name(), attr(s, "perimeter.tool_use.id"), attr(call, "gen_ai.tool.call.id"))
		}
	}
	if ev := egressSpans[0].Events(); len(ev) != 1 || ev[0].Name != "perimeter.credential_injected" {
		t.Errorf("the credential's request has events %v, want one credential_injected", ev)
	}
	for _, s := range egressSpans[1:] {
		if v := attr(s, "perimeter.egress.verdict"); v != "blocked" {
			t.Errorf("the blocked request %s: verdict = %q", s.Name(), v)
		}
	}
	if got := egressSpans[2].Name(); got != "egress GET made-up-7.wild.test" {
		t.Errorf("the wildcard host's span is %q, want it named for the host", got)
	}

	// The audit records of the requests are in the request's span, so
	// their OpenTelemetry log records join the call's trace.
	egressSpanIDs := map[string]bool{}
	for _, s := range egressSpans {
		egressSpanIDs[s.SpanContext().SpanID().String()] = true
	}
	rec.mu.Lock()
	kinds := map[audit.Kind]int{}
	for i, r := range rec.records {
		d, _ := r.Data.(audit.Data)
		switch d.(type) {
		case audit.EgressRequest, audit.EgressBlocked, audit.CredentialInjected:
			kinds[d.Kind()]++
			if sc := rec.spans[i]; !egressSpanIDs[sc.SpanID().String()] {
				t.Errorf("the %s record of %s was appended in span %s, not in its request's span", d.Kind(), r.ToolUseID, sc.SpanID())
			}
		}
	}
	rec.mu.Unlock()
	if kinds[audit.KindEgressRequest] != 1 || kinds[audit.KindEgressBlocked] != 2 || kinds[audit.KindCredentialInjected] != 1 {
		t.Errorf("egress audit records by kind: %v; want one request, two blocked, one injection", kinds)
	}

	// A host no rule names is counted as "unlisted", and one a wildcard
	// matches under the wildcard: the sandbox picks such names, and must
	// not be able to add series at will.
	mt := opts.Metrics
	mfs, err := mt.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == "blocked.test" || l.GetValue() == "made-up-7.wild.test" {
					t.Errorf("metric %s has a series for a host the sandbox chose: %v", mf.GetName(), m.GetLabel())
				}
			}
		}
	}
	if got := testutilCounterVec(mt.egressRequests, "127.0.0.1", "allowed"); got != 1 {
		t.Errorf("allowed requests = %v", got)
	}
	if got := testutilCounterVec(mt.egressRequests, "unlisted", "blocked"); got != 1 {
		t.Errorf("blocked requests to unlisted hosts = %v", got)
	}
	if got := testutilCounterVec(mt.egressRequests, "*.wild.test", "blocked"); got != 1 {
		t.Errorf("blocked requests to hosts under *.wild.test = %v", got)
	}
	if got := testutilCounterVec(mt.injections, "api"); got != 1 {
		t.Errorf("injections = %v", got)
	}
	logs := h.logs.String()
	if strings.Contains(logs, secret) {
		t.Error("the log holds the secret")
	}
	for _, want := range []string{`msg="egress request"`, `credentials=[api]`, `msg="egress blocked"`, `host=blocked.test`, `host=made-up-7.wild.test`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
}

type secretsMap map[string]string

func (s secretsMap) Get(_ context.Context, name string) ([]byte, error) {
	return []byte(s[name]), nil
}
