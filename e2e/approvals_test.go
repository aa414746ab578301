package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/approval/notify"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

const opsSecret = "whsec_c2VjcmV0LWZvci10aGUtZTJlLXRlc3Rz"

// webhookReceiver is a reviewer's endpoint on loopback that checks the
// Standard Webhooks signature of every delivery.
type webhookReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	ids []string
	bad []string
}

func newWebhookReceiver(t *testing.T) *webhookReceiver {
	r := &webhookReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := notify.Verify(opsSecret, req.Header, body, 5*time.Minute, time.Now()); err != nil {
			r.bad = append(r.bad, err.Error())
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		r.ids = append(r.ids, req.Header.Get("webhook-id"))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *webhookReceiver) deliveries() (ids, bad []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...), append([]string(nil), r.bad...)
}

// approvalsConfig is a worker config whose "ops" channel posts to url,
// keeping decisions in store (empty: the state directory).
func approvalsConfig(t *testing.T, url, store string) string {
	path := filepath.Join(t.TempDir(), "perimeter.yaml")
	cfg := "version: 1\napprovals:\n  channels:\n    ops: {type: webhook, url: " + url + ", secret_env: OPS_SECRET}\n"
	if store != "" {
		cfg += "  store: " + store + "\n"
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// approvalsCLI runs `perimeter approvals` with args.
func approvalsCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t), append([]string{"approvals"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("perimeter approvals %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// waitPending waits until a request for a call writing file_path is
// pending, and returns it.
func waitPending(t *testing.T, target []string, filePath string) approval.Record {
	t.Helper()
	return waitPendingWhere(t, target, filePath, func(r approval.Record) bool {
		var in struct {
			FilePath string `json:"file_path"`
		}
		_ = json.Unmarshal(r.Input, &in)
		return in.FilePath == filePath
	})
}

// waitPendingWhere waits for a pending request that match accepts; what
// names it in the failure.
func waitPendingWhere(t *testing.T, target []string, what string, match func(approval.Record) bool) approval.Record {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var recs []approval.Record
		if err := json.Unmarshal([]byte(approvalsCLI(t, append(target, "list", "--json")...)), &recs); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if match(r) {
				return r
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no pending request for %s", what)
	return approval.Record{}
}

// TestGatedWritesAreDecidedFromTheCLI: approved, denied (the model sees
// the reason), timed out (denied), and approved with an edited input, each
// through the real worker and CLI; every request notified once, signed.
func TestGatedWritesAreDecidedFromTheCLI(t *testing.T) {
	rcv := newWebhookReceiver(t)
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w := startWorkerEnv(t, cp.url, state, []string{"OPS_SECRET=" + opsSecret},
		"--config", approvalsConfig(t, rcv.srv.URL, ""), "--policy", "testdata/policies/gated.yaml")
	target := []string{"--admin-url", w.admin, "--token-file", filepath.Join(state, "admin-token")}
	id := newSession(t, op, "e2e-gated")

	r := waitPending(t, target, "approved.txt")
	if r.Rule != "writes need a human" || r.Policy != "defer" || r.SessionID != id {
		t.Errorf("request: %+v", r)
	}
	// A waiting call holds its session: the lease (3s here) keeps beating
	// while nobody decides, and no other worker is handed the item.
	time.Sleep(7 * time.Second)
	show := approvalsCLI(t, append(target, "show", r.ToolUseID)...)
	for _, want := range []string{"writes need a human", `"file_path": "approved.txt"`, r.InputSHA256} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	if out := approvalsCLI(t, append(target, "approve", r.ToolUseID, "--by", "alice")...); !strings.Contains(out, "allowed by human:alice") {
		t.Errorf("approve said %q", out)
	}
	r = waitPending(t, target, "denied.txt")
	approvalsCLI(t, append(target, "deny", r.ToolUseID, "--by", "bob", "--reason", "not this file")...)
	// timeout.txt: nobody answers; the ask rule's 2s deadline denies it.
	r = waitPending(t, target, "draft.txt")
	approvalsCLI(t, append(target, "approve", r.ToolUseID, "--by", "carol", "--input", `{"file_path":"draft.txt","content":"edited"}`)...)
	waitPassed(t, op, id)

	var all []approval.Record
	if err := json.Unmarshal([]byte(approvalsCLI(t, append(target, "list", "--all", "--json")...)), &all); err != nil {
		t.Fatal(err)
	}
	decided := map[string]string{}
	for _, r := range all {
		var in struct {
			FilePath string `json:"file_path"`
		}
		_ = json.Unmarshal(r.Input, &in)
		decided[in.FilePath] = string(r.State) + " " + r.DecidedBy
	}
	want := map[string]string{"approved.txt": "allowed human:alice", "denied.txt": "denied human:bob",
		"timeout.txt": "denied timeout", "draft.txt": "allowed human:carol", "": "allowed default"}
	for k, v := range want {
		if decided[k] != v {
			t.Errorf("%q: %q, want %q", k, decided[k], v)
		}
	}
	if strings.Contains(w.out.String(), "lease lost") {
		t.Error("the lease was lost while a call waited for a decision")
	}
	ids, bad := rcv.deliveries()
	if len(bad) > 0 || len(ids) != 3 {
		t.Errorf("webhook deliveries %v (3 defer requests; the ask rule has no channel), rejected: %v", ids, bad)
	}
}

// TestADecisionGivenWhileNoWorkerRunsIsApplied: a worker SIGKILLed while a
// call waits; the decision is given on the store directly; a second worker
// picks the session up, applies it, and nobody is notified twice. With
// SQLite the workers share a state directory; with PostgreSQL they share
// only the store.
func TestADecisionGivenWhileNoWorkerRunsIsApplied(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			rcv := newWebhookReceiver(t)
			cp := startControlPlane(t, t.TempDir(), "")
			op := operator(cp.url)
			state1, state2 := t.TempDir(), t.TempDir()
			cfg := approvalsConfig(t, rcv.srv.URL, "")
			target := []string{"--state-dir", state1}
			if backend == "sqlite" {
				state2 = state1
			} else {
				db := testenv.Postgres(t)
				cfg = approvalsConfig(t, rcv.srv.URL, db)
				target = []string{"--store", db}
			}
			args := []string{"--config", cfg, "--policy", "testdata/policies/gated.yaml"}
			env := []string{"OPS_SECRET=" + opsSecret}
			w1 := startWorkerEnv(t, cp.url, state1, env, args...)
			id := newSession(t, op, "e2e-gated-once")
			r := waitPending(t, target, "survived.txt")
			waitFor(t, "the notification", func() bool { ids, _ := rcv.deliveries(); return len(ids) == 1 })
			w1.kill()

			approvalsCLI(t, append(target, "approve", r.ToolUseID, "--by", "dana")...)
			w2 := startWorkerEnv(t, cp.url, state2, env, args...)
			waitPassed(t, op, id)
			if !strings.Contains(w2.out.String(), "found this call's decision already recorded") {
				t.Error("the second worker did not report finding the decision")
			}
			ids, bad := rcv.deliveries()
			if len(ids) != 1 || len(bad) > 0 {
				t.Errorf("webhook deliveries %v (want exactly one), rejected %v", ids, bad)
			}
		})
	}
}

// TestAnInvalidPolicyIsRejectedAtStartAndAtReload: a worker refuses to
// start on a bad policy, naming line and column; a bad file at SIGHUP is
// refused and the policy in force keeps deciding.
func TestAnInvalidPolicyIsRejectedAtStartAndAtReload(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ndefault:\n  decision: maybe\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "worker", []string{"ANTHROPIC_BASE_URL=" + cp.url, "ANTHROPIC_ENVIRONMENT_ID=" + envID, "ANTHROPIC_ENVIRONMENT_KEY=" + envKey},
		"worker", "--state-dir", t.TempDir(), "--runtime", "process", "--insecure-process-runtime", "--admin-listen", "off", "--policy", bad)
	if code := p.wait(30 * time.Second); code == 0 {
		t.Fatal("the worker started on an invalid policy")
	}
	if !regexp.MustCompile(`bad\.yaml:3:\d+: .*maybe`).MatchString(p.out.String()) {
		t.Errorf("the error does not point at the line and column:\n%s", p.out.String())
	}

	good := filepath.Join(dir, "policy.yaml")
	v1 := "version: 1\ndefault: {decision: allow}\nrules:\n  - name: no shell\n    tools: [bash]\n    decision: deny\n    message: v1 says no\n"
	if err := os.WriteFile(good, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, cp.url, t.TempDir(), "--policy", good)
	if err := os.WriteFile(good, []byte("version: 1\nrules: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.signal(sighup)
	w.waitLog(regexp.MustCompile(`policy reload failed; keeping the policy in force`))
	waitPassed(t, op, newSession(t, op, "e2e-policy"))
	if err := os.WriteFile(good, []byte(strings.Replace(v1, "deny", "allow", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	w.signal(sighup)
	w.waitLog(regexp.MustCompile(`policy reloaded`))
}

// TestAWorkerOnATerminalAsksItsOperator: a worker whose standard input is a
// terminal prompts there for a call a rule asks about, and the answer
// typed decides it.
func TestAWorkerOnATerminalAsksItsOperator(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	go io.Copy(io.Discard, ptmx) // the terminal's echo
	state := t.TempDir()
	w := startProcStdin(t, "worker", tty, []string{"ANTHROPIC_BASE_URL=" + cp.url, "ANTHROPIC_ENVIRONMENT_ID=" + envID, "ANTHROPIC_ENVIRONMENT_KEY=" + envKey},
		"worker", "--state-dir", state, "--runtime", "process", "--insecure-process-runtime", "--admin-listen", "off",
		"--max-idle", "2s", "--policy", "testdata/policies/ask.yaml")
	id := newSession(t, op, "e2e-gated-once")
	w.waitLog(regexp.MustCompile(`the operator at the terminal decides[\s\S]*approve\? \[y/N`))
	if _, err := ptmx.Write([]byte("y\n")); err != nil {
		t.Fatal(err)
	}
	waitPassed(t, op, id)
	var recs []approval.Record
	if err := json.Unmarshal([]byte(approvalsCLI(t, "--state-dir", state, "list", "--all", "--json")), &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || !strings.HasPrefix(recs[0].DecidedBy, "human:") || !strings.HasSuffix(recs[0].DecidedBy, "(terminal)") {
		t.Errorf("decisions: %+v", recs)
	}
}
