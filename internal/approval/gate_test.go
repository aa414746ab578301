package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/approval/notify"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/worker"
)

const testPolicy = `version: 1
default:
  decision: deny
  message: no rule allows this
rules:
  - name: reads pass
    tools: [read]
    decision: allow
  - name: no secrets
    tools: [write]
    when: 'input.file_path.startsWith("secrets/")'
    decision: deny
    message: secrets are off limits
  - name: writes wait
    tools: [write]
    decision: defer
    deadline: %s
    channels: [ops]
    allow_edit: true
    read_only: true
    message: a human reviews writes
`

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// receiver is a webhook endpoint on loopback that verifies every delivery.
type receiver struct {
	srv  *httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	ids  []string
	errs []error
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		err := notify.Verify(secret, req.Header, body, 5*time.Minute, time.Now())
		r.mu.Lock()
		r.ids = append(r.ids, req.Header.Get("webhook-id"))
		if err != nil {
			r.errs = append(r.errs, err)
		}
		r.mu.Unlock()
		r.n.Add(1)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func newGate(t testing.TB, dir, deadline string, rcv *receiver) *Gate {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(strings.Replace(testPolicy, "%s", deadline, 1)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	hook, err := notify.NewWebhook("ops", rcv.srv.URL, secret)
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGate(GateOptions{Policy: p, Store: st, Notifiers: []notify.Notifier{hook}, Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func call(id, tool, input string) *worker.Call {
	return &worker.Call{ToolUseID: id, SessionID: "sesn_1", WorkID: "work_1", WorkerID: "w1", Tool: tool,
		Input: json.RawMessage(input), InputSHA256: sha256Hex([]byte(input))}
}

func TestRuleDecisionsAreRecordedBeforeTheCallRuns(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	ctx := context.Background()
	if err := g.BeforeCall(ctx, call("sevt_read", "read", `{"file_path":"a"}`)); err != nil {
		t.Fatalf("read: %v", err)
	}
	r, _ := g.Store().Get(ctx, "sevt_read")
	if r.State != Allowed || r.DecidedBy != "rule:reads pass" || r.UsedAt.IsZero() {
		t.Errorf("read record: %+v", r)
	}
	err := g.BeforeCall(ctx, call("sevt_secret", "write", `{"file_path":"secrets/k","content":"x"}`))
	if err == nil || err.Error() != "secrets are off limits" {
		t.Fatalf("secret write: %v, want the rule's message", err)
	}
	err = g.BeforeCall(ctx, call("sevt_bash", "bash", `{"command":"ls"}`))
	if err == nil || err.Error() != "no rule allows this" {
		t.Fatalf("unmatched call: %v, want the default's message", err)
	}
	r, _ = g.Store().Get(ctx, "sevt_bash")
	if r.State != Denied || r.DecidedBy != "default" {
		t.Errorf("default record: %+v", r)
	}
	// A replayed allow (same call again) cannot use the approval twice.
	if err := g.BeforeCall(ctx, call("sevt_read", "read", `{"file_path":"a"}`)); err == nil {
		t.Error("the same call was allowed twice")
	}
}

func TestAWaitingCallRunsWithTheInputItsApproverEdited(t *testing.T) {
	rcv := newReceiver(t)
	g := newGate(t, t.TempDir(), "1h", rcv)
	c := call("sevt_w", "write", `{"file_path":"a.txt","content":"draft"}`)
	done := make(chan error, 1)
	go func() { done <- g.BeforeCall(context.Background(), c) }()
	waitUntil(t, "the request to be notified", func() bool { return rcv.n.Load() == 1 })
	edit := []byte(`{"file_path":"a.txt","content":"final"}`)
	if _, err := g.Decide(context.Background(), "sevt_w", true, "human:alice", "", edit); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("approved call: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the approved call did not resume")
	}
	if string(c.Input) != string(edit) || c.InputSHA256 != sha256Hex([]byte(`{"file_path":"a.txt","content":"draft"}`)) {
		t.Errorf("input %s (sha %s): want the edit, bound to the original hash", c.Input, c.InputSHA256)
	}
	// The rule's read_only spoke of the draft; the edit gets a checkpoint.
	if c.Decision.ReadOnly || !c.Decision.Edited {
		t.Errorf("decision %+v: an edited call is not read-only", c.Decision)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.errs) > 0 || len(rcv.ids) != 1 || rcv.ids[0] != "sevt_w" {
		t.Errorf("deliveries %v, verification errors %v", rcv.ids, rcv.errs)
	}
}

func TestAHumanDenialIsWhatTheModelSees(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	done := asking(t, g)
	if _, err := g.Decide(context.Background(), "sevt_w", false, "human:bob", "use the staging bucket", nil); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "denied by a reviewer (bob): use the staging bucket") {
		t.Fatalf("denied call: %v", err)
	}
}

func TestNoDecisionBeforeTheDeadlineDenies(t *testing.T) {
	g := newGate(t, t.TempDir(), "300ms", newReceiver(t))
	start := time.Now()
	err := g.BeforeCall(context.Background(), call("sevt_w", "write", `{"file_path":"a","content":"x"}`))
	if err == nil || !strings.Contains(err.Error(), "none came before the deadline") {
		t.Fatalf("timed out call: %v", err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Error("denied before the deadline")
	}
	r, _ := g.Store().Get(context.Background(), "sevt_w")
	if r.State != Denied || r.DecidedBy != "timeout" {
		t.Errorf("record: %+v", r)
	}
}

// A store that cannot be read when the deadline comes is no reason to keep
// waiting: the call is denied as if nobody had answered.
func TestAnUnreadableStoreAtTheDeadlineDenies(t *testing.T) {
	g := newGate(t, t.TempDir(), "300ms", newReceiver(t))
	done := asking(t, g)
	g.Store().Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "none came before the deadline") {
			t.Fatalf("call whose store failed: %v, want the deadline's denial", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call still waits long after its deadline")
	}
}

// A worker that stops serving a session while a call waits leaves the
// request pending; the worker that picks the call up later finds it,
// does not notify again, and applies a decision given in between.
func TestAPendingRequestOutlivesItsWorkerAndIsNotifiedOnce(t *testing.T) {
	dir := t.TempDir()
	rcv := newReceiver(t)
	g1 := newGate(t, dir, "1h", rcv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g1.BeforeCall(ctx, call("sevt_w", "write", `{"file_path":"a","content":"x"}`)) }()
	waitUntil(t, "the first notification", func() bool { return rcv.n.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned wait returned %v, want context.Canceled", err)
	}

	// Decided on the store while no worker waits.
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Decide(context.Background(), "sevt_w", true, "human:carol", "", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	g2 := newGate(t, dir, "1h", rcv)
	if err := g2.BeforeCall(context.Background(), call("sevt_w", "write", `{"file_path":"a","content":"x"}`)); err != nil {
		t.Fatalf("second worker: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := rcv.n.Load(); n != 1 {
		t.Errorf("%d notifications, want exactly 1", n)
	}
}

// asking starts the write call sevt_w, which asks for a human, and returns
// once its request is recorded; the channel receives what BeforeCall
// returns.
func asking(t *testing.T, g *Gate) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		done <- g.BeforeCall(context.Background(), call("sevt_w", "write", `{"file_path":"a","content":"x"}`))
	}()
	waitUntil(t, "the request", func() bool { _, err := g.Store().Get(context.Background(), "sevt_w"); return err == nil })
	return done
}

// leftWaiting makes a write call that waits for a human, then leaves it as
// a worker that dies or drains does: the request stays pending.
func leftWaiting(t *testing.T, g *Gate, rcv *receiver, id, input string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.BeforeCall(ctx, call(id, "write", input)) }()
	waitUntil(t, "the notification", func() bool { return rcv.n.Load() == 1 })
	cancel()
	<-done
}

// A decision is about one session's call: a call of another session that
// arrives with the same id (and input) is not run on it.
func TestADecisionIsNotAppliedToAnotherSessionsCall(t *testing.T) {
	dir := t.TempDir()
	rcv := newReceiver(t)
	input := `{"file_path":"a","content":"x"}`
	g1 := newGate(t, dir, "1h", rcv)
	leftWaiting(t, g1, rcv, "sevt_w", input)
	if _, err := g1.Decide(context.Background(), "sevt_w", true, "human:carol", "", nil); err != nil {
		t.Fatal(err)
	}

	other := call("sevt_w", "write", input)
	other.SessionID, other.WorkID = "sesn_2", "work_2"
	err := newGate(t, dir, "1h", rcv).BeforeCall(context.Background(), other)
	if err == nil || !strings.Contains(err.Error(), "another session") {
		t.Fatalf("another session's call with the same id: %v, want a refusal", err)
	}
	if r, _ := g1.Store().Get(context.Background(), "sevt_w"); !r.UsedAt.IsZero() {
		t.Error("the other session's call used the approval")
	}
}

func TestAReloadNamingAnUnconfiguredChannelIsRefused(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	before := g.Policy()
	p, err := policy.Parse("new.yaml", []byte(`version: 1
default: {decision: defer, deadline: 1m, channels: [pager]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetPolicy(p); err == nil || !strings.Contains(err.Error(), "pager") {
		t.Fatalf("SetPolicy: %v, want an error naming the channel", err)
	}
	if g.Policy() != before {
		t.Error("the refused policy replaced the one in force")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The platform's ask, stricter than a rule's allow, decides the call: the
// runner hands it over only after a user.tool_confirmation allowed it, and
// the record says so.
func TestAPlatformConfirmationIsRecordedAsTheDecider(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	c := call("sevt_r", "read", `{"file_path":"a"}`)
	c.Platform = "ask"
	if err := g.BeforeCall(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	r, _ := g.Store().Get(context.Background(), "sevt_r")
	if r.State != Allowed || r.DecidedBy != "platform" {
		t.Errorf("record: %+v", r)
	}
	// A policy deny stays a deny whatever the platform said.
	c = call("sevt_s", "write", `{"file_path":"secrets/k","content":"x"}`)
	c.Platform = "ask"
	if err := g.BeforeCall(context.Background(), c); err == nil {
		t.Error("a rule's deny was lifted by the platform's confirmation")
	}
}

// Attack: the SDK's tools decode their input with encoding/json, which
// matches keys case-insensitively, so {"Command": …} runs as a command
// while a condition on input.command sees no such key. A deny rule's
// condition that cannot be evaluated counts as true, so the call is denied;
// an allow rule's counts as false, so it is not allowed by it.
func TestAMiscasedKeyCannotSlipPastARule(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`version: 1
default: {decision: allow}
rules:
  - name: no recursive deletes
    tools: [bash]
    when: 'input.command.matches("rm\\s+-rf")'
    decision: deny
    message: recursive deletes are not allowed
  - name: docs edits pass
    tools: [edit]
    when: 'input.file_path.startsWith("docs/")'
    decision: allow
`))
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	if err := g.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	for i, input := range []string{
		`{"Command":"rm -rf /"}`,
		`{"command":"ls","Command":"rm -rf /"}`,
		`{"COMMAND":"rm -rf /"}`,
	} {
		err := g.BeforeCall(context.Background(), call(fmt.Sprintf("sevt_%d", i), "bash", input))
		if err == nil || !strings.Contains(err.Error(), "recursive deletes are not allowed") {
			t.Errorf("%s: %v, want the deny rule's message", input, err)
		}
	}
}
