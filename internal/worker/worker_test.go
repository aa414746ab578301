package worker

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/param"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/controlplane"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

func scenario(steps string) string {
	return "version: 1\nname: test\nresult_timeout: 60s\nsteps:\n" + steps
}

func TestWorkerCompletesScenarioAndStopsItsWorkItem(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: write
    input: {file_path: a.txt, content: "alpha\n"}
    expect: {is_error: false, contains: wrote}
  - tool: bash
    input: {command: "cat a.txt; pwd"}
    expect: {is_error: false, contains: alpha}
  - tool: bash
    input: {command: "exit 3"}
    expect: {is_error: true}
  - end: terminate
`)})
	spans := tracetest.NewSpanRecorder()
	opts := h.workerOptions(t.TempDir())
	opts.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	h.startWorker(opts)
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	waitFor(t, "work item stopped", func() bool { return h.workState(id) == "stopped" })

	// The workspace is the session's own directory under the state dir.
	if b, err := os.ReadFile(filepath.Join(opts.StateDir, "workspaces", id, "a.txt")); err != nil || string(b) != "alpha\n" {
		t.Errorf("workspace file = %q, %v", b, err)
	}
	// One span per work item, session and tool call, with ids, never payloads.
	waitFor(t, "work span ended", func() bool { return hasSpan(spans.Ended(), "perimeter.work") })
	var toolSpans int
	for _, s := range spans.Ended() {
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), "alpha") {
				t.Errorf("span %s carries a payload in %s", s.Name(), kv.Key)
			}
		}
		if attr(s, "gen_ai.operation.name") == "execute_tool" {
			toolSpans++
			if attr(s, "perimeter.session.id") != id || attr(s, "gen_ai.tool.call.id") == "" {
				t.Errorf("tool span %s lacks ids: %v", s.Name(), s.Attributes())
			}
		}
	}
	if toolSpans != 3 || !hasSpan(spans.Ended(), "perimeter.session") {
		t.Errorf("got %d tool spans (want 3), session span %v", toolSpans, hasSpan(spans.Ended(), "perimeter.session"))
	}
}

func hasSpan(spans []sdktrace.ReadOnlySpan, name string) bool {
	for _, s := range spans {
		if s.Name() == name {
			return true
		}
	}
	return false
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if kv.Key == attribute.Key(key) {
			return kv.Value.String()
		}
	}
	return ""
}

func TestWorkerAnswersUnknownToolWithAnErrorNamingIt(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": "custom_tools:\n  - name: not_declared_by_the_worker\n" + scenario(`
  - tool: summon_dragon
    unknown_tool: true
    input: {color: green}
    expect: {is_error: true, contains: summon_dragon}
  - custom_tool: not_declared_by_the_worker
    input: {}
    expect: {is_error: true, contains: not_declared_by_the_worker}
  - end: terminate
`)})
	h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	if !strings.Contains(h.logs.String(), "unknown tool") {
		t.Error("the unknown tool call was not logged")
	}
}

// recordingHook records what the gate showed it and may deny.
type recordingHook struct {
	mu    sync.Mutex
	seen  []string
	deny  string // tool name to deny
	calls []*Call
}

func (r *recordingHook) BeforeCall(_ context.Context, c *Call) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, "before "+c.Tool)
	r.calls = append(r.calls, c)
	if c.Tool == r.deny {
		return errors.New("blocked by the test policy")
	}
	return nil
}

func (r *recordingHook) AfterCall(_ context.Context, c *Call, o *Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, fmt.Sprintf("after %s error=%v", c.Tool, o.IsError))
}

func TestHookSeesEveryCallAndItsDenialIsWhatTheModelSees(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: write
    input: {file_path: kept.txt, content: "x"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "touch touched.txt"}
    expect: {is_error: true, contains: "blocked by the test policy"}
  - tool: glob
    input: {pattern: "*.txt"}
    expect: {is_error: false, contains: kept.txt, not_contains: touched.txt}
  - end: terminate
`)})
	hook := &recordingHook{deny: "bash"}
	opts := h.workerOptions(t.TempDir())
	opts.Hooks = []Hook{hook}
	h.startWorker(opts)
	id := h.newSession("s")
	h.waitScenario(id, "passed")

	hook.mu.Lock()
	defer hook.mu.Unlock()
	want := []string{"before write", "after write error=false", "before bash", "after bash error=true", "before glob", "after glob error=false"}
	if strings.Join(hook.seen, "|") != strings.Join(want, "|") {
		t.Errorf("hook saw %q, want %q", hook.seen, want)
	}
	for _, c := range hook.calls {
		sum := sha256.Sum256(c.Input)
		if c.ToolUseID == "" || c.SessionID != id || c.InputSHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("call %+v lacks ids or its input hash", c)
		}
	}
}

