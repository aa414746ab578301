package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// head is the start of a valid policy; a case appends its rules (line 5 on).
const head = `version: 1
default:
  decision: ask
rules:
`

// errorLines returns the lines of err's message.
func errorLines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestParseReportsEachErrorAtItsPosition(t *testing.T) {
	tests := []struct {
		name string
		src  string
		// want are the error lines; one ending in "..." is a prefix.
		want []string
	}{
		{
			name: "unknown key in a rule",
			src: head + `  - name: a
    tools: [bash]
    decision: deny
    colour: red
`,
			want: []string{`p.yaml:8:5: rule "a": unknown key "colour" (want name, tools, when, decision, message, deadline, channels, allow_edit, read_only or rollback)`},
		},
		{
			name: "unknown top-level key",
			src: `version: 1
default: {decision: ask}
rulez: []
`,
			want: []string{`p.yaml:3:1: policy: unknown key "rulez" (want version, default, rules or egress)`},
		},
		{
			name: "unknown key in the default",
			src: `version: 1
default:
  decision: ask
  tools: [bash]
`,
			want: []string{`p.yaml:4:3: default: unknown key "tools" (want decision, message, deadline, channels, allow_edit, read_only or rollback)`},
		},
		{
			name: "bad decision",
			src: head + `  - name: a
    tools: [bash]
    decision: maybe
`,
			want: []string{`p.yaml:7:15: rule "a": invalid decision "maybe" (want allow, deny, ask or defer)`},
		},
		{
			name: "bad glob",
			src: head + `  - name: a
    tools: [bash, "mcp__[github__*"]
    decision: deny
`,
			want: []string{`p.yaml:6:19: rule "a": invalid tool pattern "mcp__[github__*": syntax error in pattern`},
		},
		{
			name: "duplicate name",
			src: head + `  - name: a
    tools: [bash]
    decision: deny
  - name: a
    tools: [read]
    decision: allow
`,
			want: []string{`p.yaml:8:11: rule "a": duplicate name (first used at line 5)`},
		},
		{
			name: "reserved name",
			src: head + `  - name: platform
    tools: [bash]
    decision: deny
`,
			want: []string{`p.yaml:5:11: rule "platform": the names "default" and "platform" are reserved`},
		},
		{
			name: "non-bool condition",
			src: head + `  - name: a
    tools: [bash]
    when: size(tool) + 1
    decision: deny
`,
			want: []string{`p.yaml:7:11: rule "a": when: the condition must be a bool expression, not int`},
		},
		{
			name: "CEL syntax error",
			src: head + `  - name: a
    tools: [bash]
    when: 'input.command.matches("rm") &&'
    decision: deny
`,
			want: []string{`p.yaml:7:11: rule "a": when: Syntax error: ...`},
		},
		{
			name: "CEL unknown variable",
			src: head + `  - name: a
    tools: [bash]
    when: request.user == "x"
    decision: deny
`,
			want: []string{`p.yaml:7:11: rule "a": when: undeclared reference to 'request' (at 1:1 of the expression)`},
		},
		{
			name: "deadline on allow",
			src: head + `  - name: a
    tools: [read]
    decision: allow
    deadline: 5m
`,
			want: []string{`p.yaml:8:5: rule "a": deadline applies only to ask and defer, not allow`},
		},
		{
			name: "channels and allow_edit on deny",
			src: head + `  - name: a
    tools: [bash]
    decision: deny
    channels: [ops]
    allow_edit: true
`,
			want: []string{
				`p.yaml:8:5: rule "a": channels applies only to ask and defer, not deny`,
				`p.yaml:9:5: rule "a": allow_edit applies only to ask and defer, not deny`,
			},
		},
		{
			name: "deadline over 24h",
			src: head + `  - name: a
    tools: [write]
    decision: defer
    deadline: 25h
`,
			want: []string{`p.yaml:8:15: rule "a": deadline "25h" is longer than the maximum, 24h0m0s`},
		},
		{
			name: "deadline not positive",
			src: head + `  - name: a
    tools: [write]
    decision: ask
    deadline: 0s
`,
			want: []string{`p.yaml:8:15: rule "a": deadline "0s" must be positive`},
		},
		{
			name: "deadline without a unit",
			src: head + `  - name: a
    tools: [write]
    decision: ask
    deadline: 30
`,
			want: []string{`p.yaml:8:15: rule "a": invalid deadline "30" (want a duration such as 90s, 30m or 2h)`},
		},
		{
			name: "allow_edit not a bool",
			src: head + `  - name: a
    tools: [write]
    decision: ask
    allow_edit: sometimes
`,
			want: []string{`p.yaml:8:17: rule "a": allow_edit must be true or false`},
		},
		{
			name: "missing default",
			src: `version: 1
rules: []
`,
			want: []string{`p.yaml:1:1: missing default (the decision for calls no rule matches)`},
		},
		{
			name: "version 2",
			src: `version: 2
default:
  decision: ask
`,
			want: []string{`p.yaml:1:10: unsupported version 2 (this build reads version 1)`},
		},
		{
			name: "missing version",
			src: `default:
  decision: ask
`,
			want: []string{`p.yaml:1:1: missing version (want version: 1)`},
		},
		{
			name: "missing name, tools and decision",
			src: head + `  - when: tool == "x"
`,
			want: []string{
				`p.yaml:5:5: rule 1: missing name`,
				`p.yaml:5:5: rule 1: missing tools (names or globs such as "mcp__github__*")`,
				`p.yaml:5:5: rule 1: missing decision (allow, deny, ask or defer)`,
			},
		},
		{
			name: "repeated key",
			src: head + `  - name: a
    tools: [bash]
    decision: allow
    decision: deny
`,
			want: []string{`p.yaml:8:5: rule "a": key "decision" repeats (first at line 7)`},
		},
		{
			name: "empty file",
			src:  "# nothing here\n",
			want: []string{`p.yaml:1:1: the file is empty: a policy needs at least version: 1 and a default`},
		},
		{
			name: "YAML syntax error has a line",
			src:  "version: 1\ndefault:\n\tdecision: ask\n",
			want: []string{`p.yaml:3: yaml: found character that cannot start any token`},
		},
		{
			name: "two documents",
			src:  "version: 1\ndefault: {decision: ask}\n---\nversion: 1\n",
			want: []string{`p.yaml:3:1: a policy file holds one YAML document; this is a second one`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded (%d rules), want errors %q", p.Rules(), tt.want)
			}
			got := errorLines(err)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tt.want), err)
			}
			for i, w := range tt.want {
				if prefix, ok := strings.CutSuffix(w, "..."); ok {
					if !strings.HasPrefix(got[i], prefix) {
						t.Errorf("error %d = %q, want prefix %q", i, got[i], prefix)
					}
				} else if got[i] != w {
					t.Errorf("error %d:\n got %s\nwant %s", i, got[i], w)
				}
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	src := `version: 2
default:
  decision: allow
  deadline: 1m
rules:
  - name: a
    tools: ["["]
    decision: deny
  - name: a
    tools: [bash]
    when: tool
    decision: nope
`
	_, err := Parse("many.yaml", []byte(src))
	want := []string{
		`many.yaml:1:10: unsupported version 2 (this build reads version 1)`,
		`many.yaml:4:3: default: deadline applies only to ask and defer, not allow`,
		`many.yaml:7:13: rule "a": invalid tool pattern "[": syntax error in pattern`,
		`many.yaml:9:11: rule "a": duplicate name (first used at line 6)`,
		`many.yaml:11:11: rule "a": when: the condition must be a bool expression, not string`,
		`many.yaml:12:15: rule "a": invalid decision "nope" (want allow, deny, ask or defer)`,
	}
	if diff := cmp.Diff(want, errorLines(err)); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestParseErrorIsPositioned(t *testing.T) {
	_, err := Parse("x.yaml", []byte("version: 1\ndefault: {decision: sometimes}\n"))
	var pe *Error
	if !errors.As(err, &pe) || pe.File != "x.yaml" || pe.Line != 2 || pe.Column != 21 {
		t.Fatalf("error %v: want a *policy.Error at x.yaml:2:21", err)
	}
}

func TestParseFillsDefaultDeadlines(t *testing.T) {
	p, err := Parse("d.yaml", []byte(head+`  - name: asks
    tools: [bash]
    decision: ask
  - name: defers
    tools: [write]
    decision: defer
    channels: [slack, ops]
  - name: quick
    tools: [edit]
    decision: defer
    deadline: 90s
    allow_edit: true
`))
	if err != nil {
		t.Fatal(err)
	}
	for tool, want := range map[string]time.Duration{"bash": 2 * time.Minute, "write": time.Hour, "edit": 90 * time.Second} {
		if got := p.Evaluate(Call{Tool: tool}).Deadline; got != want {
			t.Errorf("%s: deadline %v, want %v", tool, got, want)
		}
	}
	if got := p.Evaluate(Call{Tool: "read"}).Deadline; got != DefaultAskDeadline {
		t.Errorf("default ask: deadline %v, want %v", got, DefaultAskDeadline)
	}
	if !p.Evaluate(Call{Tool: "edit"}).AllowEdit {
		t.Error("allow_edit: true was not carried to the result")
	}
	if diff := cmp.Diff([]string{"ops", "slack"}, p.Channels()); diff != "" {
		t.Errorf("Channels (-want +got):\n%s", diff)
	}
	if got := p.MaxDeadline(); got != time.Hour {
		t.Errorf("MaxDeadline = %v, want 1h", got)
	}
}

func TestExamplePoliciesParse(t *testing.T) {
	files, err := filepath.Glob("../../examples/policies/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("example policies: %v, %v (want at least default, allow-all and production)", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			p, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if p.Source() != f || len(p.Digest()) != 64 {
				t.Errorf("Source %q, Digest %q", p.Source(), p.Digest())
			}
		})
	}
}

