package scenario

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// recordingHost records emitted events as "type" or "type:detail".
type recordingHost struct {
	n      int
	events []string
	last   map[string]any
}

func (h *recordingHost) Emit(typ string, fields map[string]any) (string, error) {
	h.n++
	id := fmt.Sprintf("sevt_%d", h.n)
	desc := typ
	switch typ {
	case "agent.tool_use", "agent.custom_tool_use":
		desc += ":" + fields["name"].(string)
		if p, ok := fields["evaluated_permission"]; ok && p != PermissionAllow {
			desc += ":" + p.(string)
		}
	case "session.status_idle":
		sr := fields["stop_reason"].(map[string]any)
		desc += ":" + sr["type"].(string)
	case "user.tool_confirmation":
		desc += ":" + fields["result"].(string)
	case "agent.message":
		desc += ":" + fields["content"].([]map[string]any)[0]["text"].(string)
	}
	h.events = append(h.events, desc)
	h.last = fields
	return id, nil
}

func (h *recordingHost) take() []string {
	e := h.events
	h.events = nil
	return e
}

func mustParse(t *testing.T, src string) *Scenario {
	t.Helper()
	sc, err := Parse("t.yaml", []byte("version: 1\nresult_timeout: 10s\nsteps:\n"+src))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func TestRunnerEmitsToolCallsOneAtATime(t *testing.T) {
	sc := mustParse(t, `
  - message: hi
  - tool: bash
    input: {command: ls}
    expect: {is_error: false, contains: ok}
  - tool: read
    input: {file_path: x}
    expect: {is_error: true}
  - end: terminate
`)
	h := &recordingHost{}
	p := NewProgress(sc)
	now := time.Unix(1000, 0)
	if err := NewRunner(sc, p, h, now).Start(nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"session.status_running", "agent.message:hi", "agent.tool_use:bash", "session.status_idle:requires_action"}
	if diff := cmp.Diff(want, h.take()); diff != "" {
		t.Fatalf("start (-want +got):\n%s", diff)
	}
	if p.WaitingFor != WaitingResult || p.ToolUseID != "sevt_3" || !p.Deadline.Equal(now.Add(10*time.Second)) {
		t.Fatalf("progress = %+v", p)
	}
	// A result for another call changes nothing.
	if err := NewRunner(sc, p, h, now).ToolResult("sevt_99", false, "ok"); err != nil || len(h.events) != 0 || p.StepsDone != 1 {
		t.Fatalf("stray result: err=%v events=%v done=%d", err, h.events, p.StepsDone)
	}
	if err := NewRunner(sc, p, h, now).ToolResult("sevt_3", false, "ok\n"); err != nil {
		t.Fatal(err)
	}
	want = []string{"session.status_running", "agent.tool_use:read", "session.status_idle:requires_action"}
	if diff := cmp.Diff(want, h.take()); diff != "" {
		t.Fatalf("after first result (-want +got):\n%s", diff)
	}
	if err := NewRunner(sc, p, h, now).ToolResult(p.ToolUseID, true, "no such file"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"session.status_running", "session.status_terminated"}, h.take()); diff != "" {
		t.Fatalf("end (-want +got):\n%s", diff)
	}
	if p.Status != StatusPassed || p.StepsDone != 4 || len(p.Failures) != 0 || !p.Terminated {
		t.Errorf("progress = %+v", p)
	}
}