func TestJournalAnswersARecordedCallInsteadOfRunningItAgain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		session string // the session the record is for; "" is the call's own
		state   callState
		output  string
		wantErr bool
		want    string
	}{
		{"Finished", "", callFinished, "recorded output 42", false, "recorded output 42"},
		{"StartedButNeverFinished", "", callStarted, "", true, "stopped before it finished"},
		// The same id recorded for another session's call: its output is
		// not that session's to read, and the call is not run.
		{"ForAnotherSession", "sesn_other", callFinished, "the other session's output", false, "another session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "echo ran >> ran.txt; echo fresh"}
  - end: terminate
`)})
			id := h.newSession("s")
			use := h.waitEvent(id, isType("agent.tool_use"))

			// A previous worker's record of this very call.
			state := t.TempDir()
			j, err := openJournal(state)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := j.begin(context.Background(), record{ToolUseID: use["id"].(string), SessionID: cmp.Or(tc.session, id), WorkID: "work_prev", WorkerID: "w0", Tool: "bash", InputSHA256: "x", StartedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if tc.state == callFinished {
				if err := j.finish(context.Background(), use["id"].(string), tc.output, tc.wantErr, time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			j.close()

			h.startWorker(h.workerOptions(state))
			h.waitScenario(id, "passed")
			got := testenv.ResultTexts(h.events(id))
			if len(got) != 1 || !strings.Contains(got[0], tc.want) {
				t.Fatalf("results = %q, want one containing %q", got, tc.want)
			}
			if tc.session != "" && strings.Contains(got[0], tc.output) {
				t.Errorf("result %q carries the other session's output", got[0])
			}
			if _, err := os.Stat(filepath.Join(state, "workspaces", id, "ran.txt")); !os.IsNotExist(err) {
				t.Errorf("the recorded call ran again (ran.txt: %v)", err)
			}
		})
	}
}

func TestHeartbeatPreconditionFailureReleasesTheItemWithoutStoppingIt(t *testing.T) {
	h := newHarness(t, 2*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "sleep 30"}
  - end: terminate
`)})
	h.failBeats(func(n int) bool { return n >= 3 }, http.StatusPreconditionFailed, "invalid_request_error", "heartbeat_precondition_failed")
	w := h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	h.waitEvent(id, isType("agent.tool_use"))
	waitFor(t, "the lease to be lost", func() bool { return testutilCounter(w.metrics.leaseLost) == 1 })
	waitFor(t, "the session to end", func() bool { return testutilGauge(w.metrics.sessionsActive) == 0 })
	if n := h.count("POST", "/stop"); n != 0 {
		t.Errorf("worker sent %d stop requests after losing the lease; want none", n)
	}
	if st := h.workState(id); st == "stopped" {
		t.Errorf("work item state %q: a lost lease must not be stopped", st)
	}
	if !w.Ready() {
		t.Error("worker stopped polling after a lost lease")
	}
}

