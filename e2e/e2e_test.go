package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/lib/environments"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestShippedScenariosPassThroughTheRealBinaries runs every example scenario
// against `perimeter controlplane` and `perimeter worker`, answering the
// interactive ones as an operator would, then checks the admin endpoints and
// a clean SIGTERM shutdown of both processes.
func TestShippedScenariosPassThroughTheRealBinaries(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	w := startWorker(t, cp.url, t.TempDir())
	op := operator(cp.url)

	ids := map[string]string{}
	for _, name := range []string{"quickstart", "errors", "custom-tools", "confirmation", "conversation"} {
		ids[name] = newSession(t, op, name)
	}

	// confirmation: the operator approves the call left to them.
	go func() {
		id := ids["confirmation"]
		e := waitEvent(t, op, id, func(e map[string]any) bool {
			in, _ := e["input"].(map[string]any)
			return e["type"] == "agent.tool_use" && e["evaluated_permission"] == "ask" && in["file_path"] == "notes.txt"
		})
		send(t, op, id, anthropic.BetaManagedAgentsEventParamsUnion{OfUserToolConfirmation: &anthropic.BetaManagedAgentsUserToolConfirmationEventParams{
			ToolUseID: e["id"].(string), Result: anthropic.BetaManagedAgentsUserToolConfirmationEventParamsResultAllow,
		}})
	}()
	// conversation: two user turns.
	say(t, op, ids["conversation"], "please prepare the release")
	waitEvent(t, op, ids["conversation"], func(e map[string]any) bool {
		return e["type"] == "agent.message" && strings.Contains(testenv.BlockText(e["content"]), "release notes file")
	})
	say(t, op, ids["conversation"], "call it NOTES.md")

	for name, id := range ids {
		t.Run(name, func(t *testing.T) { waitPassed(t, op, id) })
	}

	if code, _ := httpGet(t, w.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := httpGet(t, w.admin+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d while polling", code)
	}
	_, metrics := httpGet(t, w.admin+"/metrics")
	for _, want := range []string{`perimeter_tool_calls_total{outcome="ok",tool="bash"}`, `perimeter_tool_calls_total{outcome="unknown_tool",tool="unknown"} 1`, `perimeter_work_items_total{result="completed"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	w.signal(sigterm)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Errorf("worker exited %d on SIGTERM, want 0", code)
	}
	if !strings.Contains(w.out.String(), "worker stopped") {
		t.Error("worker did not log a clean stop")
	}
	cp.signal(sigterm)
	if code := cp.wait(30 * time.Second); code != 0 {
		t.Errorf("control plane exited %d on SIGTERM, want 0", code)
	}
}

func send(t *testing.T, c anthropic.Client, id string, ev anthropic.BetaManagedAgentsEventParamsUnion) {
	t.Helper()
	if _, err := c.Beta.Sessions.Events.Send(context.Background(), id, anthropic.BetaSessionEventSendParams{
		Events: []anthropic.BetaManagedAgentsEventParamsUnion{ev},
	}); err != nil {
		t.Errorf("send event: %v", err)
	}
}

func say(t *testing.T, c anthropic.Client, id, text string) {
	send(t, c, id, anthropic.BetaManagedAgentsEventParamsUnion{OfUserMessage: &anthropic.BetaManagedAgentsUserMessageEventParams{
		Content: []anthropic.BetaManagedAgentsUserMessageEventParamsContentUnion{{OfText: &anthropic.BetaManagedAgentsTextBlockParam{Text: text}}},
	}})
}

// holdingProxy forwards to the control plane but holds the first tool
// result that matches, never delivering it.
type holdingProxy struct {
	srv  *http.Server
	url  string
	held chan struct{}
	once sync.Once
}

func newHoldingProxy(t *testing.T, target string, match func(body []byte) bool) *holdingProxy {
	t.Helper()
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	p := &holdingProxy{held: make(chan struct{})}
	addr := freeAddr(t)
	p.url = "http://" + addr
	p.srv = &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/events") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			if match(body) {
				p.once.Do(func() { close(p.held) })
				<-r.Context().Done()
				return
			}
		}
		rp.ServeHTTP(w, r)
	})}
	go p.srv.ListenAndServe()
	t.Cleanup(func() { p.srv.Close() })
	waitDial(t, addr)
	return p
}

func waitDial(t *testing.T, addr string) {
	for range 100 {
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never came up", addr)
}

// TestAKilledWorkersUnpostedResultIsAnsweredFromTheJournal kills a worker
// after a call ran but before its result reached the control plane; the next
// worker (sharing the state directory) posts the recorded result instead of
// running the call again, and a call whose result was posted never runs again.
func TestAKilledWorkersUnpostedResultIsAnsweredFromTheJournal(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	proxy := newHoldingProxy(t, cp.url, func(body []byte) bool {
		return bytes.Contains(body, []byte("user.tool_result")) && bytes.Contains(body, []byte("value "))
	})
	state := t.TempDir()
	w1 := startWorker(t, proxy.url, state)
	id := newSession(t, op, "e2e-journal")
	select {
	case <-proxy.held:
	case <-time.After(60 * time.Second):
		t.Fatal("the second call's result was never posted")
	}
	w1.signal(syscall.SIGKILL)
	w1.wait(10 * time.Second)

	startWorker(t, cp.url, state)
	waitPassed(t, op, id)

	ran := filepath.Join(state, "workspaces", id, "ran.txt")
	b, err := os.ReadFile(ran)
	if err != nil {
		t.Fatal(err)
	}
	got := testenv.ResultTexts(events(t, op, id))
	m := regexp.MustCompile(`value ([0-9a-f]{16})`).FindStringSubmatch(strings.Join(got, "\n"))
	if m == nil || string(b) != "zero\none "+m[1]+"\n" {
		t.Fatalf("ran.txt = %q, results = %q: each call must have run exactly once and the posted value be the one that ran", b, got)
	}
}

// TestAWorkerKilledMidCallDoesNotRunItAgain kills a worker while a call
// runs; the next worker answers the call with an error saying so instead of
// running it blind a second time.
func TestAWorkerKilledMidCallDoesNotRunItAgain(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w1 := startWorker(t, cp.url, state)
	id := newSession(t, op, "e2e-killed")
	ran := filepath.Join(state, "workspaces", id, "ran.txt")
	waitFileContains(t, ran, "start")
	w1.signal(syscall.SIGKILL)
	w1.wait(10 * time.Second)

	startWorker(t, cp.url, state)
	waitPassed(t, op, id)
	if n, m := countLines(t, ran, "zero"), countLines(t, ran, "start"); n != 1 || m != 1 {
		t.Errorf("zero ran %d times, start %d times; want once each", n, m)
	}
}

// TestASessionSurvivesAControlPlaneRestart restarts the control plane on
// the same address and database while a call runs.
func TestASessionSurvivesAControlPlaneRestart(t *testing.T) {
	dir := t.TempDir()
	cp := startControlPlane(t, dir, freeAddr(t))
	op := operator(cp.url)
	startWorker(t, cp.url, t.TempDir())
	id := newSession(t, op, "e2e-slow")
	waitEvent(t, op, id, func(e map[string]any) bool { return e["type"] == "agent.tool_use" })

	cp.signal(sigterm)
	if code := cp.wait(30 * time.Second); code != 0 {
		t.Fatalf("control plane exited %d on SIGTERM", code)
	}
	cp2 := startControlPlane(t, dir, cp.listen)
	waitPassed(t, operator(cp2.url), id)
}

// TestSIGTERMDrainsAndAnotherWorkerFinishes sends SIGTERM while a call
// runs: the call finishes and posts, the worker exits 0, and the released
// session is finished by another worker.
func TestSIGTERMDrainsAndAnotherWorkerFinishes(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w1 := startWorker(t, cp.url, state)
	id := newSession(t, op, "e2e-slow")
	waitFileContains(t, filepath.Join(state, "workspaces", id, "started"), "")
	w1.signal(sigterm)
	if code := w1.wait(30 * time.Second); code != 0 {
		t.Fatalf("worker exited %d on SIGTERM, want 0", code)
	}
	if got := testenv.ResultTexts(events(t, op, id)); len(got) != 1 || !strings.Contains(got[0], "one") {
		t.Fatalf("results after drain = %q; want the in-flight call's", got)
	}
	startWorker(t, cp.url, state)
	waitPassed(t, op, id)
}

// TestTheUnmodifiedSDKWorkerCompletesScenariosOnTheRealControlPlane is the
// conformance check against the binary: the SDK's own EnvironmentWorker
// serves a session of `perimeter controlplane`.
func TestTheUnmodifiedSDKWorkerCompletesScenariosOnTheRealControlPlane(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	idle := 2 * time.Second
	w := environments.NewEnvironmentWorker(anthropic.NewClient(option.WithBaseURL(cp.url)), environments.EnvironmentWorkerOptions{
		EnvironmentID: envID, EnvironmentKey: envKey, Workdir: t.TempDir(), MaxIdle: &idle,
		ToolsFunc: func(env *agenttoolset.AgentToolContext) []anthropic.BetaTool {
			return agenttoolset.BetaAgentToolset20260401(env)
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitPassed(t, op, newSession(t, op, "quickstart"))
	waitPassed(t, op, newSession(t, op, "e2e-slow"))
}

func TestWorkerRefusesTheProcessRuntimeUnlessAllowed(t *testing.T) {
	cmd := exec.Command(testenv.Binary(t), "worker", "--runtime", "process", "--state-dir", t.TempDir(), "--admin-listen", "off")
	// Everything else a worker needs is there: the refusal is the runtime's.
	cmd.Env = append(os.Environ(), "ANTHROPIC_ENVIRONMENT_ID="+envID, "ANTHROPIC_ENVIRONMENT_KEY="+envKey, "ANTHROPIC_BASE_URL=http://127.0.0.1:1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--insecure-process-runtime") {
		t.Fatalf("worker without an isolating runtime: err=%v, output:\n%s", err, out)
	}
}

func TestDemoExitsZeroOnlyWhenEveryExpectationHolds(t *testing.T) {
	out, err := exec.Command(testenv.Binary(t), "demo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASSED") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	out, err = exec.Command(testenv.Binary(t), "demo", "--scenarios", "testdata/scenarios", "--scenario", "e2e-fails").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "FAILED") || !strings.Contains(string(out), "oranges") {
		t.Fatalf("failing demo: err=%v\n%s", err, out)
	}
}

func TestHelpTeaches(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"perimeter demo", "worker", "controlplane"}},
		{[]string{"worker", "--help"}, []string{"ANTHROPIC_ENVIRONMENT_KEY", "--max-sessions", "SIGTERM"}},
		{[]string{"controlplane", "--help"}, []string{"--scenarios", "--ttl"}},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			out, err := exec.Command(testenv.Binary(t), tc.args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("%v output lacks %q", tc.args, w)
				}
			}
		})
	}
}

// waitFileContains waits until the file at path exists and contains want:
// the sign, from inside the workspace, that a call has started.
func waitFileContains(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never held %q: the call never started", path, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
