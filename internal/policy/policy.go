package policy

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/perimeterhq/perimeter/internal/egress"
)

// Session is what a condition sees of the session making a call, as the
// variable session: session.id, session.agent and session.metadata.
type Session struct {
	ID       string
	Agent    string
	Metadata map[string]string
}

// Environment is what a condition sees of the environment and the worker
// serving it, as the variable environment: environment.id,
// environment.worker_id and environment.labels.
type Environment struct {
	ID       string
	WorkerID string
	Labels   map[string]string
}

// Call is one tool call to decide on.
type Call struct {
	// Tool is the tool's name: "bash", "read", a custom tool's name, or
	// "mcp__<server>__<tool>".
	Tool string
	// Input is the call's input exactly as the tool will receive it, a JSON
	// object. Conditions see it as the variable input; anything that is not
	// an object is presented to them as an empty map (and, if a condition
	// was evaluated, noted in Result.Notes). It is decoded at most once per
	// evaluation, and only if a condition needs it.
	Input       json.RawMessage
	Session     Session
	Environment Environment
	// Platform is the control plane's evaluated_permission for the call: ""
	// or "allow" (no opinion), "ask" or "deny". Any other value counts as
	// "ask".
	Platform string
}

// Source says where a Result's decision came from.
type Source string

const (
	// SourceRule: the winning rule of the policy.
	SourceRule Source = "rule"
	// SourceDefault: the policy's default, because no rule matched.
	SourceDefault Source = "default"
	// SourcePlatform: the platform's evaluated_permission, which was
	// stricter than the policy's decision.
	SourcePlatform Source = "platform"
)

// Names Result.Rule takes when no rule decided. No rule may take them.
const (
	RuleDefault  = "default"
	RulePlatform = "platform"
)

// Messages of platform decisions: the text the model sees for a deny, the
// reason a reviewer is asked for an ask.
const (
	platformDenyMessage = "denied by the session's permission policy"
	platformAskMessage  = "the session's permission policy asks for approval of this call"
)

// Match is one rule that matched a call: its tools matched and its
// condition held (or failed closed to true).
type Match struct {
	Rule     string   `json:"rule"`
	Line     int      `json:"line"`
	Decision Decision `json:"decision"`
	// Note says why the rule matched: "no condition", "condition true" or
	// "condition error (counts as true): …".
	Note string `json:"note"`
}

// Result is the decision on a call and what it needs to be carried out.
type Result struct {
	Decision Decision `json:"decision"`
	Source   Source   `json:"source"`
	// Rule is the winning rule's name, RuleDefault or RulePlatform.
	Rule string `json:"rule"`
	// Message is the rule's message. For a deny it is the text the model
	// sees; for ask and defer it tells the reviewer why they are asked.
	Message string `json:"message,omitempty"`
	// Deadline is how long an ask or defer waits for a human (zero for
	// allow and deny).
	Deadline time.Duration `json:"deadline,omitempty"`
	// Channels are the notification channels to tell about an ask or
	// defer. The slice is shared with the policy: do not modify it.
	Channels []string `json:"channels,omitempty"`
	// AllowEdit lets a reviewer approve an ask or defer with an edited input.
	AllowEdit bool `json:"allow_edit,omitempty"`
	// ReadOnly says the call cannot change the workspace: no checkpoint is
	// taken before it.
	ReadOnly bool `json:"read_only,omitempty"`
	// RollbackOnError restores the checkpoint taken before the call when
	// the call ends in an error, or when the egress proxy refused one of
	// its requests: either way it may have changed files half way.
	RollbackOnError bool `json:"rollback_on_error,omitempty"`
	// Matched lists every rule that matched, in file order.
	Matched []Match `json:"matched,omitempty"`
	// Notes are remarks on how the call was presented to the conditions,
	// such as an input that was not a JSON object.
	Notes []string `json:"notes,omitempty"`
}

// outcome is what a rule or the default decides.
type outcome struct {
	decision  Decision
	message   string
	deadline  time.Duration // set (defaulted) for ask and defer
	channels  []string
	allowEdit bool
	// readOnly and rollbackOnError: see Result.
	readOnly, rollbackOnError bool
}

// rule is one compiled rule.
type rule struct {
	name  string
	line  int
	tools []string // as written, for Explain
	when  *condition
	outcome
}

// Policy is a parsed and compiled policy file. It is immutable and safe for
// concurrent use.
type Policy struct {
	source  string
	digest  string
	def     outcome
	defLine int // of the default: key
	rules   []rule
	egress  egress.Config

	// exact maps a tool name to the rules that list it by name, in file
	// order; globs are the rules' patterns, in file order.
	exact map[string][]int
	globs []glob
}

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(path, data)
}

//go:embed default.yaml
var defaultYAML []byte

// defaultSource is Source of the built-in default policy.
const defaultSource = "(built-in default)"

var defaultPolicy = func() *Policy {
	p, err := Parse(defaultSource, defaultYAML)
	if err != nil {
		panic("policy: the built-in default policy does not parse: " + err.Error())
	}
	return p
}()

// Default returns the policy Perimeter ships with: read, glob and grep run;
// every other tool waits for a human (ask, two minutes).
func Default() *Policy { return defaultPolicy }

// DefaultYAML returns the text of the shipped default policy.
func DefaultYAML() []byte { return slices.Clone(defaultYAML) }

// Source returns the file name the policy was parsed from.
func (p *Policy) Source() string { return p.source }

// Digest returns the hex SHA-256 of the policy file's bytes, for logs and
// audit records.
func (p *Policy) Digest() string { return p.digest }

// Rules returns the number of rules.
func (p *Policy) Rules() int { return len(p.rules) }

// DefaultDecision returns the decision for calls no rule matches.
func (p *Policy) DefaultDecision() Decision { return p.def.decision }

// Channels returns every notification channel the policy names, sorted and
// unique, to be checked against the worker's configured channels.
func (p *Policy) Channels() []string {
	all := slices.Clone(p.def.channels)
	for i := range p.rules {
		all = append(all, p.rules[i].channels...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// MaxDeadline returns the longest time a decision of this policy can wait
// for a human: the longest ask or defer deadline it sets, and at least
// DefaultAskDeadline, which a platform ask always gets.
func (p *Policy) MaxDeadline() time.Duration {
	d := max(DefaultAskDeadline, p.def.deadline)
	for i := range p.rules {
		d = max(d, p.rules[i].deadline)
	}
	return d
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