func TestOperatorForceStopEndsTheSessionWithinOneHeartbeat(t *testing.T) {
	h := newHarness(t, 2*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "sleep 30"}
  - end: terminate
`)})
	w := h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	h.waitEvent(id, isType("agent.tool_use"))
	waitFor(t, "the first heartbeat", func() bool { return h.count("POST", "/heartbeat") >= 1 })

	workID := h.workID(id)
	var raw *http.Response
	if _, err := h.client.Beta.Environments.Work.Stop(context.Background(), workID, anthropic.BetaEnvironmentWorkStopParams{
		EnvironmentID:                 controlplane.DefaultEnvironmentID,
		BetaSelfHostedWorkStopRequest: anthropic.BetaSelfHostedWorkStopRequestParam{Force: param.NewOpt(true)},
	}, option.WithResponseBodyInto(&raw)); err != nil {
		t.Fatal(err)
	}
	beatsAtStop := h.count("POST", "/heartbeat")
	waitFor(t, "the session to end", func() bool { return testutilGauge(w.metrics.sessionsActive) == 0 })
	if extra := h.count("POST", "/heartbeat") - beatsAtStop; extra > 1 {
		t.Errorf("the worker sent %d heartbeats after the stop; want at most one", extra)
	}
	if st := h.workState(id); st != "stopped" {
		t.Errorf("work item %s, want stopped", st)
	}
}

func (h *harness) workID(sessionID string) string {
	h.t.Helper()
	page, err := h.client.Beta.Environments.Work.List(context.Background(), controlplane.DefaultEnvironmentID,
		anthropic.BetaEnvironmentWorkListParams{}, option.WithHeaderDel("X-Api-Key"), option.WithAuthToken(h.envKey))
	if err != nil {
		h.t.Fatal(err)
	}
	for _, w := range page.Data {
		if w.Data.ID == sessionID {
			return w.ID
		}
	}
	h.t.Fatalf("no work item for %s", sessionID)
	return ""
}

func TestDroppedStreamsReconnectWithoutRunningACallTwice(t *testing.T) {
	var steps strings.Builder
	const n = 8
	for i := range n {
		fmt.Fprintf(&steps, "  - tool: bash\n    input: {command: \"echo %d >> count.txt; sleep 0.2\"}\n    expect: {is_error: false}\n", i)
	}
	steps.WriteString("  - tool: bash\n    input: {command: \"wc -l < count.txt\"}\n    expect: {regex: '^\\s*8\\s*$'}\n  - end: terminate\n")
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(steps.String())})
	h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	for i := 1; i <= 3; i++ {
		waitFor(t, "progress", func() bool { return len(testenv.ResultTexts(h.events(id))) >= i*2 })
		h.cp.DropStreams()
	}
	h.waitScenario(id, "passed")
}

func TestDrainLetsTheInFlightCallPostThenReleasesTheItem(t *testing.T) {
	h := newHarness(t, 2*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "touch started; sleep 1.5; echo first-finished"}
    expect: {is_error: false, contains: first-finished}
  - tool: bash
    input: {command: "echo second"}
    expect: {is_error: false, contains: second}
  - end: terminate
`)})
	state := t.TempDir()
	w1 := h.startWorker(h.workerOptions(state))
	id := h.newSession("s")
	started := filepath.Join(state, "workspaces", id, "started")
	waitFor(t, "the first call to start", func() bool { _, err := os.Stat(started); return err == nil })
	if err := w1.stop(t); err != nil {
		t.Fatalf("drain returned %v, want nil", err)
	}
	got := testenv.ResultTexts(h.events(id))
	if len(got) != 1 || !strings.Contains(got[0], "first-finished") {
		t.Fatalf("after drain, results = %q; want the in-flight call's result posted", got)
	}
	if n := h.count("POST", "/stop"); n != 0 {
		t.Errorf("drain sent %d stops; the item must be released, not stopped", n)
	}
	// Another worker sharing the state directory picks the session up once
	// the released lease lapses, and finishes it.
	h.startWorker(h.workerOptions(state))
	h.waitScenario(id, "passed")
}