func TestRunnerRecordsEveryFailedExpectation(t *testing.T) {
	sc := mustParse(t, `
  - tool: bash
    input: {command: ls}
    expect: {is_error: false, contains: [alpha, beta], not_contains: secret, regex: '^\d+$'}
  - end: end_turn
`)
	h := &recordingHost{}
	p := NewProgress(sc)
	run := NewRunner(sc, p, h, time.Now())
	if err := run.Start(nil); err != nil {
		t.Fatal(err)
	}
	if err := run.ToolResult(p.ToolUseID, true, "alpha secret"); err != nil {
		t.Fatal(err)
	}
	if p.Status != StatusFailed || len(p.Failures) != 1 {
		t.Fatalf("progress = %+v", p)
	}
	f := p.Failures[0]
	for _, want := range []string{"expected is_error false, got true", `contain "beta"`, `not to contain "secret"`, `match /^\d+$/`, `output: "alpha secret"`} {
		if !strings.Contains(f.Message, want) {
			t.Errorf("failure message %q lacks %q", f.Message, want)
		}
	}
	if f.Step != 1 || f.Line != 5 || f.Kind != KindTool {
		t.Errorf("failure = %+v", f)
	}
	if res := run.Results(); len(res) != 2 || res[0].Passed || !res[1].Passed {
		t.Errorf("results = %+v", res)
	}
	if got := h.take(); got[len(got)-1] != "session.status_idle:end_turn" {
		t.Errorf("last event = %v, want idle end_turn", got)
	}
}

func TestRunnerConfirmationFlows(t *testing.T) {
	tests := []struct {
		name       string
		step       string
		answer     func(r *Runner, id string) error
		wantEvents []string
		wantStatus Status
	}{
		{
			name: "simulated user allows, worker answers",
			step: "permission: ask\n    confirm: allow",
			answer: func(r *Runner, id string) error {
				return r.ToolResult(id, false, "done")
			},
			wantEvents: []string{"session.status_running", "agent.tool_use:bash:ask", "session.status_idle:requires_action",
				"user.tool_confirmation:allow", "session.status_running", "session.status_terminated"},
			wantStatus: StatusPassed,
		},
		{
			name:   "simulated user denies",
			step:   "permission: ask\n    confirm: deny\n    deny_message: no",
			answer: func(*Runner, string) error { return nil },
			wantEvents: []string{"session.status_running", "agent.tool_use:bash:ask", "session.status_idle:requires_action",
				"user.tool_confirmation:deny", "session.status_running", "session.status_terminated"},
			wantStatus: StatusPassed,
		},
		{
			name:   "operator denies a call expected to run",
			step:   "permission: ask",
			answer: func(r *Runner, id string) error { return r.Confirmation(id, false) },
			wantEvents: []string{"session.status_running", "agent.tool_use:bash:ask", "session.status_idle:requires_action",
				"session.status_running", "session.status_terminated"},
			wantStatus: StatusFailed,
		},
		{
			name:       "policy denies",
			step:       "permission: deny",
			answer:     func(*Runner, string) error { return nil },
			wantEvents: []string{"session.status_running", "agent.tool_use:bash:deny", "session.status_terminated"},
			wantStatus: StatusPassed,
		},
		{
			name: "allowed call that should have been denied",
			step: "permission: ask\n    expect: {denied: true}",
			answer: func(r *Runner, id string) error {
				if err := r.Confirmation(id, true); err != nil {
					return err
				}
				return r.ToolResult(id, false, "ran")
			},
			wantEvents: []string{"session.status_running", "agent.tool_use:bash:ask", "session.status_idle:requires_action",
				"session.status_running", "session.status_terminated"},
			wantStatus: StatusFailed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := mustParse(t, "  - tool: bash\n    input: {command: rm x}\n    "+tt.step+"\n  - end: terminate\n")
			h := &recordingHost{}
			p := NewProgress(sc)
			run := NewRunner(sc, p, h, time.Now())
			if err := run.Start(nil); err != nil {
				t.Fatal(err)
			}
			if err := tt.answer(run, "sevt_2"); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantEvents, h.take()); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if p.Status != tt.wantStatus {
				t.Errorf("status = %s, want %s (failures %+v)", p.Status, tt.wantStatus, p.Failures)
			}
		})
	}
}

