package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/audit"
)

// writeAuditLog writes one session with an allowed call and an approved
// one, as a worker would, and returns the last seq and hash.
func writeAuditLog(t *testing.T, dir string) (uint64, string) {
	t.Helper()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	w, err := audit.Open(dir, audit.Options{Now: func() time.Time { now = now.Add(time.Second); return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, r := range []audit.Record{
		{SessionID: "sesn_1", Data: audit.SessionStarted{Runtime: "docker-runsc"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.ToolDecision{Tool: "bash", InputSHA256: "ab12", Decision: "allow", DecidedBy: "rule:allow-bash", Rule: "allow-bash"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.Checkpoint{ID: "ckpt_1"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.CredentialInjected{Names: []string{"github_token"}, Host: "api.github.com"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.EgressRequest{Method: "GET", Host: "api.github.com", Port: 443, Status: 200, BytesIn: 2048}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.EgressBlocked{Method: "POST", Host: "evil.example", Port: 443, Reason: "no rule allows evil.example"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_a", Data: audit.ToolResult{Status: "ok", DurationMS: 1500}},
		{SessionID: "sesn_1", ToolUseID: "sevt_b", Data: audit.ToolDecision{Tool: "write", Decision: "ask", DecidedBy: "rule:ask-writes", Rule: "ask-writes"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_b", Data: audit.ApprovalRequested{Tool: "write", Decision: "ask"}},
		{SessionID: "sesn_1", ToolUseID: "sevt_b", Data: audit.ApprovalDecided{Approved: false, DecidedBy: "human:alice", Reason: "not on a Friday"}},
		{SessionID: "sesn_1", Data: audit.SessionEnded{Reason: "completed", ToolCalls: 2}},
	} {
		if err := w.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	seq, hash := w.Last()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return seq, hash
}

// runAudit runs `perimeter audit args...`, under a root that has the
// global --config flag, as in the binary.
func runAudit(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "perimeter", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().String("config", "", "")
	root.AddCommand(newAuditCmd())
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"audit"}, args...))
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func contains(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}

func TestAuditVerifyPassesAGoodLog(t *testing.T) {
	dir := t.TempDir()
	seq, hash := writeAuditLog(t, dir)
	out, _, err := runAudit(t, "verify", "--dir", dir)
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	contains(t, "output", out, "ok: 11 records in 1 file verified", "last record: seq 11 hash "+hash, "head anchor: seq 11, reached")
	if seq != 11 {
		t.Errorf("seq %d, want 11", seq)
	}
}

func TestAuditVerifyFailsNamingTheFirstBadRecord(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir)
	path := filepath.Join(dir, "audit-000001.jsonl")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runAudit(t, "verify", "--dir", dir)
	if err == nil {
		t.Fatalf("verify passed an edited log:\n%s", out)
	}
	contains(t, "error", err.Error(), "audit-000001.jsonl line 2 (seq 2): hash mismatch: record edited")
	contains(t, "output", out, "FAILED: audit-000001.jsonl line 2 (seq 2): hash mismatch: record edited", `"decision":"deny"`, "1 record before it verified")
}

func TestAuditVerifyChecksAnExpectedAnchor(t *testing.T) {
	dir := t.TempDir()
	_, hash := writeAuditLog(t, dir)
	if out, _, err := runAudit(t, "verify", "--dir", dir, "--expect", "11:"+hash[:20]); err != nil {
		t.Errorf("verify --expect the right anchor: %v\n%s", err, out)
	}
	for _, tc := range []struct{ expect, want string }{
		{"11:" + strings.Repeat("0", 64), "seq 11 has hash " + hash},
		{"12:" + hash, "the log ends at seq 11, before the expected seq 12"},
		{"11:abc", "want SEQ:HASH"},
	} {
		if _, _, err := runAudit(t, "verify", "--dir", dir, "--expect", tc.expect); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("verify --expect %s = %v, want an error with %q", tc.expect, err, tc.want)
		}
	}
}

func TestAuditFindsTheLogInTheStateDirectory(t *testing.T) {
	state := t.TempDir()
	writeAuditLog(t, filepath.Join(state, "audit"))
	if out, _, err := runAudit(t, "verify", "--state-dir", state); err != nil || !strings.Contains(out, "ok: 11 records") {
		t.Errorf("verify --state-dir: %v\n%s", err, out)
	}
	cfg := filepath.Join(t.TempDir(), "perimeter.yaml")
	if err := os.WriteFile(cfg, []byte("version: 1\nworker:\n  state_dir: "+state+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _, err := runAudit(t, "verify", "--config", cfg); err != nil || !strings.Contains(out, "ok: 11 records") {
		t.Errorf("verify --config: %v\n%s", err, out)
	}
	if _, _, err := runAudit(t, "verify", "--state-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "set --dir or --state-dir") {
		t.Errorf("verify of a state directory without a log = %v, want a hint", err)
	}
}

func TestAuditShowPrintsEachToolCallsDossier(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir)
	out, stderr, err := runAudit(t, "show", "--dir", dir, "--session", "sesn_1")
	if err != nil {
		t.Fatalf("show: %v\n%s", err, stderr)
	}
	contains(t, "show", out,
		"session sesn_1: 2 tool calls",
		"sevt_a  bash  ok  1.5s",
		"decision      allow by rule:allow-bash",
		"checkpoint    ckpt_1",
		"egress        GET  api.github.com:443  allowed  200  out 0 B, in 2048 B",
		"POST  evil.example:443  blocked  no rule allows evil.example",
		"credentials   github_token",
		"sevt_b  write  denied",
		"decision      ask (rule ask-writes) → denied by human:alice after 1s",
	)
	if stderr != "" {
		t.Errorf("stderr: %s", stderr)
	}

	out, _, err = runAudit(t, "show", "--dir", dir, "--session", "sesn_1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ds []map[string]any
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if len(ds) != 2 || ds[0]["tool_use_id"] != "sevt_a" || ds[0]["duration_ms"] != 1500.0 || ds[1]["decider"] != "human" {
		t.Errorf("--json = %v", ds)
	}
}

func TestAuditShowListsSessions(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir)
	out, _, err := runAudit(t, "show", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	contains(t, "show", out, "SESSION", "sesn_1", "completed", "show one with: perimeter audit show --session")
	if _, _, err := runAudit(t, "show", "--dir", dir, "--session", "sesn_nope"); err == nil || !strings.Contains(err.Error(), "no tool calls of session sesn_nope") {
		t.Errorf("show of an unknown session = %v", err)
	}
}

func TestAuditShowWarnsWhenTheLogDoesNotVerify(t *testing.T) {
	dir := t.TempDir()
	writeAuditLog(t, dir)
	path := filepath.Join(dir, "audit-000001.jsonl")
	b, _ := os.ReadFile(path)
	ls := bytes.SplitAfter(b, []byte("\n"))
	if err := os.WriteFile(path, bytes.Join(append(ls[:2], ls[3:]...), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runAudit(t, "show", "--dir", dir, "--session", "sesn_1")
	if err != nil {
		t.Fatal(err)
	}
	contains(t, "stderr", stderr, "warning: the audit log does not verify", "line 3 (seq 4): seq 4 follows 2")
}

func TestAuditHelpTeachesByExample(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"verify", "--help"}, {"show", "--help"}} {
		out, _, err := runAudit(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		contains(t, strings.Join(args, " "), out, "Examples:", "perimeter audit ")
	}
}
