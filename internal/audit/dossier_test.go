package audit_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/audit"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// writeSession writes what a worker records for one session with three
// calls (allowed by a rule, asked and approved, denied by default),
// interleaved with another session's records.
func writeSession(t testing.TB, dir string) {
	t.Helper()
	now := t0
	w := open(t, dir, audit.Options{Now: func() time.Time { return now }})
	defer func() {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	rec := func(at time.Duration, session, call string, data audit.Data) {
		t.Helper()
		now = t0.Add(at)
		mustAppend(t, w, audit.Record{SessionID: session, WorkID: "work_1", ToolUseID: call, Data: data})
	}
	const s, other = "sesn_1", "sesn_2"
	rec(0, s, "", audit.SessionStarted{WorkerID: "w1", Runtime: "docker-runsc", Image: "perimeter/sandbox@sha256:" + sha("img")})
	// sevt_a: allowed by a rule; egress with a credential, and one blocked request.
	rec(1*time.Second, s, "sevt_a", audit.ToolDecision{Tool: "bash", InputSHA256: sha("a"), Decision: "allow", DecidedBy: "rule:allow-bash", Rule: "allow-bash"})
	rec(2*time.Second, s, "sevt_a", audit.Checkpoint{ID: "ckpt_1"})
	rec(3*time.Second, other, "sevt_x", audit.ToolDecision{Tool: "read", Decision: "allow", DecidedBy: "default"})
	rec(4*time.Second, s, "sevt_a", audit.CredentialInjected{Names: []string{"github_token"}, Host: "api.github.com"})
	rec(4*time.Second, s, "sevt_a", audit.EgressRequest{Method: "GET", Host: "api.github.com", Port: 443, Rule: "github", Status: 200, BytesOut: 10, BytesIn: 2048, DurationMS: 80})
	rec(5*time.Second, s, "sevt_a", audit.CredentialInjected{Names: []string{"github_token", "npm_token"}, Host: "api.github.com"})
	rec(5*time.Second, s, "sevt_a", audit.EgressBlocked{Method: "POST", Host: "evil.example", Port: 443, Reason: "no rule allows evil.example"})
	rec(6*time.Second, s, "sevt_a", audit.ToolResult{Status: audit.StatusOK, DurationMS: 4500, OutputBytes: 120})
	// sevt_b: asked, approved with an edit after 42s, failed.
	rec(10*time.Second, s, "sevt_b", audit.ToolDecision{Tool: "write", InputSHA256: sha("b"), Decision: "ask", DecidedBy: "rule:ask-writes", Rule: "ask-writes"})
	rec(10*time.Second, s, "sevt_b", audit.ApprovalRequested{Tool: "write", InputSHA256: sha("b"), Decision: "ask", Rule: "ask-writes", Deadline: t0.Add(130 * time.Second), Channels: []string{"slack"}})
	rec(52*time.Second, s, "sevt_b", audit.ApprovalDecided{Approved: true, DecidedBy: "human:alice", Reason: "reviewed", EditedInputSHA256: sha("b2")})
	rec(53*time.Second, s, "sevt_b", audit.ToolResult{Status: audit.StatusError, DurationMS: 250})
	// sevt_c: denied by the default; no result record.
	rec(60*time.Second, s, "sevt_c", audit.ToolDecision{Tool: "edit", InputSHA256: sha("c"), Decision: "deny", DecidedBy: "default", Rule: "default"})
	rec(61*time.Second, s, "", audit.SessionEnded{Reason: "completed", ToolCalls: 3})
}

func TestDossiersGroupACallsRecords(t *testing.T) {
	dir := t.TempDir()
	writeSession(t, dir)
	got, err := audit.Dossiers(dir, "sesn_1")
	if err != nil {
		t.Fatal(err)
	}
	want := []audit.Dossier{{
		SessionID: "sesn_1", ToolUseID: "sevt_a", Tool: "bash", InputSHA256: sha("a"),
		Decision: "allow", Rule: "allow-bash", Verdict: "allowed", DecidedBy: "rule:allow-bash", Decider: "rule",
		CheckpointID: "ckpt_1",
		Egress: []audit.EgressCall{
			{Seq: 6, Time: t0.Add(4 * time.Second), Method: "GET", Host: "api.github.com", Port: 443, Verdict: "allowed", Status: 200, BytesOut: 10, BytesIn: 2048, Rule: "github"},
			{Seq: 8, Time: t0.Add(5 * time.Second), Method: "POST", Host: "evil.example", Port: 443, Verdict: "blocked", Reason: "no rule allows evil.example"},
		},
		Credentials: []string{"github_token", "npm_token"},
		Status:      "ok", Duration: 4500 * time.Millisecond, OutputBytes: 120,
		Start: t0.Add(time.Second), End: t0.Add(6 * time.Second), FirstSeq: 2, LastSeq: 9, Records: 7,
	}, {
		SessionID: "sesn_1", ToolUseID: "sevt_b", Tool: "write", InputSHA256: sha("b"),
		Decision: "ask", Rule: "ask-writes", Verdict: "allowed", DecidedBy: "human:alice", Decider: "human",
		ApprovalWait: 42 * time.Second, EditedInputSHA256: sha("b2"),
		Status: "error", Duration: 250 * time.Millisecond,
		Start: t0.Add(10 * time.Second), End: t0.Add(53 * time.Second), FirstSeq: 10, LastSeq: 13, Records: 4,
	}, {
		SessionID: "sesn_1", ToolUseID: "sevt_c", Tool: "edit", InputSHA256: sha("c"),
		Decision: "deny", Rule: "default", Verdict: "denied", DecidedBy: "default", Decider: "default",
		Status: "denied",
		Start:  t0.Add(60 * time.Second), End: t0.Add(60 * time.Second), FirstSeq: 14, LastSeq: 14, Records: 1,
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Dossiers (-want +got):\n%s", diff)
	}

	b, err := json.Marshal(got[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"approval_wait_ms":42000`, `"duration_ms":250`, `"decider":"human"`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("JSON %s lacks %s", b, s)
		}
	}
}

func TestDossiersOfAnUnknownSessionAreEmpty(t *testing.T) {
	dir := t.TempDir()
	writeSession(t, dir)
	got, err := audit.Dossiers(dir, "sesn_nope")
	if err != nil || len(got) != 0 {
		t.Errorf("Dossiers = %v, %v; want none", got, err)
	}
}

func TestSessionsSummariseTheLog(t *testing.T) {
	dir := t.TempDir()
	writeSession(t, dir)
	got, err := audit.Sessions(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []audit.Session{
		{ID: "sesn_1", WorkID: "work_1", First: t0, Last: t0.Add(61 * time.Second), Records: 14, ToolCalls: 3, EndReason: "completed"},
		{ID: "sesn_2", WorkID: "work_1", First: t0.Add(3 * time.Second), Last: t0.Add(3 * time.Second), Records: 1, ToolCalls: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Sessions (-want +got):\n%s", diff)
	}
}