func TestSandboxNeverSeesTheWorkersCredentials(t *testing.T) {
	canary := "canary-" + fmt.Sprint(time.Now().UnixNano())
	t.Setenv("ANTHROPIC_API_KEY", canary+"-api")
	t.Setenv("PERIMETER_TEST_CANARY", canary)
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(fmt.Sprintf(`
  - tool: bash
    input: {command: "env; cat /proc/self/environ /proc/$PPID/environ | tr '\\0' '\\n'"}
    expect: {is_error: false, contains: PATH=, not_contains: [%q, %q, %q]}
  - end: terminate
`, canary, "sk-ant-oat01-test", "sessions_token"))})
	h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	if strings.Contains(h.logs.String(), canary) {
		t.Error("a log line carries the canary")
	}
}

func TestRunFailsClearlyOnARejectedEnvironmentKey(t *testing.T) {
	h := newHarness(t, 5*time.Second, nil)
	opts := h.workerOptions(t.TempDir())
	opts.EnvironmentKey = "sk-ant-oat01-wrong"
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = w.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "ANTHROPIC_ENVIRONMENT_KEY") {
		t.Fatalf("Run = %v; want an error naming ANTHROPIC_ENVIRONMENT_KEY", err)
	}
}

func TestNewRefusesIncompleteOptions(t *testing.T) {
	base := Options{EnvironmentID: "env", EnvironmentKey: "k", Runtime: fakeRuntime{}, StateDir: t.TempDir()}
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"NoEnvironmentID", func(o *Options) { o.EnvironmentID = "" }, "ANTHROPIC_ENVIRONMENT_ID"},
		{"NoEnvironmentKey", func(o *Options) { o.EnvironmentKey = "" }, "ANTHROPIC_ENVIRONMENT_KEY"},
		{"NoRuntime", func(o *Options) { o.Runtime = nil }, "runtime"},
		{"BadCustomTool", func(o *Options) { o.CustomTools = []config.CustomTool{{Name: "bash", Command: "true"}} }, "bash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			_, err := New(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestCapTextKeepsTheTailWithAMarker(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"Short", "hello", 100, "hello"},
		{"Exact", strings.Repeat("a", 30), 30, strings.Repeat("a", 30)},
		{"Long", strings.Repeat("a", 50) + "TAIL", 30, truncatedMarker + strings.Repeat("a", 7) + "TAIL"},
		{"RuneBoundary", strings.Repeat("é", 40), 30, truncatedMarker + strings.Repeat("é", 5)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := capText(tc.in, tc.max); got != tc.want {
				t.Errorf("capText = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSessionsTokenFromSecret(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct{ name, secret, want string }{
		{"Unpadded", enc(`{"sessions_token":"tok"}`), "tok"},
		{"Padded", base64.URLEncoding.EncodeToString([]byte(`{"sessions_token":"tok2"}`)), "tok2"},
		{"Empty", "", ""},
		{"NotBase64", "%%%", ""},
		{"NotJSON", enc("nope"), ""},
		{"NoToken", enc(`{"auth":[]}`), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sessionsToken(tc.secret); got != tc.want {
				t.Errorf("sessionsToken = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestADeadSandboxIsReplacedForTheNextCallAndTheWorkspaceKept(t *testing.T) {
	for _, tc := range []struct {
		name      string
		noRestart bool
		after     string
	}{
		{"Restart", false, "expect: {is_error: false, contains: kept}"},
		{"NoRestart", true, "expect: {is_error: true, contains: sandbox failure}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: write
    input: {file_path: keep.txt, content: "kept"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "kill -9 $PPID; sleep 5"}
    expect: {is_error: true, contains: "sandbox failure: the sandbox exited (killed by signal SIGKILL)"}
  - tool: bash
    input: {command: "cat keep.txt"}
    ` + tc.after + `
  - end: terminate
`)})
			opts := h.workerOptions(t.TempDir())
			opts.NoSandboxRestart = tc.noRestart
			w := h.startWorker(opts)
			h.waitScenario(h.newSession("s"), "passed")
			if got := testutilCounterVec(w.metrics.sandboxFailures, "process"); got != 1 {
				t.Errorf("sandbox failures = %v, want 1", got)
			}
		})
	}
}

// holdingHook holds every call until released, as a pending approval does;
// release decides them with edit applied to the input.
type holdingHook struct {
	waiting chan string // tool-use ids as they start waiting
	release chan json.RawMessage
	mu      sync.Mutex
	calls   int
}

func (h *holdingHook) BeforeCall(ctx context.Context, c *Call) error {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	h.waiting <- c.ToolUseID
	select {
	case <-ctx.Done():
		return ctx.Err()
	case edit := <-h.release:
		if edit != nil {
			c.Input = edit
		}
		return nil
	}
}
func (h *holdingHook) AfterCall(context.Context, *Call, *Outcome) {}

// A call waiting for a decision when the worker drains is left unanswered
// and unjournalled, so the next worker asks again; its run uses the input
// the decision edited.
func TestADrainLeavesAWaitingCallToTheNextWorkerWhichAsksAgain(t *testing.T) {
	h := newHarness(t, 2*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "echo as-sent"}
    expect: {is_error: false, contains: as-edited}
  - end: terminate
`)})
	state := t.TempDir()
	hook1 := &holdingHook{waiting: make(chan string, 4), release: make(chan json.RawMessage)}
	opts := h.workerOptions(state)
	opts.Hooks = []Hook{hook1}
	opts.DrainTimeout = 20 * time.Second
	w1 := h.startWorker(opts)
	id := h.newSession("s")
	<-hook1.waiting
	start := time.Now()
	if err := w1.stop(t); err != nil {
		t.Fatalf("drain returned %v, want nil", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("drain took %s: a waiting call held it", d)
	}
	if got := testenv.ResultTexts(h.events(id)); len(got) != 0 {
		t.Fatalf("a waiting call was answered on drain: %q", got)
	}

	hook2 := &holdingHook{waiting: make(chan string, 4), release: make(chan json.RawMessage, 1)}
	hook2.release <- json.RawMessage(`{"command":"echo as-edited"}`)
	opts2 := h.workerOptions(state)
	opts2.Hooks = []Hook{hook2}
	h.startWorker(opts2)
	h.waitScenario(id, "passed")
	if hook2.calls != 1 {
		t.Errorf("the next worker asked %d times, want 1", hook2.calls)
	}
}

// Hooks see the platform's evaluated_permission of each call ("allow", or
// "ask" for one a user.tool_confirmation allowed); a denied call never
// reaches them.
func TestHooksSeeThePlatformsPermission(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "echo plain"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "echo confirmed"}
    permission: ask
    confirm: allow
    expect: {is_error: false}
  - tool: bash
    input: {command: "echo never"}
    permission: deny
  - tool: read
    input: {file_path: nothing.txt}
    permission: allow
  - end: terminate
`)})
	hook := &recordingHook{}
	opts := h.workerOptions(t.TempDir())
	opts.Hooks = []Hook{hook}
	h.startWorker(opts)
	h.waitScenario(h.newSession("s"), "passed")
	hook.mu.Lock()
	defer hook.mu.Unlock()
	var got []string
	for _, c := range hook.calls {
		got = append(got, c.Tool+"="+c.Platform)
	}
	if want := []string{"bash=allow", "bash=ask", "read=allow"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("hooks saw %q, want %q", got, want)
	}
}

// A heartbeat that fails transiently is retried soon, not one interval
// later: two intervals are a whole lease, so a short run of 5xx answers
// would otherwise cost the session its lease.
func TestATransientHeartbeatFailureKeepsTheLease(t *testing.T) {
	h := newHarness(t, 4*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "sleep 6; echo done"}
    expect: {is_error: false, contains: done}
  - end: terminate
`)})
	h.failBeats(func(n int) bool { return n == 2 || n == 3 }, http.StatusServiceUnavailable, "overloaded_error", "")
	w := h.startWorker(h.workerOptions(t.TempDir()))
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	if n := testutilCounter(w.metrics.leaseLost); n != 0 {
		t.Errorf("%v leases lost after a transient heartbeat failure; want none", n)
	}
}
