package controlplane

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const oneCallScenario = `version: 1
name: one call
result_timeout: 1m
steps:
  - tool: bash
    input: {command: echo hi}
    expect: {is_error: false, contains: hi}
  - end: terminate
`

const askScenario = `version: 1
steps:
  - tool: write
    input: {file_path: a.txt, content: x}
    permission: ask
  - end: end_turn
`

const twoTurnScenario = `version: 1
steps:
  - tool: bash
    input: {command: echo one}
  - wait_for_user: Next?
    expect: {contains: more}
  - tool: bash
    input: {command: echo two}
  - end: end_turn
`

const timeoutScenario = `version: 1
result_timeout: 1s
steps:
  - tool: bash
    input: {command: sleep 1}
  - end: terminate
`

func testScenarios(t *testing.T) string {
	return scenarioDir(t, map[string]string{
		"one.yaml":      oneCallScenario,
		"ask.yaml":      askScenario,
		"two-turn.yaml": twoTurnScenario,
		"timeout.yaml":  timeoutScenario,
	})
}

func sessionsToken(t *testing.T, secret string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(secret, "="))
	if err != nil {
		t.Fatalf("secret is not URL-safe base64: %v", err)
	}
	var v struct {
		SessionsToken string `json:"sessions_token"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.SessionsToken == "" {
		t.Fatalf("secret payload %s has no sessions_token (%v)", b, err)
	}
	return v.SessionsToken
}

// statusOnly sends a request and returns its status without reading the
// body, so it works on the event stream too.
func (c *testCP) statusOnly(method, path string, cr cred, body string) int {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, nil)
	if rd != nil {
		req, err = http.NewRequestWithContext(ctx, method, c.url+path, rd)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if cr.header != "" {
		req.Header.Set(cr.header, cr.value)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestAuthMatrix(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	a := cp.createSession("agent_ask", nil)["id"].(string)
	cp.createSession("agent_ask", nil)
	itemA, tokA := cp.claim()
	_, tokB := cp.claim()
	wA, tokenA := itemA["id"].(string), tokA
	if itemA["data"].(map[string]any)["id"] != a {
		t.Fatalf("first claim is not session A's item: %v", itemA)
	}

	const (
		op  = "op"
		env = "env"
		own = "tokA"
	)
	creds := map[string]cred{
		"none": noCred, "wrong": wrongCred, "env key as X-Api-Key": {"X-Api-Key", testEnvKey},
		"api key": apiKeyCred, "api key as bearer": apiBearer, "env key": envCred,
		"own token": tokenCred(tokenA), "other token": tokenCred(tokB),
	}
	kindOf := map[string]string{"api key": op, "api key as bearer": op, "env key": env, "own token": own, "other token": "tokB"}
	work := "/v1/environments/env_default/work"
	routes := []struct {
		method, path, body string
		allowed            []string
	}{
		{"POST", "/v1/environments", `{"name":"x"}`, []string{op}},
		{"GET", "/v1/environments", "", []string{op}},
		{"GET", "/v1/environments/env_default", "", []string{op}},
		{"POST", "/v1/environments/env_default", `{"description":"d"}`, []string{op}},
		{"GET", "/v1/agents", "", []string{op}},
		{"GET", "/v1/agents/agent_one", "", []string{op}},
		{"POST", "/v1/sessions", `{"agent":"agent_one","environment_id":"env_default"}`, []string{op}},
		{"GET", "/v1/sessions", "", []string{op}},
		{"GET", "/v1/sessions/" + a, "", []string{op, env, own}},
		{"GET", "/v1/sessions/" + a + "/events", "", []string{op, env, own}},
		{"GET", "/v1/sessions/" + a + "/events/stream", "", []string{op, env, own}},
		{"POST", "/v1/sessions/" + a + "/events", `{"events":[{"type":"user.define_outcome"}]}`, []string{op, env, own}},
		{"GET", work + "/poll", "", []string{env}},
		{"POST", work + "/" + wA + "/ack", "", []string{env}},
		{"POST", work + "/" + wA + "/heartbeat?expected_last_heartbeat=NO_HEARTBEAT", "", []string{env, own}},
		{"GET", work, "", []string{env, op}},
		{"GET", work + "/stats", "", []string{op, env}},
		{"GET", work + "/" + wA, "", []string{op}},
		{"POST", work + "/" + wA, `{"metadata":{"k":"v"}}`, []string{op}},
		{"POST", work + "/" + wA + "/stop", `{}`, []string{op, env, own}},
	}
	for _, rt := range routes {
		for name, cr := range creds {
			t.Run(rt.method+" "+rt.path+"/"+name, func(t *testing.T) {
				got := cp.statusOnly(rt.method, rt.path, cr, rt.body)
				kind, known := kindOf[name]
				allowed := false
				for _, k := range rt.allowed {
					allowed = allowed || (known && k == kind)
				}
				switch {
				case !known:
					if got != http.StatusUnauthorized {
						t.Errorf("status = %d, want 401", got)
					}
				case allowed:
					if got == http.StatusUnauthorized || got == http.StatusForbidden {
						t.Errorf("status = %d, want the call authorized", got)
					}
				default:
					if got != http.StatusForbidden {
						t.Errorf("status = %d, want 403", got)
					}
				}
			})
		}
	}
}

func TestAuthErrorsSayWhatToSend(t *testing.T) {
	cp := startCP(t, Options{})
	r := cp.mustDo(401, "GET", "/v1/sessions", noCred, nil)
	if r.errorType(t) != "authentication_error" || !strings.Contains(r.errorMessage(t), "Authorization: Bearer <environment key>") {
		t.Errorf("missing credential: %s", r.body)
	}
	r = cp.mustDo(403, "GET", "/v1/sessions", envCred, nil)
	if r.errorType(t) != "permission_error" || !strings.Contains(r.errorMessage(t), "takes the API key") {
		t.Errorf("wrong kind: %s", r.body)
	}
	for _, line := range strings.Split(cp.log.String(), "\n") {
		if strings.Contains(line, testAPIKey) || strings.Contains(line, testEnvKey) {
			t.Errorf("a key reached the log: %s", line)
		}
	}
}

func TestPollOnEmptyQueueReturnsJSONNull(t *testing.T) {
	cp := startCP(t, Options{})
	for _, q := range []string{"", "?block_ms=50"} {
		r := cp.mustDo(200, "GET", "/v1/environments/env_default/work/poll"+q, envCred, nil)
		if string(r.body) != "null" || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("poll%s = %q with Content-Type %q, want null as application/json", q, r.body, r.header.Get("Content-Type"))
		}
	}
}

func TestPollValidatesItsParameters(t *testing.T) {
	cp := startCP(t, Options{})
	for _, q := range []string{"block_ms=0", "block_ms=1000", "block_ms=soon", "reclaim_older_than_ms=-1"} {
		r := cp.mustDo(400, "GET", "/v1/environments/env_default/work/poll?"+q, envCred, nil)
		if r.errorType(t) != "invalid_request_error" {
			t.Errorf("%s: %s", q, r.body)
		}
	}
	cp.mustDo(404, "GET", "/v1/environments/env_nope/work/poll", envCred, nil)
	// A beta query parameter is ignored.
	cp.mustDo(200, "GET", "/v1/environments/env_default/work/poll?beta=true", envCred, nil)
}

func TestPollHoldsTheRequestUpToBlockMs(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	start := time.Now()
	if item := cp.poll("?block_ms=300"); item != nil {
		t.Fatalf("empty queue returned %v", item)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("an empty poll with block_ms=300 returned after %s", took)
	}

	got := make(chan map[string]any, 1)
	go func() {
		r := cp.do("GET", "/v1/environments/env_default/work/poll?block_ms=999", envCred, nil)
		var m map[string]any
		_ = json.Unmarshal(r.body, &m)
		got <- m
	}()
	time.Sleep(100 * time.Millisecond)
	sess := cp.createSession("agent_one", nil)
	select {
	case item := <-got:
		if item == nil || item["data"].(map[string]any)["id"] != sess["id"] {
			t.Errorf("blocked poll returned %v, want the new session's item", item)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked poll never returned")
	}
}

func TestPollHandsOutTheSecretOnlyOnce(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)
	item := cp.poll("")
	if item["type"] != "work" || item["state"] != "queued" || item["environment_id"] != DefaultEnvironmentID {
		t.Errorf("work item = %v", item)
	}
	if d := item["data"].(map[string]any); d["type"] != "session" || d["id"] != sess["id"] {
		t.Errorf("data = %v", d)
	}
	sessionsToken(t, item["secret"].(string))
	id := item["id"].(string)
	ack := cp.mustDo(200, "POST", "/v1/environments/env_default/work/"+id+"/ack", envCred, nil).json(t)
	if ack["state"] != "starting" || ack["secret"] != nil || ack["acknowledged_at"] == nil {
		t.Errorf("ack = %v", ack)
	}
	if got := cp.work(id); got["secret"] != nil {
		t.Errorf("retrieve shows the secret: %v", got)
	}
	cp.mustDo(409, "POST", "/v1/environments/env_default/work/"+id+"/ack", envCred, nil)
}

func TestPollReclaimsItemsNotAcknowledged(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	cp.createSession("agent_one", nil)
	first := cp.poll("")
	if again := cp.poll(""); again != nil {
		t.Fatalf("a pending item was handed out again at once: %v", again)
	}
	stats := cp.mustDo(200, "GET", "/v1/environments/env_default/work/stats", apiKeyCred, nil).json(t)
	if stats["type"] != "work_queue_stats" || stats["pending"] != 1.0 || stats["depth"] != 0.0 || stats["oldest_queued_at"] == nil {
		t.Errorf("stats = %v", stats)
	}
	again := cp.poll("?reclaim_older_than_ms=0")
	if again == nil || again["id"] != first["id"] {
		t.Errorf("reclaim returned %v, want %s", again, first["id"])
	}
}

func TestStatsCountWorkersThatPolled(t *testing.T) {
	cp := startCP(t, Options{})
	for _, w := range []string{"w1", "w2", "w1"} {
		req, _ := http.NewRequest("GET", cp.url+"/v1/environments/env_default/work/poll", nil)
		req.Header.Set("Authorization", envCred.value)
		req.Header.Set("Anthropic-Worker-ID", w)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	stats := cp.mustDo(200, "GET", "/v1/environments/env_default/work/stats", envCred, nil).json(t)
	if stats["workers_polling"] != 2.0 || stats["depth"] != 0.0 || stats["oldest_queued_at"] != nil {
		t.Errorf("stats = %v", stats)
	}
}

// A client holding the environment key picks the Anthropic-Worker-ID of
// each poll; remembering them for workers_polling must not let it grow the
// control plane's memory without bound.
func TestPollerIDsTakeBoundedMemory(t *testing.T) {
	cp := startCP(t, Options{})
	const limit = maxPollers
	long := strings.Repeat("w", 2<<10)
	now := time.Now()
	cp.srv.mu.Lock()
	for i := range 2 * limit {
		cp.srv.notePoller(DefaultEnvironmentID, fmt.Sprintf("%s-%d", long, i), now)
	}
	seen := cp.srv.pollers[DefaultEnvironmentID].seen
	keyBytes := 0
	for k := range seen {
		keyBytes += len(k)
	}
	n := len(seen)
	cp.srv.mu.Unlock()
	if n > limit || keyBytes > limit*64 {
		t.Errorf("%d worker ids remembered in %d bytes, want at most %d ids of a fixed size", n, keyBytes, limit)
	}
	stats := cp.mustDo(200, "GET", "/v1/environments/env_default/work/stats", envCred, nil).json(t)
	if stats["workers_polling"] != float64(n) {
		t.Errorf("workers_polling = %v, want %d", stats["workers_polling"], n)
	}
	// Once those polls leave the window, a new worker counts again.
	cp.srv.mu.Lock()
	cp.srv.notePoller(DefaultEnvironmentID, "late", now.Add(pollerWindow+time.Second))
	n = len(cp.srv.pollers[DefaultEnvironmentID].seen)
	cp.srv.mu.Unlock()
	if n != 1 {
		t.Errorf("after the window %d worker ids are remembered, want the 1 that polled since", n)
	}
}

func heartbeat(cp *testCP, workID, token, expected string) response {
	return cp.do("POST", "/v1/environments/env_default/work/"+workID+"/heartbeat?expected_last_heartbeat="+expected, tokenCred(token), nil)
}

func TestHeartbeatIsACompareAndSwapOnTheLeaseToken(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t), TTL: 4 * time.Second})
	cp.createSession("agent_one", nil)
	item, tok := cp.claim()
	id := item["id"].(string)

	r := heartbeat(cp, id, tok, "NO_HEARTBEAT")
	hb := r.json(t)
	if r.status != 200 || hb["type"] != "work_heartbeat" || hb["lease_extended"] != true || hb["state"] != "active" || hb["ttl_seconds"] != 4.0 {
		t.Fatalf("first beat = %d %s", r.status, r.body)
	}
	t1 := hb["last_heartbeat"].(string)
	if _, err := time.Parse(time.RFC3339Nano, t1); err != nil {
		t.Errorf("last_heartbeat %q is not RFC 3339: %v", t1, err)
	}
	hb2 := heartbeat(cp, id, tok, t1).json(t)
	t2 := hb2["last_heartbeat"].(string)
	if t2 == t1 {
		t.Errorf("the token did not change: %s", t2)
	}
	if w := cp.work(id); w["state"] != "active" || w["started_at"] == nil || w["latest_heartbeat_at"] == nil {
		t.Errorf("work = %v", w)
	}

	for _, stale := range []string{t1, "NO_HEARTBEAT", "garbage"} {
		r := heartbeat(cp, id, tok, stale)
		if r.status != 412 {
			t.Fatalf("stale %q: status %d, want 412", stale, r.status)
		}
		e := r.json(t)["error"].(map[string]any)
		d := e["details"].(map[string]any)
		cs := d["current_state"].(map[string]any)
		if e["type"] != "invalid_request_error" || d["error_code"] != "heartbeat_precondition_failed" ||
			cs["state"] != "active" || cs["last_heartbeat"] != t2 || cs["lease_extended"] != false || cs["ttl_seconds"] != 4.0 || cs["lease_updated_at"] == nil {
			t.Errorf("412 body = %s", r.body)
		}
	}
	cp.mustDo(400, "POST", "/v1/environments/env_default/work/"+id+"/heartbeat", tokenCred(tok), nil)

	desired := cp.do("POST", "/v1/environments/env_default/work/"+id+"/heartbeat?expected_last_heartbeat="+t2+"&desired_ttl_seconds=7", tokenCred(tok), nil).json(t)
	if desired["ttl_seconds"] != 7.0 {
		t.Errorf("desired ttl: %v", desired)
	}
}

func TestExpiredLeaseRequeuesTheItemForAnotherWorker(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t), TTL: time.Second})
	sess := cp.createSession("agent_one", nil)
	item, tok := cp.claim()
	id := item["id"].(string)
	last := heartbeat(cp, id, tok, "NO_HEARTBEAT").json(t)["last_heartbeat"].(string)

	// The worker is killed: no more beats.
	eventually(t, 10*time.Second, "the lease to lapse", func() bool { return cp.work(id)["state"] == "queued" })
	again := cp.poll("")
	if again == nil || again["id"] != id || again["data"].(map[string]any)["id"] != sess["id"] {
		t.Fatalf("after expiry poll = %v, want %s again", again, id)
	}
	// The killed worker's next beat learns that it lost the lease.
	r := heartbeat(cp, id, tok, last)
	if r.status != 412 || r.json(t)["error"].(map[string]any)["details"].(map[string]any)["current_state"].(map[string]any)["state"] != "queued" {
		t.Errorf("stale holder's heartbeat = %d %s", r.status, r.body)
	}
}

func TestStop(t *testing.T) {
	tests := []struct {
		name      string
		cred      func(tok string) cred
		body      any
		heartbeat bool // whether the item is claimed and active first
		wantState string
	}{
		{"operator graceful stop of an active item asks the worker to stop", func(string) cred { return apiKeyCred }, map[string]any{}, true, "stopping"},
		{"operator force stop", func(string) cred { return apiKeyCred }, map[string]any{"force": true}, true, "stopped"},
		{"operator stop of a queued item", func(string) cred { return apiKeyCred }, nil, false, "stopped"},
		{"worker stop with its token", tokenCred, map[string]any{}, true, "stopped"},
		{"worker force stop with the environment key", func(string) cred { return envCred }, map[string]any{"force": true}, true, "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
			cp.createSession("agent_one", nil)
			var (
				item map[string]any
				tok  string
			)
			if tt.heartbeat {
				item, tok = cp.claim()
			} else {
				item = cp.poll("") // pending: polled, not acknowledged
				tok = sessionsToken(t, item["secret"].(string))
			}
			id := item["id"].(string)
			last := "NO_HEARTBEAT"
			if tt.heartbeat {
				last = heartbeat(cp, id, tok, last).json(t)["last_heartbeat"].(string)
			}
			r := cp.mustDo(204, "POST", "/v1/environments/env_default/work/"+id+"/stop", tt.cred(tok), tt.body)
			if len(r.body) != 0 {
				t.Errorf("stop has a body: %q", r.body)
			}
			w := cp.work(id)
			if w["state"] != tt.wantState || w["stop_requested_at"] == nil {
				t.Fatalf("work = %v, want %s", w, tt.wantState)
			}
			if tt.wantState == "stopping" {
				hb := heartbeat(cp, id, tok, last).json(t)
				if hb["lease_extended"] != false || hb["state"] != "stopping" {
					t.Errorf("heartbeat while stopping = %v", hb)
				}
				cp.mustDo(204, "POST", "/v1/environments/env_default/work/"+id+"/stop", tokenCred(tok), map[string]any{"force": true})
			}
			if w := cp.work(id); w["state"] != "stopped" || w["stopped_at"] == nil {
				t.Errorf("work = %v, want stopped", w)
			}
			r = cp.mustDo(409, "POST", "/v1/environments/env_default/work/"+id+"/stop", tokenCred(tok), map[string]any{"force": true})
			if r.header.Get("x-should-retry") != "false" {
				t.Errorf("409 without x-should-retry: false")
			}
			hb := heartbeat(cp, id, tok, "anything").json(t)
			if hb["lease_extended"] != false || hb["state"] != "stopped" {
				t.Errorf("heartbeat after stop = %v", hb)
			}
		})
	}
}

func TestRejectedRequestsChangeNothing(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)["id"].(string)
	_, tok := cp.claim()
	path := "/v1/sessions/" + sess + "/events"
	before := len(cp.events(sess))
	toolUse := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	tests := []struct {
		name       string
		body       any
		wantStatus int
		wantInMsg  string
	}{
		{"malformed JSON", `{"events": [`, 400, "not valid JSON"},
		{"trailing garbage", `{"events": []} x`, 400, "after the JSON object"},
		{"a stray closing brace", `{"events":[{"type":"user.message","content":[{"type":"text","text":"x"}]}]}}`, 400, "after the JSON object"},
		{"a stray closing bracket", `{"events":[{"type":"user.message","content":[{"type":"text","text":"x"}]}]}]`, 400, "after the JSON object"},
		{"wrong type", `{"events": "x"}`, 400, "events must be an array"},
		{"no events", `{"events": []}`, 400, "events is required"},
		{"empty body", ``, 400, "body is empty"},
		{"unknown event type", sendEvents(map[string]any{"type": "agent.message"}), 400, `"agent.message" cannot be sent`},
		{"message without content", sendEvents(map[string]any{"type": "user.message"}), 400, "content is required"},
		{"result for an unknown call", sendEvents(textResult("sevt_nope", "x", false)), 400, "does not name an event"},
		{"result without tool_use_id", sendEvents(map[string]any{"type": "user.tool_result"}), 400, "tool_use_id is required"},
		{"custom result for a built-in call", sendEvents(map[string]any{"type": "user.custom_tool_result", "custom_tool_use_id": toolUse}), 400, "answer it with user.tool_result"},
		{"confirmation of a call that needs none", sendEvents(map[string]any{"type": "user.tool_confirmation", "tool_use_id": toolUse, "result": "allow"}), 400, "does not await confirmation"},
		{"a valid event then an invalid one", sendEvents(userMessage("hi"), map[string]any{"type": "bogus"}), 400, "events[1].type"},
		{"two results for one call", sendEvents(textResult(toolUse, "hi", false), textResult(toolUse, "hi", false)), 409, "already has a result"},
		{"oversized body", `{"events":[{"type":"user.message","content":[{"type":"text","text":"` + strings.Repeat("a", 9<<20) + `"}]}]}`, 413, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.body
			if s, ok := body.(string); ok {
				body = []byte(s)
			}
			r := cp.do("POST", path, tokenCred(tok), body)
			if r.status != tt.wantStatus || !strings.Contains(r.errorMessage(t), tt.wantInMsg) {
				t.Errorf("= %d %s\nwant %d mentioning %q", r.status, r.body, tt.wantStatus, tt.wantInMsg)
			}
			if tt.wantStatus == 413 && r.errorType(t) != "request_too_large" {
				t.Errorf("413 type = %s", r.errorType(t))
			}
			if n := len(cp.events(sess)); n != before {
				t.Errorf("the log grew from %d to %d events", before, n)
			}
		})
	}
}

func TestUnknownRoutesAre404sNamingMethodAndPath(t *testing.T) {
	cp := startCP(t, Options{})
	for _, rt := range [][2]string{{"GET", "/v1/nope"}, {"DELETE", "/v1/sessions/sesn_x"}, {"PUT", "/v1/environments"}} {
		r := cp.mustDo(404, rt[0], rt[1], apiKeyCred, nil)
		if r.errorType(t) != "not_found_error" || !strings.Contains(r.errorMessage(t), rt[0]+" "+rt[1]) {
			t.Errorf("%s %s: %s", rt[0], rt[1], r.body)
		}
		if r.header.Get("Content-Type") != "application/json" {
			t.Errorf("Content-Type = %q", r.header.Get("Content-Type"))
		}
	}
}

func TestCreateSessionValidatesAgentAndEnvironment(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	r := cp.mustDo(404, "POST", "/v1/sessions", apiKeyCred, map[string]any{"agent": "agent_nope", "environment_id": "env_default"})
	if !strings.Contains(r.errorMessage(t), "agent_one") {
		t.Errorf("404 does not name the agents: %s", r.body)
	}
	cp.mustDo(404, "POST", "/v1/sessions", apiKeyCred, map[string]any{"agent": "agent_one", "environment_id": "env_nope"})
	cp.mustDo(400, "POST", "/v1/sessions", apiKeyCred, map[string]any{"environment_id": "env_default"})
	cp.mustDo(400, "POST", "/v1/sessions", apiKeyCred, map[string]any{"agent": map[string]any{"type": "agent", "id": "agent_one", "version": 2}, "environment_id": "env_default"})
	cp.mustDo(400, "POST", "/v1/sessions", apiKeyCred, map[string]any{"agent": "agent_one", "environment_id": "env_default", "metadata": map[string]any{"k": 1}})
	if n := len(cp.mustDo(200, "GET", "/v1/sessions", apiKeyCred, nil).json(t)["data"].([]any)); n != 0 {
		t.Errorf("%d sessions exist after rejected creates", n)
	}
	s := cp.createSession("", map[string]any{"agent": map[string]any{"type": "agent", "id": "agent_one", "version": 1}, "title": "t", "metadata": map[string]any{"team": "infra"}})
	md := s["metadata"].(map[string]any)
	if s["title"] != "t" || md["team"] != "infra" || md["perimeter.scenario.status"] != "running" {
		t.Errorf("session = %v", s)
	}
}

func TestSessionCarriesTheScenarioOutcome(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)
	for _, k := range []string{"id", "type", "status", "environment_id", "agent", "resources", "metadata", "vault_ids", "title", "created_at", "updated_at", "archived_at", "usage", "stats", "outcome_evaluations", "budget", "scenario"} {
		if _, ok := sess[k]; !ok {
			t.Errorf("session lacks %q", k)
		}
	}
	if sess["status"] != "idle" {
		t.Errorf("status = %v, want idle (requires_action)", sess["status"])
	}
	if agent := sess["agent"].(map[string]any); agent["id"] != "agent_one" || len(agent["skills"].([]any)) != 0 {
		t.Errorf("agent = %v", agent)
	}
	_, tok := cp.claim()
	evs := cp.events(sess["id"].(string))
	want := []string{"session.status_running", "agent.tool_use", "session.status_idle"}
	if strings.Join(types(evs), ",") != strings.Join(want, ",") {
		t.Fatalf("events = %v, want %v", types(evs), want)
	}
	idle := evs[2]["stop_reason"].(map[string]any)
	if idle["type"] != "requires_action" || idle["event_ids"].([]any)[0] != evs[1]["id"] {
		t.Errorf("idle = %v", idle)
	}
	if evs[1]["name"] != "bash" || evs[1]["evaluated_permission"] != "allow" || evs[1]["processed_at"] == nil {
		t.Errorf("tool use = %v", evs[1])
	}
	cp.mustDo(200, "POST", "/v1/sessions/"+sess["id"].(string)+"/events", tokenCred(tok), sendEvents(textResult(evs[1]["id"].(string), "hi\n", false)))
	got := cp.session(sess["id"].(string))
	sc := scenarioOf(got)
	if got["status"] != "terminated" || sc["status"] != "passed" || sc["steps_done"] != 2.0 || sc["steps_total"] != 2.0 || sc["agent"] != "agent_one" ||
		got["metadata"].(map[string]any)["perimeter.scenario.status"] != "passed" {
		t.Errorf("session = %v", got)
	}
	if !strings.Contains(cp.log.String(), "scenario step") || !strings.Contains(cp.log.String(), "scenario finished") {
		t.Errorf("no scenario log lines")
	}
	// A terminated session accepts nothing more.
	cp.mustDo(400, "POST", "/v1/sessions/"+sess["id"].(string)+"/events", apiKeyCred, sendEvents(userMessage("hello?")))
}

func TestDuplicateResultIsAConflictAndChangesNothing(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_ask", nil)["id"].(string)
	_, tok := cp.claim()
	use := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	path := "/v1/sessions/" + sess + "/events"
	cp.mustDo(400, "POST", path, tokenCred(tok), sendEvents(textResult(use, "early", false)))
	confirm := map[string]any{"type": "user.tool_confirmation", "tool_use_id": use, "result": "allow"}
	cp.mustDo(200, "POST", path, apiKeyCred, sendEvents(confirm))
	cp.mustDo(409, "POST", path, apiKeyCred, sendEvents(confirm))
	cp.mustDo(200, "POST", path, tokenCred(tok), sendEvents(textResult(use, "wrote 1 bytes", false)))
	before := cp.events(sess)
	r := cp.mustDo(409, "POST", path, tokenCred(tok), sendEvents(textResult(use, "again", false)))
	if r.errorType(t) != "conflict_error" {
		t.Errorf("type = %s", r.errorType(t))
	}
	if after := cp.events(sess); len(after) != len(before) {
		t.Errorf("the log changed: %v -> %v", types(before), types(after))
	}
	if sc := scenarioOf(cp.session(sess)); sc["status"] != "passed" {
		t.Errorf("scenario = %v", sc)
	}
}

func TestOperatorDenialIsRecordedAsAFailure(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_ask", nil)["id"].(string)
	use := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	if s := cp.session(sess); s["status"] != "idle" || scenarioOf(s)["waiting_for"] != "tool_confirmation" {
		t.Fatalf("session = %v", s)
	}
	cp.mustDo(200, "POST", "/v1/sessions/"+sess+"/events", apiKeyCred, sendEvents(map[string]any{
		"type": "user.tool_confirmation", "tool_use_id": use, "result": "deny", "deny_message": "no"}))
	sc := scenarioOf(cp.session(sess))
	f := sc["failures"].([]any)
	if sc["status"] != "failed" || len(f) != 1 || !strings.Contains(f[0].(map[string]any)["message"].(string), "denied") {
		t.Errorf("scenario = %v", sc)
	}
	cp.mustDo(409, "POST", "/v1/sessions/"+sess+"/events", apiKeyCred, sendEvents(textResult(use, "x", false)))
}

func TestUserMessageToAStoppedSessionQueuesNewWork(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_two-turn", nil)["id"].(string)
	item, tok := cp.claim()
	use := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	path := "/v1/sessions/" + sess + "/events"
	cp.mustDo(200, "POST", path, tokenCred(tok), sendEvents(textResult(use, "one", false)))
	s := cp.session(sess)
	if s["status"] != "idle" || scenarioOf(s)["waiting_for"] != "user_message" {
		t.Fatalf("session = %v", s)
	}
	if stop := lastOfType(t, cp.events(sess), "session.status_idle")["stop_reason"].(map[string]any); stop["type"] != "end_turn" {
		t.Errorf("idle = %v", stop)
	}
	// While the item is live, a message just flows through.
	cp.mustDo(200, "POST", path, apiKeyCred, sendEvents(map[string]any{"type": "user.define_outcome"}))
	cp.mustDo(204, "POST", "/v1/environments/env_default/work/"+item["id"].(string)+"/stop", tokenCred(tok), map[string]any{"force": true})
	if cp.poll("") != nil {
		t.Fatal("work appeared before any message")
	}
	cp.mustDo(200, "POST", path, apiKeyCred, sendEvents(userMessage("one more please")))
	next, tok2 := cp.claim()
	if next["id"] == item["id"] || next["data"].(map[string]any)["id"] != sess {
		t.Fatalf("new item = %v", next)
	}
	use2 := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	if use2 == use {
		t.Fatal("the scenario did not resume")
	}
	cp.mustDo(200, "POST", path, tokenCred(tok2), sendEvents(textResult(use2, "two", false)))
	if sc := scenarioOf(cp.session(sess)); sc["status"] != "passed" {
		t.Errorf("scenario = %v", sc)
	}
	// The old item's token no longer reaches... its own session still: tokens
	// stay valid for their session, so a late stop gets 409, not 401.
	cp.mustDo(409, "POST", "/v1/environments/env_default/work/"+item["id"].(string)+"/stop", tokenCred(tok), nil)
}

func TestUnansweredCallPastResultTimeoutTerminatesTheSession(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_timeout", nil)["id"].(string)
	eventually(t, 10*time.Second, "the result timeout", func() bool { return cp.session(sess)["status"] == "terminated" })
	sc := scenarioOf(cp.session(sess))
	f := sc["failures"].([]any)
	if sc["status"] != "failed" || len(f) != 1 || !strings.Contains(f[0].(map[string]any)["message"].(string), "no result for tool bash") {
		t.Errorf("scenario = %v", sc)
	}
	if m := lastOfType(t, cp.events(sess), "agent.message"); !strings.Contains(m["content"].([]any)[0].(map[string]any)["text"].(string), "Scenario failed") {
		t.Errorf("message = %v", m)
	}
}

func TestStateSurvivesARestart(t *testing.T) {
	dir := testScenarios(t)
	db := filepath.Join(t.TempDir(), "cp.db")
	cp := startCP(t, Options{ScenarioDir: dir, Database: db})
	sess := cp.createSession("agent_two-turn", map[string]any{"title": "persist me"})["id"].(string)
	item, tok := cp.claim()
	use := lastOfType(t, cp.events(sess), "agent.tool_use")["id"].(string)
	cp.mustDo(200, "POST", "/v1/sessions/"+sess+"/events", tokenCred(tok), sendEvents(textResult(use, "one", false)))
	before := cp.events(sess)
	if err := cp.srv.Close(); err != nil {
		t.Fatal(err)
	}
	cp.ts.Close()

	cp2 := startCP(t, Options{ScenarioDir: dir, Database: db})
	s := cp2.session(sess)
	if s["title"] != "persist me" || scenarioOf(s)["waiting_for"] != "user_message" || scenarioOf(s)["steps_done"] != 1.0 {
		t.Errorf("session after restart = %v", s)
	}
	after := cp2.events(sess)
	if b, _ := json.Marshal(before); string(b) != string(mustJSON(after)) {
		t.Errorf("events changed across the restart:\n%v\n%v", types(before), types(after))
	}
	if w := cp2.work(item["id"].(string)); w["state"] != "starting" {
		t.Errorf("work after restart = %v", w)
	}
	// The old sessions token still works, and the run carries on.
	cp2.mustDo(200, "POST", "/v1/sessions/"+sess+"/events", tokenCred(tok), sendEvents(userMessage("more")))
	use2 := lastOfType(t, cp2.events(sess), "agent.tool_use")["id"].(string)
	cp2.mustDo(200, "POST", "/v1/sessions/"+sess+"/events", tokenCred(tok), sendEvents(textResult(use2, "two", false)))
	if sc := scenarioOf(cp2.session(sess)); sc["status"] != "passed" {
		t.Errorf("scenario = %v", sc)
	}
}

func TestEventsListPages(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)["id"].(string)
	all := cp.events(sess)
	var got []string
	page := ""
	for i := 0; i < 10; i++ {
		r := cp.mustDo(200, "GET", "/v1/sessions/"+sess+"/events?limit=1"+page, apiKeyCred, nil).json(t)
		for _, e := range r["data"].([]any) {
			got = append(got, e.(map[string]any)["id"].(string))
		}
		next, _ := r["next_page"].(string)
		if next == "" {
			break
		}
		page = "&page=" + next
	}
	if len(got) != len(all) {
		t.Errorf("paged %d events, listed %d", len(got), len(all))
	}
	desc := cp.mustDo(200, "GET", "/v1/sessions/"+sess+"/events?order=desc", apiKeyCred, nil).json(t)["data"].([]any)
	if desc[0].(map[string]any)["id"] != all[len(all)-1]["id"] {
		t.Errorf("desc does not start with the newest event")
	}
	cp.mustDo(400, "GET", "/v1/sessions/"+sess+"/events?page=bogus", apiKeyCred, nil)
	cp.mustDo(400, "GET", "/v1/sessions/"+sess+"/events?order=sideways", apiKeyCred, nil)
}

func TestNewRejectsBadOptionsAndScenarios(t *testing.T) {
	bad := scenarioDir(t, map[string]string{"broken.yaml": "version: 1\nsteps:\n  - tool: nope\n  - end: terminate\n"})
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no api key", Options{EnvironmentKey: "e"}, "APIKey is required"},
		{"no environment key", Options{APIKey: "a"}, "EnvironmentKey is required"},
		{"same keys", Options{APIKey: "a", EnvironmentKey: "a"}, "must differ"},
		{"invalid scenario", Options{APIKey: "a", EnvironmentKey: "e", ScenarioDir: bad}, "broken.yaml:3:"},
		{"missing scenario dir", Options{APIKey: "a", EnvironmentKey: "e", ScenarioDir: filepath.Join(bad, "nope")}, "scenario directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.opts)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

// Go drops a query it cannot parse, wholly (too many parameters) or in
// part (a bad escape); acting on the rest would, for instance, list every
// event of a session for a client that asked for one type.
func TestUnparsableQueryIsRejected(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)["id"].(string)
	path := "/v1/sessions/" + sess + "/events?types[]=agent.tool_use"
	if n := len(cp.mustDo(200, "GET", path, apiKeyCred, nil).json(t)["data"].([]any)); n != 1 {
		t.Fatalf("types[]=agent.tool_use lists %d events, want 1", n)
	}
	for name, q := range map[string]string{
		"too many parameters": "&" + strings.Repeat("types[]=agent.tool_use&", 10000) + "limit=1",
		"a bad escape":        "&types[]=%zz",
		"a semicolon":         "&limit=1;x",
	} {
		t.Run(name, func(t *testing.T) {
			r := cp.do("GET", path+q, apiKeyCred, nil)
			if r.status != 400 || r.errorType(t) != "invalid_request_error" || !strings.Contains(r.errorMessage(t), "query") {
				t.Errorf("= %d %.300s, want 400 about the query", r.status, r.body)
			}
		})
	}
}

func TestEventsListPageStaysBoundedWhenEventsAreLarge(t *testing.T) {
	cp := startCP(t, Options{ScenarioDir: testScenarios(t)})
	sess := cp.createSession("agent_one", nil)["id"].(string)
	big := strings.Repeat("x", 3<<20)
	for i := 0; i < 4; i++ {
		cp.mustDo(200, "POST", "/v1/sessions/"+sess+"/events", apiKeyCred, sendEvents(userMessage(big)))
	}
	want := 0
	for _, e := range cp.events(sess) {
		if e["type"] == "user.message" {
			want++
		}
	}
	if want != 4 {
		t.Fatalf("the log has %d large messages, want 4", want)
	}
	// The runner lists the whole log with limit=1000, page by page.
	seen := map[string]bool{}
	var got []string
	page := ""
	for i := 0; ; i++ {
		if i == 20 {
			t.Fatal("the list did not end")
		}
		r := cp.mustDo(200, "GET", "/v1/sessions/"+sess+"/events?limit=1000"+page, apiKeyCred, nil)
		if len(r.body) > maxPageBytes+64<<10 {
			t.Errorf("a page is %d bytes, more than %d", len(r.body), maxPageBytes)
		}
		m := r.json(t)
		for _, e := range m["data"].([]any) {
			id := e.(map[string]any)["id"].(string)
			if seen[id] {
				t.Errorf("event %s is on two pages", id)
			}
			seen[id] = true
			got = append(got, id)
		}
		next, _ := m["next_page"].(string)
		if next == "" {
			break
		}
		page = "&page=" + next
	}
	var all []string
	for _, e := range cp.events(sess) {
		all = append(all, e["id"].(string))
	}
	if strings.Join(got, ",") != strings.Join(all, ",") {
		t.Errorf("paged %v\nwant %v", got, all)
	}
}
