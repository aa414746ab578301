package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestAnOperatorRollsALiveSessionBack: the e2e-checkpoint session wrecks
// its workspace; while its next call waits for approval, the operator
// restores the workspace to just before the wrecking call through the
// CLI; the session goes on with the restored files (contents, links,
// modes, directories; nothing added since), is told about it, and the
// audit log records the restore.
func TestAnOperatorRollsALiveSessionBack(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w := startWorker(t, cp.url, state, "--policy", "testdata/policies/checkpoint.yaml")
	target := []string{"--admin-url", w.admin, "--token-file", filepath.Join(state, "admin-token")}
	id := newSession(t, op, "e2e-checkpoint")

	// The cat waits for approval; the wrecking call is the one before it.
	pending := waitPendingWhere(t, target, "the session's cat", func(r approval.Record) bool { return r.SessionID == id })
	wrecking := waitEvent(t, op, id, func(ev map[string]any) bool {
		in, _ := ev["input"].(map[string]any)
		cmd, _ := in["command"].(string)
		return ev["type"] == "agent.tool_use" && strings.Contains(cmd, "WRECKED")
	})
	wreck, _ := wrecking["id"].(string)
	if b, _ := os.ReadFile(filepath.Join(state, "workspaces", id, "notes", "plan.md")); string(b) != "WRECKED\n" {
		t.Fatalf("before the restore the plan is %q", b)
	}
	out, err := exec.Command(testenv.Binary(t), "checkpoints", "restore", "--session", id, "--before", wreck,
		"--by", "alice", "--admin-url", w.admin, "--token-file", filepath.Join(state, "admin-token")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "restored "+id) {
		t.Fatalf("perimeter checkpoints restore: %v\n%s", err, out)
	}
	approvalsCLI(t, append(target, "approve", pending.ToolUseID, "--by", "alice")...)
	waitPassed(t, op, id)

	w.signal(sigterm)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("worker exited %d", code)
	}
	// With the worker gone, the CLI reads the store itself.
	list, err := exec.Command(testenv.Binary(t), "checkpoints", "list", "--session", id, "--state-dir", state).CombinedOutput()
	if err != nil || !strings.Contains(string(list), wreck) {
		t.Errorf("perimeter checkpoints list: %v\n%s", err, list)
	}
	// Read, glob and grep take no checkpoint; write and bash do: 4 calls.
	if n := strings.Count(strings.TrimSpace(string(list)), "\n"); n != 4 {
		t.Errorf("%d checkpoints listed, want 4:\n%s", n, list)
	}
	show, err := exec.Command(testenv.Binary(t), "audit", "show", "--session", id, "--state-dir", state, "--json").CombinedOutput()
	if err != nil || !strings.Contains(string(show), `"restored_to"`) || !strings.Contains(string(show), `"checkpoint_id"`) {
		t.Errorf("the audit dossiers lack the checkpoint or the restore: %v\n%s", err, show)
	}
}

// TestASessionStartsFromTheWorkspaceItsKeySaved: two sessions whose
// metadata carry the same persistence key; the second starts with the
// first one's files, and a session with another key starts empty.
func TestASessionStartsFromTheWorkspaceItsKeySaved(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "persist.yaml")
	writeFile(t, cfg, "version: 1\ncheckpoints:\n  persist_key: workspace\n")
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w := startWorker(t, cp.url, state, "--config", cfg)
	newWith := func(agent, key string) string {
		return newSessionWith(t, op, agent, map[string]string{"workspace": key})
	}
	a := newWith("e2e-persist-a", "project-1")
	waitPassed(t, op, a)
	waitFor(t, "the workspace to be saved", func() bool { return strings.Contains(w.out.String(), "saved the workspace for later sessions") })
	b := newWith("e2e-persist-b", "project-1")
	waitPassed(t, op, b)
	c := newWith("e2e-persist-b", "project-2")
	waitFor(t, "the session with another key to fail", func() bool { return scenarioOf(t, op, c).Status == "failed" })
	if _, err := os.Stat(filepath.Join(state, "workspaces", c, "latest")); !os.IsNotExist(err) {
		t.Errorf("a session with another key found the first one's files: %v", err)
	}
}

