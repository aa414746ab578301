package scenario

import (
	"fmt"
	"strings"
	"time"
)

// Status is where a scenario run stands.
type Status string

// The run statuses.
const (
	StatusRunning Status = "running"
	StatusPassed  Status = "passed"
	StatusFailed  Status = "failed"
)

// Waiting is what a running scenario waits for.
type Waiting string

// What a run can wait for.
const (
	WaitingNone         Waiting = ""
	WaitingResult       Waiting = "tool_result"
	WaitingConfirmation Waiting = "tool_confirmation"
	WaitingUser         Waiting = "user_message"
)

// Failure is a step whose expectation did not hold.
type Failure struct {
	// Step is 1-based, in file order.
	Step    int    `json:"step"`
	Line    int    `json:"line"`
	Kind    Kind   `json:"kind"`
	Message string `json:"message"`
}

// Progress is one session's run through its scenario. It is persisted with
// the session, so a restarted control plane carries on where it stopped.
type Progress struct {
	Agent      string    `json:"agent"`
	Status     Status    `json:"status"`
	StepsTotal int       `json:"steps_total"`
	StepsDone  int       `json:"steps_done"`
	Failures   []Failure `json:"failures"`
	WaitingFor Waiting   `json:"waiting_for,omitempty"`

	// Next is the index of the step in progress (or to run next).
	Next int `json:"next"`
	// ToolUseID is the event id of the outstanding tool call.
	ToolUseID string `json:"tool_use_id,omitempty"`
	// TurnOpen is whether the last status event was session.status_running.
	TurnOpen bool `json:"turn_open"`
	// Terminated is whether the run emitted session.status_terminated.
	Terminated bool `json:"terminated"`
	// Deadline is when the outstanding call fails for want of a result.
	Deadline time.Time `json:"deadline,omitzero"`
}

// NewProgress is the state of a run that has not started.
func NewProgress(sc *Scenario) *Progress {
	return &Progress{Agent: sc.AgentID, Status: StatusRunning, StepsTotal: len(sc.Steps), Failures: []Failure{}}
}

// Summary is the public view of a run, shown on the session as "scenario".
type Summary struct {
	Agent      string    `json:"agent"`
	Status     Status    `json:"status"`
	StepsTotal int       `json:"steps_total"`
	StepsDone  int       `json:"steps_done"`
	Failures   []Failure `json:"failures"`
	WaitingFor Waiting   `json:"waiting_for,omitempty"`
}

// Summary returns the public view of p.
func (p *Progress) Summary() Summary {
	f := p.Failures
	if f == nil {
		f = []Failure{}
	}
	return Summary{Agent: p.Agent, Status: p.Status, StepsTotal: p.StepsTotal, StepsDone: p.StepsDone, Failures: f, WaitingFor: p.WaitingFor}
}

// Host appends the events a Runner emits to its session. Emit returns the
// new event's id; fields never carry id, type or processed_at.
type Host interface {
	Emit(typ string, fields map[string]any) (id string, err error)
}

// Result is the outcome of one step, for logging.
type Result struct {
	Step    int // 1-based
	Line    int
	Kind    Kind
	Name    string
	Passed  bool
	Message string
}

// Runner advances one session's Progress through its Scenario. It is not
// safe for concurrent use; the control plane serialises calls per session
// and persists Progress afterwards.
type Runner struct {
	sc      *Scenario
	p       *Progress
	host    Host
	now     time.Time
	results []Result
}

// NewRunner returns a Runner for one call; now stamps result deadlines.
func NewRunner(sc *Scenario, p *Progress, host Host, now time.Time) *Runner {
	return &Runner{sc: sc, p: p, host: host, now: now}
}

// Results are the step outcomes decided during this Runner's calls.
func (r *Runner) Results() []Result { return r.results }

// Start begins the run when the session is created. firstMessage is the text
// of a user.message among the session's initial events, if any: it answers
// a first wait_for_user step.
func (r *Runner) Start(firstMessage *string) error {
	if firstMessage != nil && r.p.Next == 0 && r.step().Kind == KindWaitForUser {
		r.p.WaitingFor = WaitingUser
		return r.UserMessage(*firstMessage)
	}
	return r.advance()
}

// UserMessage handles a user.message. It resumes a run waiting for one; a
// finished, not terminated run answers with a short turn of its own; any
// other time the message is only part of the log.
func (r *Runner) UserMessage(text string) error {
	switch {
	case r.p.Status != StatusRunning:
		if r.p.Terminated {
			return nil
		}
		if err := r.openTurn(); err != nil {
			return err
		}
		if _, err := r.host.Emit("agent.message", textContent(fmt.Sprintf("This scripted agent (%s) has finished its scenario: %s.", r.sc.AgentID, r.p.Status))); err != nil {
			return err
		}
		return r.endTurn()
	case r.p.WaitingFor != WaitingUser:
		return nil
	}
	st := r.step()
	r.p.WaitingFor = WaitingNone
	msg := checkText(st.Expect, "the user's message", text)
	if msg != "" {
		msg += "; message: " + quoteShort(text)
	}
	r.complete(st, msg)
	return r.advance()
}