func TestShippedDefaultPolicy(t *testing.T) {
	example, err := os.ReadFile("../../examples/policies/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(example, DefaultYAML()) {
		t.Error("examples/policies/default.yaml differs from internal/policy/default.yaml; copy it over")
	}
	p := Default()
	if p.Source() != "(built-in default)" {
		t.Errorf("Source = %q", p.Source())
	}
	tests := []struct {
		tool string
		want Decision
		src  Source
	}{
		{"read", Allow, SourceRule},
		{"glob", Allow, SourceRule},
		{"grep", Allow, SourceRule},
		{"write", Ask, SourceRule},
		{"edit", Ask, SourceRule},
		{"bash", Ask, SourceRule},
		{"web_fetch", Ask, SourceDefault},
		{"mcp__github__create_issue", Ask, SourceDefault},
	}
	for _, tt := range tests {
		res := p.Evaluate(Call{Tool: tt.tool, Input: []byte(`{}`)})
		if res.Decision != tt.want || res.Source != tt.src {
			t.Errorf("%s: %v from %s, want %v from %s", tt.tool, res.Decision, res.Source, tt.want, tt.src)
		}
		if res.Decision == Ask && (res.Deadline != 2*time.Minute || res.Message == "" || len(res.Channels) != 0) {
			t.Errorf("%s: ask with deadline %v, message %q, channels %v; want 2m, a message, no channels", tt.tool, res.Deadline, res.Message, res.Channels)
		}
	}
}
