package policy

import (
	"fmt"
	"time"
)

// Decision is what happens to a tool call. Decisions are ordered by
// strictness, so the stricter of two is the larger: Allow < Ask < Defer < Deny.
type Decision int

const (
	// Allow runs the call.
	Allow Decision = iota
	// Ask holds the call until a human approves or rejects it, within a short
	// deadline, while the session waits.
	Ask
	// Defer parks the call for an asynchronous review with a longer deadline.
	Defer
	// Deny refuses the call; the model sees the rule's message.
	Deny
)

// Deadlines of ask and defer outcomes.
const (
	DefaultAskDeadline   = 2 * time.Minute
	DefaultDeferDeadline = time.Hour
	// MaxDeadlineAllowed is the longest deadline a policy may set.
	MaxDeadlineAllowed = 24 * time.Hour
)

var decisionNames = [...]string{Allow: "allow", Ask: "ask", Defer: "defer", Deny: "deny"}

// String returns "allow", "ask", "defer" or "deny".
func (d Decision) String() string {
	if d < Allow || d > Deny {
		return fmt.Sprintf("Decision(%d)", int(d))
	}
	return decisionNames[d]
}

// ParseDecision parses the name of a decision, as String returns it.
func ParseDecision(s string) (Decision, error) {
	for d, name := range decisionNames {
		if s == name {
			return Decision(d), nil
		}
	}
	return 0, fmt.Errorf("invalid decision %q (want allow, deny, ask or defer)", s)
}

// MarshalText encodes d as its name, so JSON shows "deny", not 3.
func (d Decision) MarshalText() ([]byte, error) {
	if d < Allow || d > Deny {
		return nil, fmt.Errorf("invalid decision %d", int(d))
	}
	return []byte(decisionNames[d]), nil
}

// UnmarshalText parses a decision's name.
func (d *Decision) UnmarshalText(b []byte) error {
	v, err := ParseDecision(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// defaultDeadline is the deadline of an ask or defer outcome that sets none.
func (d Decision) defaultDeadline() time.Duration {
	switch d {
	case Ask:
		return DefaultAskDeadline
	case Defer:
		return DefaultDeferDeadline
	}
	return 0
}

// waits reports whether the decision waits for a human, so deadline,
// channels and allow_edit apply to it.
func (d Decision) waits() bool { return d == Ask || d == Defer }

// platformDecision maps the control plane's evaluated_permission for a call
// to the decision it asks for. "" and "allow" express no opinion (Allow);
// a value this package does not know is treated as "ask".
func platformDecision(p string) Decision {
	switch p {
	case "", "allow":
		return Allow
	case "deny":
		return Deny
	default:
		return Ask
	}
}
