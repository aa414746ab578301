package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, try out and print tool policies",
		Long: `Every tool call a session makes passes the tool policy before it runs. A
policy is a YAML file of ordered rules:

  version: 1
  default:                      # calls no rule matches (required)
    decision: ask
  rules:
    - name: read-only tools     # required, unique
      tools: [read, glob, grep] # names or globs: "mcp__github__*", "*"
      decision: allow
    - name: no destructive shell
      tools: [bash]
      when: input.command.matches("rm\\s+-rf")   # optional CEL condition
      decision: deny
      message: destructive commands are not allowed  # what the model sees
    - name: writes need a review
      tools: [write, edit]
      when: '!input.file_path.startsWith("docs/")'
      decision: defer
      deadline: 30m             # ask: 2m by default, defer: 1h; at most 24h
      channels: [slack]         # notification channels of the worker config
      allow_edit: true          # the reviewer may approve an edited input
      message: the reviewer sees why they are asked

Decisions: allow runs the call; ask holds it until a human approves, while
the session waits; defer parks it for a review with a longer deadline; deny
refuses it. deadline, channels and allow_edit go only with ask and defer.

Precedence: every rule whose tools match and whose condition holds counts,
and the strictest wins: deny > defer > ask > allow (the first in the file
among equals). An allow rule never overrides a stricter rule that also
matches; write an exception as a condition of the stricter rule. No match:
the default. Then the session's own permission policy (evaluated_permission)
is combined, and the stricter of the two wins.

Conditions are CEL expressions over tool (string), input (the call's JSON
input), session (id, agent, metadata) and environment (id, worker_id,
labels). They are compiled when the policy loads and must be bool. A
condition that fails when it runs (a missing input field, a wrong type, the
cost limit) fails closed: it counts as true for deny, defer and ask rules and
as false for allow rules.

Examples are in examples/policies; perimeter policy default prints the
policy that applies when none is configured.`,
		Example: `  perimeter policy check examples/policies/production.yaml
  perimeter policy test examples/policies/production.yaml \
    --call '{"tool":"bash","input":{"command":"rm -rf /"}}'
  perimeter policy default > policy.yaml`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyTestCmd(), newPolicyDefaultCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file and report every error in it",
		Long: `check parses FILE and compiles its conditions. A valid policy prints one
line: its rule count, default decision and the notification channels it
names (each must be configured in the worker config). An invalid one prints
every problem as FILE:LINE:COL: message on stderr and exits non-zero.`,
		Example: `  perimeter policy check examples/policies/production.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			channels := "none"
			if c := p.Channels(); len(c) > 0 {
				channels = strings.Join(c, ", ")
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d rules, default %s, channels: %s)\n",
				args[0], p.Rules(), p.DefaultDecision(), channels)
			return nil
		},
	}
}

func newPolicyTestCmd() *cobra.Command {
	var callArg string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "test FILE --call JSON",
		Short: "Show how a policy decides one tool call",
		Long: `test evaluates one tool call against the policy in FILE and explains the
decision: every rule (matched, or why not), the combination with the
session's evaluated_permission, and the final decision. --json prints the
result as JSON instead. It exits 0 whatever the decision; non-zero only for
an invalid policy or call.

The call is JSON; every field but tool is optional:

  {"tool": "write",
   "input": {"file_path": "src/main.go", "content": "..."},
   "session": {"id": "sesn_1", "agent": "coder", "metadata": {"team": "infra"}},
   "environment": {"id": "env_1", "worker_id": "w1", "labels": {"stage": "prod"}},
   "evaluated_permission": "ask"}

--call @FILE reads it from a file, --call - from stdin.`,
		Example: `  perimeter policy test policy.yaml --call '{"tool":"bash","input":{"command":"ls"}}'
  perimeter policy test policy.yaml --call @call.json --json
  echo '{"tool":"mcp__github__merge_pr"}' | perimeter policy test policy.yaml --call -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if callArg == "" {
				return errors.New("--call is required: the tool call as JSON, @FILE or - for stdin")
			}
			p, err := loadPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			call, err := readCall(cmd.InOrStdin(), callArg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !asJSON {
				fmt.Fprint(out, p.Explain(call))
				return nil
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(resultJSON(p.Evaluate(call)))
		},
	}
	cmd.Flags().StringVar(&callArg, "call", "", "the tool call: JSON, @FILE, or - for stdin")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON instead of the explanation")
	return cmd
}

func newPolicyDefaultCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "default",
		Short: "Print the policy that applies when none is configured",
		Long: `default prints the built-in policy: read, glob and grep run; write, edit
and bash, and every tool no rule names, wait for a human to approve each
call (ask, two minutes). Redirect it to a file to start your own.`,
		Example: `  perimeter policy default > policy.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(policy.DefaultYAML())
			return err
		},
	}
}

// loadPolicyFile loads a policy file; if it is invalid it prints every problem
// on stderr and returns a one-line summary.
func loadPolicyFile(cmd *cobra.Command, path string) (*policy.Policy, error) {
	p, err := policy.Load(path)
	if err == nil {
		return p, nil
	}
	var pe *policy.Error
	if !errors.As(err, &pe) {
		return nil, err // the file could not be read
	}
	fmt.Fprintln(cmd.ErrOrStderr(), err)
	n := 1
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		n = len(j.Unwrap())
	}
	if n == 1 {
		return nil, fmt.Errorf("%s: invalid policy (1 error)", path)
	}
	return nil, fmt.Errorf("%s: invalid policy (%d errors)", path, n)
}

// callJSON is the JSON form of a call for policy test.
type callJSON struct {
	Tool    string          `json:"tool"`
	Input   json.RawMessage `json:"input"`
	Session struct {
		ID       string            `json:"id"`
		Agent    string            `json:"agent"`
		Metadata map[string]string `json:"metadata"`
	} `json:"session"`
	Environment struct {
		ID       string            `json:"id"`
		WorkerID string            `json:"worker_id"`
		Labels   map[string]string `json:"labels"`
	} `json:"environment"`
	EvaluatedPermission string `json:"evaluated_permission"`
}

// readCall reads the --call argument: JSON, @FILE or - for stdin.
func readCall(stdin io.Reader, arg string) (policy.Call, error) {
	var data []byte
	var err error
	where := "--call"
	switch {
	case arg == "-":
		data, err = io.ReadAll(stdin)
		where = "--call - (stdin)"
	case strings.HasPrefix(arg, "@"):
		data, err = os.ReadFile(arg[1:])
		where = "--call " + arg
	default:
		data = []byte(arg)
	}
	if err != nil {
		return policy.Call{}, fmt.Errorf("%s: %w", where, err)
	}
	var c callJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return policy.Call{}, fmt.Errorf("%s: invalid call JSON: %w", where, err)
	}
	if dec.More() {
		return policy.Call{}, fmt.Errorf("%s: invalid call JSON: more than one value", where)
	}
	if c.Tool == "" {
		return policy.Call{}, fmt.Errorf(`%s: the call has no "tool"`, where)
	}
	if len(c.Input) == 0 {
		c.Input = json.RawMessage(`{}`)
	}
	return policy.Call{
		Tool:        c.Tool,
		Input:       c.Input,
		Session:     policy.Session{ID: c.Session.ID, Agent: c.Session.Agent, Metadata: c.Session.Metadata},
		Environment: policy.Environment{ID: c.Environment.ID, WorkerID: c.Environment.WorkerID, Labels: c.Environment.Labels},
		Platform:    c.EvaluatedPermission,
	}, nil
}

// resultView is a Result as policy test --json prints it, with the deadline
// as a duration string.
type resultView struct {
	Decision  policy.Decision `json:"decision"`
	Source    policy.Source   `json:"source"`
	Rule      string          `json:"rule"`
	Message   string          `json:"message,omitempty"`
	Deadline  string          `json:"deadline,omitempty"`
	Channels  []string        `json:"channels,omitempty"`
	AllowEdit bool            `json:"allow_edit,omitempty"`
	Matched   []policy.Match  `json:"matched"`
	Notes     []string        `json:"notes,omitempty"`
}

func resultJSON(r policy.Result) resultView {
	v := resultView{
		Decision: r.Decision, Source: r.Source, Rule: r.Rule, Message: r.Message,
		Channels: r.Channels, AllowEdit: r.AllowEdit, Matched: r.Matched, Notes: r.Notes,
	}
	if r.Deadline > 0 {
		v.Deadline = r.Deadline.String()
	}
	if v.Matched == nil {
		v.Matched = []policy.Match{}
	}
	return v
}
