package audit

import (
	"encoding/json"
	"strings"
	"time"
)

// Kind names what a record says happened.
type Kind string

// The kinds the worker writes. Each has a data struct below whose JSON field
// names are the record's "data" object.
const (
	KindToolDecision       Kind = "tool_decision"       // ToolDecision
	KindApprovalRequested  Kind = "approval_requested"  // ApprovalRequested
	KindApprovalDecided    Kind = "approval_decided"    // ApprovalDecided
	KindToolResult         Kind = "tool_result"         // ToolResult
	KindEgressRequest      Kind = "egress_request"      // EgressRequest
	KindCredentialInjected Kind = "credential_injected" // CredentialInjected
	KindEgressBlocked      Kind = "egress_blocked"      // EgressBlocked
	KindCheckpoint         Kind = "checkpoint"          // Checkpoint
	KindRestore            Kind = "restore"             // Restore
	KindLeaseLost          Kind = "lease_lost"          // LeaseLost
	KindSessionStarted     Kind = "session_started"     // SessionStarted
	KindSessionEnded       Kind = "session_ended"       // SessionEnded
	// KindLogRepaired is written only by Open, after it cut off a record
	// that a crash left incomplete (LogRepaired).
	KindLogRepaired Kind = "log_repaired"
)

// Genesis is the prev of the first record of a log: 64 zeros.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Record is what a caller appends. The writer adds seq, time, prev and hash.
type Record struct {
	// Kind may be left empty when Data is one of this package's data
	// structs, which name their kind; if both are set they must agree.
	Kind      Kind
	SessionID string
	WorkID    string
	ToolUseID string
	// Data is the kind's data struct (or anything that encodes as a JSON
	// object). It holds ids, names, decisions, sizes and hashes, never tool
	// inputs, outputs or secret values: it is always written.
	Data any
	// Payload holds fields that may carry content (a command, a path, a
	// reviewer's edited input). Only the names Options.KeepPayload lists are
	// written, under "payload"; the rest are dropped.
	Payload map[string]any
}

// Data is implemented by the data structs, so a record's kind follows from
// its data.
type Data interface{ Kind() Kind }

// Entry is one record as read back from the log.
type Entry struct {
	Seq       uint64                     `json:"seq"`
	Time      time.Time                  `json:"time"`
	Kind      Kind                       `json:"kind"`
	SessionID string                     `json:"session_id,omitempty"`
	WorkID    string                     `json:"work_id,omitempty"`
	ToolUseID string                     `json:"tool_use_id,omitempty"`
	Data      json.RawMessage            `json:"data,omitempty"`
	Payload   map[string]json.RawMessage `json:"payload,omitempty"`
	Prev      string                     `json:"prev"`
	Hash      string                     `json:"hash"`
}

// Decode decodes the entry's data into v, typically a pointer to the data
// struct of its kind. An entry without data leaves v unchanged.
func (e Entry) Decode(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	return json.Unmarshal(e.Data, v)
}

// Statuses of a ToolResult.
const (
	StatusOK     = "ok"     // the tool ran and succeeded
	StatusError  = "error"  // the tool ran and failed, timed out or its sandbox died
	StatusDenied = "denied" // the call did not run: the gate or a reviewer refused it
)

// ToolDecision (tool_decision) is the gate's decision on a call, written
// before the call runs.
type ToolDecision struct {
	Tool string `json:"tool"`
	// InputSHA256 is the hex SHA-256 of the input the model sent.
	InputSHA256 string `json:"input_sha256"`
	// Decision is allow, ask, defer or deny.
	Decision string `json:"decision"`
	// DecidedBy says what decided, in the approvals store's form:
	// "rule:<name>", "default" (no rule matched) or "platform" (the
	// session's evaluated_permission was stricter).
	DecidedBy string `json:"decided_by"`
	// Rule is the winning rule's name ("default", "platform" when none).
	Rule string `json:"rule,omitempty"`
	// Policy names the policy in force (its file, or "built-in").
	Policy string `json:"policy,omitempty"`
}

// ApprovalRequested (approval_requested): an ask or defer decision is
// waiting for a human.
type ApprovalRequested struct {
	Tool        string    `json:"tool"`
	InputSHA256 string    `json:"input_sha256"`
	Decision    string    `json:"decision"` // ask or defer
	Rule        string    `json:"rule,omitempty"`
	Deadline    time.Time `json:"deadline,omitzero"`
	// Channels are the notification channels asked (names, not URLs).
	Channels []string `json:"channels,omitempty"`
}

// ApprovalDecided (approval_decided): the wait ended.
type ApprovalDecided struct {
	Approved bool `json:"approved"`
	// DecidedBy is "human:<who>" or "timeout" (the deadline passed), or
	// "platform" when a user.tool_confirmation decided.
	DecidedBy string `json:"decided_by"`
	// Reason is the reviewer's reason; a denial's reason is what the model
	// sees.
	Reason string `json:"reason,omitempty"`
	// EditedInputSHA256 is set when the reviewer approved an edited input:
	// the hash of what ran instead.
	EditedInputSHA256 string `json:"edited_input_sha256,omitempty"`
}

