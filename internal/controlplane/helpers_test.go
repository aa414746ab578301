package controlplane

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testAPIKey = "sk-ant-api-test-0123456789"
	testEnvKey = "sk-ant-oat01-test-0123456789"
)

// logBuffer collects a test's log lines and prints them only if it fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newTestLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// testCP is a control plane served on 127.0.0.1 for one test.
type testCP struct {
	t   *testing.T
	srv *Server
	ts  *httptest.Server
	log *logBuffer
	url string
}

// scenarioDir writes scenario files into a new temporary directory.
func scenarioDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func examplesDir() string { return filepath.Join("..", "..", "examples", "scenarios") }

// startCP starts a control plane; opts may set Database, ScenarioDir, TTL.
func startCP(t *testing.T, opts Options) *testCP {
	t.Helper()
	log, buf := newTestLogger(t)
	opts.APIKey, opts.EnvironmentKey, opts.Logger = testAPIKey, testEnvKey, log
	if opts.TTL == 0 {
		opts.TTL = 3 * time.Second
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	// Cleanups run last-in first-out: the server ends its streams before the
	// listener waits for them.
	t.Cleanup(ts.Close)
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &testCP{t: t, srv: srv, ts: ts, log: buf, url: ts.URL}
}

// cred is a way to authenticate a raw request.
type cred struct{ header, value string }

var (
	noCred     = cred{}
	apiKeyCred = cred{"X-Api-Key", testAPIKey}
	apiBearer  = cred{"Authorization", "Bearer " + testAPIKey}
	envCred    = cred{"Authorization", "Bearer " + testEnvKey}
	wrongCred  = cred{"Authorization", "Bearer sk-ant-wrong"}
)

func tokenCred(token string) cred { return cred{"Authorization", "Bearer " + token} }

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not a JSON object: %v\n%s", r.status, err, r.body)
	}
	return m
}

// errorType is error.type of an error response.
func (r response) errorType(t *testing.T) string {
	t.Helper()
	m := r.json(t)
	if m["type"] != "error" {
		t.Fatalf("not an error body: %s", r.body)
	}
	return m["error"].(map[string]any)["type"].(string)
}

func (r response) errorMessage(t *testing.T) string {
	t.Helper()
	return r.json(t)["error"].(map[string]any)["message"].(string)
}

// do sends a raw request; body may be nil, a string or a value to encode.
func (c *testCP) do(method, path string, cr cred, body any) response {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if cr.header != "" {
		req.Header.Set(cr.header, cr.value)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// mustDo is do that fails the test unless the status is want.
func (c *testCP) mustDo(want int, method, path string, cr cred, body any) response {
	c.t.Helper()
	r := c.do(method, path, cr, body)
	if r.status != want {
		c.t.Fatalf("%s %s = %d, want %d\n%s", method, path, r.status, want, r.body)
	}
	return r
}

// createSession creates a session of agent in env_default.
func (c *testCP) createSession(agent string, extra map[string]any) map[string]any {
	c.t.Helper()
	body := map[string]any{"agent": agent, "environment_id": DefaultEnvironmentID}
	for k, v := range extra {
		body[k] = v
	}
	return c.mustDo(200, "POST", "/v1/sessions", apiKeyCred, body).json(c.t)
}

// poll polls env_default without blocking and returns the item, nil if none.
func (c *testCP) poll(query string) map[string]any {
	c.t.Helper()
	r := c.mustDo(200, "GET", "/v1/environments/env_default/work/poll"+query, envCred, nil)
	if string(r.body) == "null" {
		return nil
	}
	return r.json(c.t)
}

// claim polls and acks the next item and returns it with its sessions token.
func (c *testCP) claim() (map[string]any, string) {
	c.t.Helper()
	item := c.poll("")
	if item == nil {
		c.t.Fatal("no work to claim")
	}
	c.mustDo(200, "POST", "/v1/environments/env_default/work/"+item["id"].(string)+"/ack", envCred, nil)
	return item, sessionsToken(c.t, item["secret"].(string))
}

func (c *testCP) session(id string) map[string]any {
	c.t.Helper()
	return c.mustDo(200, "GET", "/v1/sessions/"+id, apiKeyCred, nil).json(c.t)
}

// events returns a session's whole log, oldest first, following next_page.
func (c *testCP) events(id string) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	page := ""
	for {
		r := c.mustDo(200, "GET", "/v1/sessions/"+id+"/events?limit=1000"+page, apiKeyCred, nil).json(c.t)
		for _, e := range r["data"].([]any) {
			out = append(out, e.(map[string]any))
		}
		next, _ := r["next_page"].(string)
		if next == "" {
			return out
		}
		page = "&page=" + next
	}
}

func (c *testCP) work(id string) map[string]any {
	c.t.Helper()
	return c.mustDo(200, "GET", "/v1/environments/env_default/work/"+id, apiKeyCred, nil).json(c.t)
}

// lastOfType returns the last event of a type, failing if there is none.
func lastOfType(t *testing.T, evs []map[string]any, typ string) map[string]any {
	t.Helper()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i]["type"] == typ {
			return evs[i]
		}
	}
	t.Fatalf("no %s event in %v", typ, types(evs))
	return nil
}

func types(evs []map[string]any) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e["type"].(string)
	}
	return out
}

// scenarioOf returns the session's scenario object.
func scenarioOf(sess map[string]any) map[string]any { return sess["scenario"].(map[string]any) }

// eventually retries cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func textResult(id, text string, isError bool) map[string]any {
	return map[string]any{"type": "user.tool_result", "tool_use_id": id, "is_error": isError,
		"content": []any{map[string]any{"type": "text", "text": text}}}
}

func userMessage(text string) map[string]any {
	return map[string]any{"type": "user.message", "content": []any{map[string]any{"type": "text", "text": text}}}
}

func sendEvents(events ...map[string]any) map[string]any {
	list := make([]any, len(events))
	for i, e := range events {
		list[i] = e
	}
	return map[string]any{"events": list}
}