// ToolResult handles user.tool_result and user.custom_tool_result for the
// call with event id toolUseID. Results for other calls are ignored.
func (r *Runner) ToolResult(toolUseID string, isError bool, text string) error {
	if r.p.Status != StatusRunning || r.p.WaitingFor != WaitingResult || toolUseID != r.p.ToolUseID {
		return nil
	}
	st := r.step()
	r.clearCall()
	msg := ""
	if st.WantDenied() {
		msg = "the call ran, but it should have been denied"
	} else {
		msg = checkResult(st.Expect, isError, text)
	}
	r.complete(st, msg)
	// The model resumes with the result.
	if err := r.openTurn(); err != nil {
		return err
	}
	return r.advance()
}

// Confirmation handles user.tool_confirmation for the call with event id
// toolUseID.
func (r *Runner) Confirmation(toolUseID string, allow bool) error {
	if r.p.Status != StatusRunning || r.p.WaitingFor != WaitingConfirmation || toolUseID != r.p.ToolUseID {
		return nil
	}
	st := r.step()
	if allow {
		// The worker runs the call now; the session is working on it.
		r.p.WaitingFor = WaitingResult
		r.setDeadline()
		return r.openTurn()
	}
	r.clearCall()
	msg := ""
	if !st.WantDenied() {
		msg = "the call was denied, but it should have run"
	}
	r.complete(st, msg)
	// The model resumes, told the call was denied.
	if err := r.openTurn(); err != nil {
		return err
	}
	return r.advance()
}

// Interrupt handles a session-wide user.interrupt: an outstanding call fails
// and the run ends with the turn.
func (r *Runner) Interrupt() error {
	if r.p.Status != StatusRunning || (r.p.WaitingFor != WaitingResult && r.p.WaitingFor != WaitingConfirmation) {
		return nil
	}
	st := r.step()
	r.clearCall()
	r.complete(st, "interrupted by user.interrupt before the call was answered")
	r.finish()
	return r.endTurn()
}

// Expire fails an outstanding call whose deadline has passed and terminates
// the session, so a missing or hung worker cannot hold a run forever.
func (r *Runner) Expire() error {
	if r.p.Status != StatusRunning || r.p.Deadline.IsZero() || r.now.Before(r.p.Deadline) {
		return nil
	}
	st := r.step()
	msg := fmt.Sprintf("no result for %s (event %s) within result_timeout %s; is a worker serving this environment, and does it run tool %q?",
		st.Describe(), r.p.ToolUseID, r.sc.ResultTimeout, st.Tool)
	if r.p.WaitingFor == WaitingConfirmation {
		msg = fmt.Sprintf("no user.tool_confirmation for %s (event %s) within result_timeout %s; send one, or add confirm: allow|deny to the step",
			st.Describe(), r.p.ToolUseID, r.sc.ResultTimeout)
	}
	r.clearCall()
	r.complete(st, msg)
	r.finish()
	if _, err := r.host.Emit("agent.message", textContent("Scenario failed: "+msg)); err != nil {
		return err
	}
	return r.terminate()
}

// advance runs steps until one has to wait or the scenario ends.
func (r *Runner) advance() error {
	for r.p.Status == StatusRunning && r.p.WaitingFor == WaitingNone {
		if r.p.Next >= len(r.sc.Steps) {
			// Unreachable for a parsed scenario, whose last step is end.
			r.finish()
			return r.endTurn()
		}
		st := r.step()
		switch st.Kind {
		case KindMessage:
			if err := r.openTurn(); err != nil {
				return err
			}
			if _, err := r.host.Emit("agent.message", textContent(st.Text)); err != nil {
				return err
			}
			r.complete(st, "")
		case KindTool, KindCustomTool:
			if err := r.call(st); err != nil {
				return err
			}
		case KindWaitForUser:
			if st.Text != "" {
				if err := r.openTurn(); err != nil {
					return err
				}
				if _, err := r.host.Emit("agent.message", textContent(st.Text)); err != nil {
					return err
				}
			}
			r.p.WaitingFor = WaitingUser
			if r.p.TurnOpen {
				return r.endTurn()
			}
		case KindEnd:
			r.complete(st, "")
			r.finish()
			if st.End == EndTerminate {
				return r.terminate()
			}
			if err := r.openTurn(); err != nil {
				return err
			}
			return r.endTurn()
		}
	}
	return nil
}