// TestWorkersShareSavedWorkspacesThroughAnObjectStore: two workers with
// state directories of their own (two hosts) and one S3 bucket; a session
// on the first saves its workspace, a session with the same key on the
// second starts from it.
func TestWorkersShareSavedWorkspacesThroughAnObjectStore(t *testing.T) {
	const keyID, secret = "AKIAE2EPERSIST", "e2e-s3-secret-1b2c3d"
	backend := s3mem.New()
	if err := backend.CreateBucket("workspaces"); err != nil {
		t.Fatal(err)
	}
	var requests, signed atomic.Int64
	fake := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog())).Server()
	s3srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if strings.Contains(r.Header.Get("Authorization"), "Credential="+keyID+"/") {
			signed.Add(1)
		}
		fake.ServeHTTP(w, r)
	}))
	defer s3srv.Close()
	cfg := filepath.Join(t.TempDir(), "persist.yaml")
	writeFile(t, cfg, "version: 1\ncheckpoints:\n  persist_key: workspace\n  remote:\n"+
		"    endpoint: "+s3srv.URL+"\n    bucket: workspaces\n    prefix: e2e\n    disable_tls: true\n")
	env := []string{"AWS_ACCESS_KEY_ID=" + keyID, "AWS_SECRET_ACCESS_KEY=" + secret}

	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	newWith := func(agent, key string) string {
		return newSessionWith(t, op, agent, map[string]string{"workspace": key})
	}

	first := startWorkerEnv(t, cp.url, t.TempDir(), env, "--config", cfg)
	a := newWith("e2e-persist-a", "project-1")
	waitPassed(t, op, a)
	waitFor(t, "the workspace to reach the object store", func() bool {
		return strings.Contains(first.out.String(), "copied the saved workspace to the object store")
	})
	first.signal(sigterm)
	if code := first.wait(30 * time.Second); code != 0 {
		t.Fatalf("first worker exited %d", code)
	}

	second := startWorkerEnv(t, cp.url, t.TempDir(), env, "--config", cfg)
	b := newWith("e2e-persist-b", "project-1")
	waitPassed(t, op, b)
	if !strings.Contains(second.out.String(), "fetched the saved workspace from the object store") {
		t.Errorf("the second worker did not fetch the workspace from the object store:\n%s", second.out.String())
	}
	if requests.Load() == 0 || signed.Load() != requests.Load() {
		t.Errorf("%d of %d requests to the object store were signed with the configured key", signed.Load(), requests.Load())
	}
	for _, out := range []string{first.out.String(), second.out.String()} {
		if strings.Contains(out, secret) {
			t.Errorf("a worker logged the object store's secret key")
		}
	}
}

// TestAFailedCallIsRolledBackWhenItsRuleSaysSo: rollback: on_error
// restores the workspace after a call that failed half way; read_only
// calls and the read tool take no checkpoint.
func TestAFailedCallIsRolledBackWhenItsRuleSaysSo(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := t.TempDir()
	w := startWorker(t, cp.url, state, "--policy", "testdata/policies/rollback.yaml")
	id := newSession(t, op, "e2e-rollback")
	waitPassed(t, op, id)
	w.signal(sigterm)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Fatalf("worker exited %d", code)
	}
	list, err := exec.Command(testenv.Binary(t), "checkpoints", "list", "--session", id, "--state-dir", state, "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("perimeter checkpoints list: %v\n%s", err, list)
	}
	var cps []struct{ ToolUseID string }
	if err := json.Unmarshal(list, &cps); err != nil {
		t.Fatalf("%v\n%s", err, list)
	}
	// The write and the failing bash; not the ls (read_only) nor the read.
	if len(cps) != 2 {
		t.Errorf("%d checkpoints, want 2 (write, the failing bash): %s", len(cps), list)
	}
}
