package audit

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Read calls fn with every record of the log in order. It is a reader, not
// a verifier: lines that are not valid records (torn, edited) are skipped;
// Verify says whether the log can be trusted. An error from fn stops it.
func Read(dir string, fn func(Entry) error) error {
	files, _, err := listFiles(dir)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	for _, lf := range files {
		if err := readFile(filepath.Join(dir, lf.name), fn); err != nil {
			return err
		}
	}
	return nil
}

func readFile(path string, fn func(Entry) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			if e, perr := parseLine(line[:len(line)-1]); perr == nil {
				if ferr := fn(e); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
}

// Session summarises one session's records.
type Session struct {
	ID        string    `json:"session_id"`
	WorkID    string    `json:"work_id,omitempty"`
	First     time.Time `json:"first"`
	Last      time.Time `json:"last"`
	Records   int       `json:"records"`
	ToolCalls int       `json:"tool_calls"`
	// EndReason is the reason of its session_ended record, "" while none.
	EndReason string `json:"end_reason,omitempty"`
}

// Sessions lists the sessions in the log, in the order they first appear.
func Sessions(dir string) ([]Session, error) {
	var out []*Session
	index := map[string]*Session{}
	calls := map[string]map[string]bool{}
	err := Read(dir, func(e Entry) error {
		if e.SessionID == "" {
			return nil
		}
		s := index[e.SessionID]
		if s == nil {
			s = &Session{ID: e.SessionID, First: e.Time}
			index[e.SessionID], calls[e.SessionID] = s, map[string]bool{}
			out = append(out, s)
		}
		s.Records++
		s.Last = e.Time
		if e.WorkID != "" {
			s.WorkID = e.WorkID
		}
		if e.ToolUseID != "" {
			calls[e.SessionID][e.ToolUseID] = true
		}
		if e.Kind == KindSessionEnded {
			var d SessionEnded
			_ = e.Decode(&d)
			s.EndReason = d.Reason
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := make([]Session, len(out))
	for i, s := range out {
		s.ToolCalls = len(calls[s.ID])
		res[i] = *s
	}
	return res, nil
}

// Verdicts of a Dossier and an EgressCall.
const (
	VerdictAllowed = "allowed"
	VerdictDenied  = "denied"
	VerdictPending = "pending" // waiting for a human when the log ends
	VerdictBlocked = "blocked" // an egress request the proxy refused
)

// Dossier is everything the log says about one tool call.
type Dossier struct {
	SessionID   string `json:"session_id"`
	ToolUseID   string `json:"tool_use_id"`
	Tool        string `json:"tool,omitempty"`
	InputSHA256 string `json:"input_sha256,omitempty"`
	// Decision is the gate's: allow, ask, defer or deny; Rule decided it.
	Decision string `json:"decision,omitempty"`
	Rule     string `json:"rule,omitempty"`
	// Verdict is allowed, denied, or pending (asked, no answer logged).
	Verdict string `json:"verdict,omitempty"`
	// DecidedBy made the final decision: "rule:<name>", "default",
	// "platform", "human:<who>" or "timeout"; Decider is its class (rule,
	// default, platform, human, timeout).
	DecidedBy string `json:"decided_by,omitempty"`
	Decider   string `json:"decider,omitempty"`
	// ApprovalWait is how long the call waited for a human.
	ApprovalWait time.Duration `json:"-"`
	// EditedInputSHA256 is the input a reviewer's edit ran instead.
	EditedInputSHA256 string `json:"edited_input_sha256,omitempty"`
	CheckpointID      string `json:"checkpoint_id,omitempty"`
	// RestoredTo is the checkpoint the workspace was rolled back to.
	RestoredTo string       `json:"restored_to,omitempty"`
	Egress     []EgressCall `json:"egress,omitempty"`
	// Credentials names the credentials injected into its requests.
	Credentials []string `json:"credentials,omitempty"`
	// Status is ok, error or denied; "" when no result was logged.
	Status      string        `json:"status,omitempty"`
	Duration    time.Duration `json:"-"`
	OutputBytes int64         `json:"output_bytes,omitempty"`
	Replayed    bool          `json:"replayed,omitempty"`
	// Start and End are the times of its first and last record; FirstSeq
	// and LastSeq their seqs.
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	Records  int       `json:"records"`
	// Notes are records that could not be read as their kind says.
	Notes []string `json:"notes,omitempty"`
}

// building is a Dossier being assembled.
type building struct {
	Dossier
	requested time.Time // when it began waiting for a human
}

// EgressCall is one request the call's sandbox made through the proxy.
type EgressCall struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Method   string    `json:"method"`
	Host     string    `json:"host"`
	Port     int       `json:"port,omitempty"`
	Verdict  string    `json:"verdict"` // allowed or blocked
	Status   int       `json:"status,omitempty"`
	BytesOut int64     `json:"bytes_out"`
	BytesIn  int64     `json:"bytes_in"`
	Rule     string    `json:"rule,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// MarshalJSON writes the durations as approval_wait_ms and duration_ms.
func (d Dossier) MarshalJSON() ([]byte, error) {
	type plain Dossier
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return json.Marshal(struct {
		plain
		ApprovalWaitMS float64 `json:"approval_wait_ms,omitempty"`
		DurationMS     float64 `json:"duration_ms,omitempty"`
	}{plain(d), ms(d.ApprovalWait), ms(d.Duration)})
}

// Dossiers groups one session's records by tool call, in the order the
// calls first appear. Records without a tool_use_id (session_started,
// session_ended, lease_lost, egress outside a call) belong to no dossier.
// Like Read, it does not verify the log.
func Dossiers(dir, sessionID string) ([]Dossier, error) {
	var out []*building
	index := map[string]*building{}
	err := Read(dir, func(e Entry) error {
		if e.SessionID != sessionID || e.ToolUseID == "" {
			return nil
		}
		d := index[e.ToolUseID]
		if d == nil {
			d = &building{Dossier: Dossier{SessionID: sessionID, ToolUseID: e.ToolUseID, Start: e.Time, FirstSeq: e.Seq}}
			index[e.ToolUseID] = d
			out = append(out, d)
		}
		d.add(e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := make([]Dossier, len(out))
	for i, d := range out {
		d.Decider = Decider(d.DecidedBy)
		if d.Status == "" && d.Verdict == VerdictDenied {
			d.Status = StatusDenied
		}
		res[i] = d.Dossier
	}
	return res, nil
}

func (d *building) add(e Entry) {
	d.End, d.LastSeq = e.Time, e.Seq
	d.Records++
	decode := func(v any) bool {
		if err := e.Decode(v); err != nil {
			d.Notes = append(d.Notes, fmt.Sprintf("seq %d: %s data does not decode: %v", e.Seq, e.Kind, err))
			return false
		}
		return true
	}
	switch e.Kind {
	case KindToolDecision:
		var v ToolDecision
		if !decode(&v) {
			return
		}
		d.Tool, d.InputSHA256, d.Decision, d.Rule, d.DecidedBy = v.Tool, v.InputSHA256, v.Decision, v.Rule, v.DecidedBy
		switch v.Decision {
		case "allow":
			d.Verdict = VerdictAllowed
		case "deny":
			d.Verdict = VerdictDenied
		default:
			d.Verdict, d.requested = VerdictPending, e.Time
		}
	case KindApprovalRequested:
		var v ApprovalRequested
		if !decode(&v) {
			return
		}
		d.requested = e.Time
		d.Tool = cmp.Or(d.Tool, v.Tool)
		d.InputSHA256 = cmp.Or(d.InputSHA256, v.InputSHA256)
		d.Decision = cmp.Or(d.Decision, v.Decision)
		d.Rule = cmp.Or(d.Rule, v.Rule)
		d.Verdict = VerdictPending
	case KindApprovalDecided:
		var v ApprovalDecided
		if !decode(&v) {
			return
		}
		d.DecidedBy, d.EditedInputSHA256 = v.DecidedBy, v.EditedInputSHA256
		d.Verdict = VerdictDenied
		if v.Approved {
			d.Verdict = VerdictAllowed
		}
		if !d.requested.IsZero() {
			d.ApprovalWait = e.Time.Sub(d.requested)
		}
	case KindCheckpoint:
		var v Checkpoint
		if decode(&v) {
			d.CheckpointID = v.ID
		}
	case KindRestore:
		var v Restore
		if decode(&v) {
			d.RestoredTo = v.CheckpointID
		}
	case KindEgressRequest:
		var v EgressRequest
		if decode(&v) {
			d.Egress = append(d.Egress, EgressCall{Seq: e.Seq, Time: e.Time, Method: v.Method, Host: v.Host, Port: v.Port,
				Verdict: VerdictAllowed, Status: v.Status, BytesOut: v.BytesOut, BytesIn: v.BytesIn, Rule: v.Rule, Reason: v.Reason})
		}
	case KindEgressBlocked:
		var v EgressBlocked
		if decode(&v) {
			d.Egress = append(d.Egress, EgressCall{Seq: e.Seq, Time: e.Time, Method: v.Method, Host: v.Host, Port: v.Port,
				Verdict: VerdictBlocked, Rule: v.Rule, Reason: v.Reason})
		}
	case KindCredentialInjected:
		var v CredentialInjected
		if decode(&v) {
			for _, n := range v.Names {
				if !slices.Contains(d.Credentials, n) {
					d.Credentials = append(d.Credentials, n)
				}
			}
		}
	case KindToolResult:
		var v ToolResult
		if decode(&v) {
			d.Status, d.Duration, d.OutputBytes, d.Replayed = v.Status, time.Duration(v.DurationMS)*time.Millisecond, v.OutputBytes, v.Replayed
		}
	}
}