// call emits a tool call and arranges to wait for what answers it.
func (r *Runner) call(st *Step) error {
	if err := r.openTurn(); err != nil {
		return err
	}
	typ := "agent.tool_use"
	fields := map[string]any{"name": st.Tool, "input": st.Input}
	if st.Kind == KindCustomTool {
		typ = "agent.custom_tool_use"
	} else {
		fields["evaluated_permission"] = st.Permission
	}
	id, err := r.host.Emit(typ, fields)
	if err != nil {
		return err
	}
	if st.Permission == PermissionDeny {
		// Never runs and needs no answer; the model is told it was denied.
		msg := ""
		if !st.WantDenied() {
			msg = "the call was denied by policy, but it should have run"
		}
		r.complete(st, msg)
		return nil
	}
	r.p.ToolUseID = id
	r.p.WaitingFor = WaitingResult
	if st.Permission == PermissionAsk {
		r.p.WaitingFor = WaitingConfirmation
	}
	r.setDeadline()
	r.p.TurnOpen = false
	if _, err := r.host.Emit("session.status_idle", map[string]any{
		"stop_reason": map[string]any{"type": "requires_action", "event_ids": []string{id}},
	}); err != nil {
		return err
	}
	if st.Confirm == "" {
		return nil
	}
	// The simulated user answers by itself.
	c := map[string]any{"tool_use_id": id, "result": st.Confirm}
	if st.DenyMessage != "" {
		c["deny_message"] = st.DenyMessage
	}
	if _, err := r.host.Emit("user.tool_confirmation", c); err != nil {
		return err
	}
	return r.Confirmation(id, st.Confirm == PermissionAllow)
}

func (r *Runner) step() *Step { return &r.sc.Steps[r.p.Next] }

func (r *Runner) setDeadline() {
	r.p.Deadline = time.Time{}
	if r.sc.ResultTimeout > 0 {
		r.p.Deadline = r.now.Add(r.sc.ResultTimeout)
	}
}

func (r *Runner) clearCall() {
	r.p.WaitingFor, r.p.ToolUseID, r.p.Deadline = WaitingNone, "", time.Time{}
}

// complete records the outcome of the current step (failed when msg is not
// empty) and moves to the next.
func (r *Runner) complete(st *Step, msg string) {
	n := r.p.Next + 1
	if msg != "" {
		r.p.Failures = append(r.p.Failures, Failure{Step: n, Line: st.Line, Kind: st.Kind, Message: msg})
	}
	r.results = append(r.results, Result{Step: n, Line: st.Line, Kind: st.Kind, Name: st.Describe(), Passed: msg == "", Message: msg})
	r.p.StepsDone++
	r.p.Next++
}

func (r *Runner) finish() {
	r.clearCall()
	r.p.Status = StatusPassed
	if len(r.p.Failures) > 0 {
		r.p.Status = StatusFailed
	}
}

func (r *Runner) openTurn() error {
	if r.p.TurnOpen {
		return nil
	}
	r.p.TurnOpen = true
	_, err := r.host.Emit("session.status_running", nil)
	return err
}

func (r *Runner) endTurn() error {
	r.p.TurnOpen = false
	_, err := r.host.Emit("session.status_idle", map[string]any{"stop_reason": map[string]any{"type": "end_turn"}})
	return err
}

func (r *Runner) terminate() error {
	r.p.TurnOpen, r.p.Terminated = false, true
	_, err := r.host.Emit("session.status_terminated", nil)
	return err
}

func textContent(s string) map[string]any {
	return map[string]any{"content": []map[string]any{{"type": "text", "text": s}}}
}

// checkResult compares a tool result with the expectation; "" means it held.
func checkResult(e Expect, isError bool, text string) string {
	var probs []string
	if e.IsError != nil && *e.IsError != isError {
		probs = append(probs, fmt.Sprintf("expected is_error %t, got %t", *e.IsError, isError))
	}
	if m := checkText(e, "the result", text); m != "" {
		probs = append(probs, m)
	}
	if len(probs) == 0 {
		return ""
	}
	return strings.Join(probs, "; ") + "; output: " + quoteShort(text)
}

// checkText applies contains, not_contains and regex to text.
func checkText(e Expect, what, text string) string {
	var probs []string
	for _, s := range e.Contains {
		if !strings.Contains(text, s) {
			probs = append(probs, fmt.Sprintf("expected %s to contain %q", what, s))
		}
	}
	for _, s := range e.NotContains {
		if strings.Contains(text, s) {
			probs = append(probs, fmt.Sprintf("expected %s not to contain %q", what, s))
		}
	}
	if e.Regex != nil && !e.Regex.MatchString(text) {
		probs = append(probs, fmt.Sprintf("expected %s to match /%s/", what, e.Regex))
	}
	return strings.Join(probs, "; ")
}

// quoteShort quotes at most the first and last 100 bytes of s.
func quoteShort(s string) string {
	const n = 100
	if len(s) <= 2*n {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q … %q (%d bytes)", s[:n], s[len(s)-n:], len(s))
}