func TestRunnerWaitsForUserMessages(t *testing.T) {
	sc := mustParse(t, `
  - wait_for_user:
    expect: {contains: release}
  - message: working
  - wait_for_user: Which file?
    expect: {regex: '\.md'}
  - end: end_turn
`)
	t.Run("first message in initial events starts the run", func(t *testing.T) {
		h := &recordingHost{}
		p := NewProgress(sc)
		first := "cut a release"
		if err := NewRunner(sc, p, h, time.Now()).Start(&first); err != nil {
			t.Fatal(err)
		}
		want := []string{"session.status_running", "agent.message:working", "agent.message:Which file?", "session.status_idle:end_turn"}
		if diff := cmp.Diff(want, h.take()); diff != "" {
			t.Fatalf("(-want +got):\n%s", diff)
		}
		if p.WaitingFor != WaitingUser || p.StepsDone != 2 {
			t.Fatalf("progress = %+v", p)
		}
		if err := NewRunner(sc, p, h, time.Now()).UserMessage("notes.txt please"); err != nil {
			t.Fatal(err)
		}
		want = []string{"session.status_running", "session.status_idle:end_turn"}
		if diff := cmp.Diff(want, h.take()); diff != "" {
			t.Fatalf("(-want +got):\n%s", diff)
		}
		if p.Status != StatusFailed || len(p.Failures) != 1 || !strings.Contains(p.Failures[0].Message, `message: "notes.txt please"`) {
			t.Errorf("progress = %+v", p)
		}
		// A finished run answers later messages with a short turn.
		if err := NewRunner(sc, p, h, time.Now()).UserMessage("hello?"); err != nil {
			t.Fatal(err)
		}
		if got := h.take(); len(got) != 3 || got[2] != "session.status_idle:end_turn" {
			t.Errorf("reply turn = %v", got)
		}
	})
	t.Run("without a first message the session waits silently", func(t *testing.T) {
		h := &recordingHost{}
		p := NewProgress(sc)
		if err := NewRunner(sc, p, h, time.Now()).Start(nil); err != nil {
			t.Fatal(err)
		}
		if len(h.events) != 0 || p.WaitingFor != WaitingUser {
			t.Fatalf("events = %v, progress = %+v", h.events, p)
		}
	})
}

func TestRunnerExpireTerminatesAnUnansweredCall(t *testing.T) {
	sc := mustParse(t, "  - tool: bash\n    input: {command: sleep 1}\n  - end: end_turn\n")
	h := &recordingHost{}
	p := NewProgress(sc)
	start := time.Unix(0, 0)
	if err := NewRunner(sc, p, h, start).Start(nil); err != nil {
		t.Fatal(err)
	}
	h.take()
	if err := NewRunner(sc, p, h, start.Add(9*time.Second)).Expire(); err != nil || len(h.events) != 0 {
		t.Fatalf("early expire: err=%v events=%v", err, h.events)
	}
	if err := NewRunner(sc, p, h, start.Add(10*time.Second)).Expire(); err != nil {
		t.Fatal(err)
	}
	got := h.take()
	if len(got) != 2 || !strings.HasPrefix(got[0], "agent.message:Scenario failed: no result for tool bash") || got[1] != "session.status_terminated" {
		t.Errorf("events = %v", got)
	}
	if p.Status != StatusFailed || !p.Terminated || !p.Deadline.IsZero() || p.StepsDone != 1 {
		t.Errorf("progress = %+v", p)
	}
	// A late result is ignored.
	if err := NewRunner(sc, p, h, start).ToolResult("sevt_2", false, ""); err != nil || len(h.events) != 0 {
		t.Errorf("late result: err=%v events=%v", err, h.events)
	}
}

func TestRunnerInterruptEndsTheRun(t *testing.T) {
	sc := mustParse(t, "  - tool: bash\n    input: {command: sleep 1}\n  - end: terminate\n")
	h := &recordingHost{}
	p := NewProgress(sc)
	run := NewRunner(sc, p, h, time.Now())
	if err := run.Start(nil); err != nil {
		t.Fatal(err)
	}
	h.take()
	if err := run.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"session.status_idle:end_turn"}, h.take()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if p.Status != StatusFailed || !strings.Contains(p.Failures[0].Message, "interrupted") {
		t.Errorf("progress = %+v", p)
	}
}
