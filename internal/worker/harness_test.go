package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/perimeterhq/perimeter/internal/controlplane"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// harness is an embedded control plane on 127.0.0.1 with a recording,
// fault-injecting front, plus an operator client.
type harness struct {
	t       *testing.T
	cp      *controlplane.Server
	url     string
	apiKey  string
	envKey  string
	client  anthropic.Client // operator (API key)
	scenDir string
	logs    *testenv.Buffer

	mu       sync.Mutex // guards requests and fault
	requests []string   // "METHOD path" of every request
	fault    func(w http.ResponseWriter, r *http.Request) bool
}

func newHarness(t *testing.T, ttl time.Duration, scenarios map[string]string) *harness {
	t.Helper()
	h := &harness{t: t, apiKey: "sk-ant-api-test", envKey: "sk-ant-oat01-test", scenDir: t.TempDir(), logs: &testenv.Buffer{}}
	for name, body := range scenarios {
		if err := os.WriteFile(filepath.Join(h.scenDir, name+".yaml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := controlplane.New(controlplane.Options{
		APIKey: h.apiKey, EnvironmentKey: h.envKey, ScenarioDir: h.scenDir, TTL: ttl,
		Database: filepath.Join(t.TempDir(), "cp.db"),
		Logger:   slog.New(slog.NewTextHandler(h.logs, nil)).With("component", "controlplane"),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.cp = cp
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.requests = append(h.requests, r.Method+" "+r.URL.Path)
		fault := h.fault
		h.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		cp.Handler().ServeHTTP(w, r)
	}))
	h.url = srv.URL
	h.client = anthropic.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey(h.apiKey))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		cp.Close()
		if t.Failed() {
			t.Logf("logs:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *harness) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fault = f
}

// failBeats answers the heartbeats that fail picks (counting from 1) with
// an API error, and lets the others through.
func (h *harness) failBeats(fail func(n int) bool, status int, typ, msg string) {
	var beats atomic.Int32
	h.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/heartbeat") || !fail(int(beats.Add(1))) {
			return false
		}
		apiError(w, status, typ, msg)
		return true
	})
}

// count returns how many recorded requests match method and a path suffix.
func (h *harness) count(method, suffix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.requests {
		if strings.HasPrefix(r, method+" ") && strings.HasSuffix(r, suffix) {
			n++
		}
	}
	return n
}

// workerOptions are the defaults tests start from: the process runtime on
// the real perimeter binary, short timeouts.
func (h *harness) workerOptions(stateDir string) Options {
	return Options{
		Client:         anthropic.NewClient(option.WithBaseURL(h.url), option.WithMaxRetries(1)),
		EnvironmentID:  controlplane.DefaultEnvironmentID,
		EnvironmentKey: h.envKey,
		Runtime:        process.New(process.Options{Binary: testenv.Binary(h.t)}),
		StateDir:       stateDir,
		MaxIdle:        2 * time.Second,
		ToolTimeout:    20 * time.Second,
		DrainTimeout:   10 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(h.logs, nil)).With("component", "worker"),
	}
}

// runningWorker is a Worker.Run in the background.
type runningWorker struct {
	*Worker
	cancel context.CancelFunc
	done   chan error
}

func (h *harness) startWorker(opts Options) *runningWorker {
	h.t.Helper()
	w, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{Worker: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	h.t.Cleanup(func() { rw.stop(h.t); w.Close() })
	return rw
}

// stop cancels Run (a SIGTERM) and returns its error.
func (rw *runningWorker) stop(t *testing.T) error {
	rw.cancel()
	select {
	case err, ok := <-rw.done:
		if ok {
			close(rw.done)
			return err
		}
		return nil
	case <-time.After(60 * time.Second):
		t.Fatal("worker did not stop within 60s")
		return nil
	}
}

func (h *harness) newSession(agent string) string {
	h.t.Helper()
	return h.newSessionWith(agent, nil)
}

// newSessionWith creates a session of agent_<agent> with metadata.
func (h *harness) newSessionWith(agent string, metadata map[string]string) string {
	h.t.Helper()
	s, err := h.client.Beta.Sessions.New(context.Background(), anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: anthropic.String("agent_" + agent)},
		EnvironmentID: controlplane.DefaultEnvironmentID,
		Metadata:      metadata,
	})
	if err != nil {
		h.t.Fatalf("create session: %v", err)
	}
	return s.ID
}

// scenarioOutcome is the session's scenario object.
type scenarioOutcome struct {
	Status   string `json:"status"`
	Failures []struct {
		Step    int    `json:"step"`
		Message string `json:"message"`
	} `json:"failures"`
}

func (h *harness) outcome(sessionID string) scenarioOutcome {
	h.t.Helper()
	s, err := h.client.Beta.Sessions.Get(context.Background(), sessionID, anthropic.BetaSessionGetParams{})
	if err != nil {
		h.t.Fatalf("get session: %v", err)
	}
	var v struct {
		Scenario scenarioOutcome `json:"scenario"`
	}
	if err := json.Unmarshal([]byte(s.RawJSON()), &v); err != nil {
		h.t.Fatal(err)
	}
	return v.Scenario
}

// waitScenario waits for the session's scenario to finish and fails the test
// unless it ended with want.
func (h *harness) waitScenario(sessionID, want string) {
	h.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		o := h.outcome(sessionID)
		if o.Status != "running" && o.Status != "" {
			if o.Status != want {
				h.t.Fatalf("scenario %s, want %s: %+v", o.Status, want, o.Failures)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("scenario of %s did not finish within 90s: %+v", sessionID, h.outcome(sessionID))
}

// events returns the session's event log.
func (h *harness) events(sessionID string) []map[string]any {
	h.t.Helper()
	page, err := h.client.Beta.Sessions.Events.List(context.Background(), sessionID, anthropic.BetaSessionEventListParams{Limit: anthropic.Int(1000)})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []map[string]any
	for _, e := range page.Data {
		var m map[string]any
		if err := json.Unmarshal([]byte(e.RawJSON()), &m); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// waitEvent waits until the session has an event for which match is true.
func (h *harness) waitEvent(sessionID string, match func(map[string]any) bool) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range h.events(sessionID) {
			if match(e) {
				return e
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	h.t.Fatalf("no matching event in session %s", sessionID)
	return nil
}

func isType(t string) func(map[string]any) bool {
	return func(e map[string]any) bool { return e["type"] == t }
}

// workState returns the state of the session's newest work item.
func (h *harness) workState(sessionID string) string {
	h.t.Helper()
	page, err := h.client.Beta.Environments.Work.List(context.Background(), controlplane.DefaultEnvironmentID,
		anthropic.BetaEnvironmentWorkListParams{}, option.WithHeaderDel("X-Api-Key"), option.WithAuthToken(h.envKey))
	if err != nil {
		h.t.Fatal(err)
	}
	state := ""
	for _, w := range page.Data {
		if w.Data.ID == sessionID {
			state = string(w.State)
		}
	}
	return state
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiError writes an API error body.
func apiError(w http.ResponseWriter, status int, typ, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": "injected by test", "details": map[string]any{"error_code": code}}}
	_ = json.NewEncoder(w).Encode(body)
}