// ToolResult (tool_result): the call's result was posted.
type ToolResult struct {
	Status     string `json:"status"` // StatusOK, StatusError or StatusDenied
	DurationMS int64  `json:"duration_ms"`
	// OutputBytes and OutputSHA256 describe the result text the model got
	// (after size caps and redaction).
	OutputBytes  int64  `json:"output_bytes"`
	OutputSHA256 string `json:"output_sha256,omitempty"`
	Truncated    bool   `json:"truncated,omitempty"`
	// Replayed is set when the result came from the call journal instead
	// of a run (a re-claimed session).
	Replayed bool `json:"replayed,omitempty"`
}

// EgressRequest (egress_request): the proxy forwarded a request, or passed
// a tunnel through. The path and query are not data; put them in Payload.
type EgressRequest struct {
	Method string `json:"method"` // "CONNECT" for a tunnel
	Host   string `json:"host"`
	Port   int    `json:"port,omitempty"`
	Rule   string `json:"rule,omitempty"` // the rule that allowed it
	// Status is what the sandbox received; 0 when it received none.
	Status      int    `json:"status,omitempty"`
	BytesOut    int64  `json:"bytes_out"`
	BytesIn     int64  `json:"bytes_in"`
	DurationMS  int64  `json:"duration_ms"`
	Intercepted bool   `json:"intercepted,omitempty"`
	Reason      string `json:"reason,omitempty"` // why an allowed request failed
}

// EgressBlocked (egress_blocked): the proxy refused a request.
type EgressBlocked struct {
	Method string `json:"method"`
	Host   string `json:"host"`
	Port   int    `json:"port,omitempty"`
	// Rule is the rule whose methods, paths or ports refused it; "" when
	// no rule matched the host.
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason"`
}

// CredentialInjected (credential_injected): the proxy substituted
// credentials into a request. Names only; never values.
type CredentialInjected struct {
	Names  []string `json:"names"`
	Host   string   `json:"host"`
	Method string   `json:"method,omitempty"`
	Rule   string   `json:"rule,omitempty"`
}

// Checkpoint (checkpoint): the workspace was snapshotted before a call that
// may write.
type Checkpoint struct {
	ID         string `json:"checkpoint_id"`
	Bytes      int64  `json:"bytes,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

// Restore (restore): the workspace was rolled back to a checkpoint.
type Restore struct {
	CheckpointID string `json:"checkpoint_id"`
	// By is who asked: "human:<who>", or "worker" for an automatic rollback.
	By     string `json:"by,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// LeaseLost (lease_lost): the worker lost the work item's lease and stopped
// serving the session.
type LeaseLost struct {
	Reason string `json:"reason,omitempty"`
}

// SessionStarted (session_started): a claimed session is being served.
type SessionStarted struct {
	EnvironmentID string `json:"environment_id,omitempty"`
	WorkerID      string `json:"worker_id,omitempty"`
	Agent         string `json:"agent,omitempty"`
	Runtime       string `json:"runtime,omitempty"`
	// Image is the sandbox image, pinned to its digest.
	Image        string `json:"image,omitempty"`
	Policy       string `json:"policy,omitempty"`
	PolicySHA256 string `json:"policy_sha256,omitempty"`
}

// SessionEnded (session_ended): the worker stopped serving the session.
type SessionEnded struct {
	// Reason is how it ended: completed, idle, stopped, drained, lease_lost
	// or error.
	Reason    string `json:"reason"`
	ToolCalls int    `json:"tool_calls"`
}

// LogRepaired (log_repaired): Open found the log's last line incomplete or
// unreadable, the trace of a crash during a write, and cut it off.
type LogRepaired struct {
	File string `json:"file"`
	// Offset is where the dropped bytes began in File.
	Offset        int64  `json:"offset"`
	DroppedBytes  int64  `json:"dropped_bytes"`
	DroppedSHA256 string `json:"dropped_sha256"`
	Reason        string `json:"reason"`
}

func (ToolDecision) Kind() Kind       { return KindToolDecision }
func (ApprovalRequested) Kind() Kind  { return KindApprovalRequested }
func (ApprovalDecided) Kind() Kind    { return KindApprovalDecided }
func (ToolResult) Kind() Kind         { return KindToolResult }
func (EgressRequest) Kind() Kind      { return KindEgressRequest }
func (EgressBlocked) Kind() Kind      { return KindEgressBlocked }
func (CredentialInjected) Kind() Kind { return KindCredentialInjected }
func (Checkpoint) Kind() Kind         { return KindCheckpoint }
func (Restore) Kind() Kind            { return KindRestore }
func (LeaseLost) Kind() Kind          { return KindLeaseLost }
func (SessionStarted) Kind() Kind     { return KindSessionStarted }
func (SessionEnded) Kind() Kind       { return KindSessionEnded }
func (LogRepaired) Kind() Kind        { return KindLogRepaired }

// Decider classifies a decided_by value: rule, human, platform, default or
// timeout ("" for "").
func Decider(decidedBy string) string {
	kind, _, _ := strings.Cut(decidedBy, ":")
	return kind
}
