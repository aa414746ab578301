// Package scenario is the scripted agent of Perimeter's embedded control
// plane: the versioned YAML format a scenario file is written in, its parser
// (every error names file:line), and the Runner, a small state machine that
// turns a scenario into the session events a model would have produced —
// agent.tool_use, agent.custom_tool_use, agent.message, session.status_* —
// and checks each tool result the worker posts back against the step's
// expectations.
//
// The package knows nothing about HTTP or storage: the control plane hands a
// Runner a Host to append events to and persists the Runner's Progress.
// docs/scenarios.md is the user-facing reference for the format.
package scenario

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Version is the only scenario file version this build reads.
const Version = 1

// Kind names what a step does.
type Kind string

// The step kinds.
const (
	KindMessage     Kind = "message"       // agent.message
	KindTool        Kind = "tool"          // agent.tool_use (agent_toolset_20260401)
	KindCustomTool  Kind = "custom_tool"   // agent.custom_tool_use
	KindWaitForUser Kind = "wait_for_user" // end the turn, resume on a user.message
	KindEnd         Kind = "end"           // end_turn or terminate; always the last step
)

// How a scenario ends.
const (
	EndTurn      = "end_turn"
	EndTerminate = "terminate"
)

// Evaluated permissions of a tool call.
const (
	PermissionAllow = "allow"
	PermissionAsk   = "ask"
	PermissionDeny  = "deny"
)

// BuiltinTools are the agent_toolset_20260401 tool names. A tool step naming
// anything else must say unknown_tool: true.
var BuiltinTools = []string{"bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"}

// requiredInput lists, per built-in tool, the input fields the SDK's
// implementation cannot do without; a step missing one is a parse error, not
// a surprise at run time.
var requiredInput = map[string][]string{
	"read":  {"file_path"},
	"write": {"file_path", "content"},
	"edit":  {"file_path", "old_string", "new_string"},
	"glob":  {"pattern"},
	"grep":  {"pattern"},
}

// Scenario is one parsed scenario file: a scripted agent.
type Scenario struct {
	// AgentID is "agent_" + the file stem.
	AgentID string
	// File is the path the scenario was read from.
	File        string
	Name        string
	Description string
	// Tags let tests and tools select scenarios (for example "slow").
	Tags []string
	// ResultTimeout bounds how long a tool call may stay unanswered; zero
	// means no bound.
	ResultTimeout time.Duration
	// CustomTools are declared on the agent; custom_tool steps call them.
	CustomTools []CustomTool
	Steps       []Step
}

// HasTag reports whether the scenario carries tag.
func (s *Scenario) HasTag(tag string) bool { return slices.Contains(s.Tags, tag) }

// CustomTool is a user-defined tool the agent may call.
type CustomTool struct {
	Name        string
	Description string
	InputSchema map[string]any
}

// Step is one thing the agent does.
type Step struct {
	// Line is where the step starts in its file.
	Line int
	Kind Kind
	// Label is the optional `name:` shown in logs and failures.
	Label string

	// Text is the agent.message text (message) or the prompt sent before the
	// turn ends (wait_for_user, may be empty).
	Text string

	// Tool is the tool name (tool, custom_tool).
	Tool string
	// Input is the tool input.
	Input map[string]any
	// Permission is the evaluated_permission: allow, ask or deny.
	Permission string
	// Confirm, on an ask step, makes the simulated user answer by itself:
	// allow or deny. Empty waits for a user.tool_confirmation from the API.
	Confirm string
	// DenyMessage goes with Confirm: deny.
	DenyMessage string

	// End is end_turn or terminate (end).
	End string

	Expect Expect
}

// Describe names the step for humans: its label, else kind and tool.
func (s *Step) Describe() string {
	if s.Label != "" {
		return s.Label
	}
	switch s.Kind {
	case KindTool, KindCustomTool:
		return string(s.Kind) + " " + s.Tool
	case KindEnd:
		return "end " + s.End
	}
	return string(s.Kind)
}

// Expect is what a step's result must look like. Nil or empty fields are
// not checked.
type Expect struct {
	// IsError is the expected is_error of the tool result.
	IsError *bool
	// Contains must all be substrings of the result (or user message) text.
	Contains []string
	// NotContains must all be absent from it.
	NotContains []string
	// Regex must match it.
	Regex *regexp.Regexp
	// Denied says whether the call must be denied (ask and deny steps). When
	// unset it defaults to true for permission: deny and confirm: deny, and
	// to false otherwise.
	Denied *bool
}

// WantDenied is whether the step expects its call to be denied.
func (s *Step) WantDenied() bool {
	if s.Expect.Denied != nil {
		return *s.Expect.Denied
	}
	return s.Permission == PermissionDeny || s.Confirm == PermissionDeny
}

// LoadDir parses every *.yaml file in dir, sorted by agent id. All files are
// checked; the error joins every problem found.
func LoadDir(dir string) ([]*Scenario, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("scenario directory: %w", err)
	}
	if !fi.IsDir() {
		// Globbing under a file finds nothing: there would be no agents.
		return nil, fmt.Errorf("scenario directory: %s is a file: give the directory holding it (%s); every *.yaml file there is an agent", dir, filepath.Dir(dir))
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("list scenarios in %s: %w", dir, err)
	}
	var (
		out  []*Scenario
		errs []error
	)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("read scenario: %w", err))
			continue
		}
		sc, err := Parse(p, b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sc)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AgentID < out[j].AgentID })
	return out, nil
}

var stemRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Parse reads one scenario document. path names the file in errors and its
// stem becomes the agent id.
func Parse(path string, data []byte) (*Scenario, error) {
	p := &parser{file: path}
	sc := p.parse(data)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return sc, nil
}

type parser struct {
	file string
	errs []error
}

func (p *parser) errorf(line int, format string, a ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s", p.file, line, fmt.Sprintf(format, a...)))
}

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

// yamlError rewrites yaml.v3's "line N: msg" into file:N: msg.
func (p *parser) yamlError(err error, fallbackLine int) {
	var te *yaml.TypeError
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		if sub := yamlLineRE.FindStringSubmatch(m); sub != nil {
			p.errs = append(p.errs, fmt.Errorf("%s:%s: %s", p.file, sub[1], sub[2]))
			continue
		}
		p.errorf(fallbackLine, "%s", m)
	}
}

func (p *parser) parse(data []byte) *Scenario {
	stem := strings.TrimSuffix(filepath.Base(p.file), filepath.Ext(p.file))
	sc := &Scenario{AgentID: "agent_" + stem, File: p.file, Name: stem}
	if !stemRE.MatchString(stem) {
		p.errorf(1, "file name %q makes a poor agent id; use lowercase letters, digits, '-' and '_'", stem)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p.yamlError(err, 1)
		return nil
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		p.errorf(1, "the file is empty; start with \"version: %d\", then name, description and steps", Version)
		return nil
	}
	root := doc.Content[0]
	fields, ok := p.mapping(root, "the document", "version", "name", "description", "tags", "result_timeout", "custom_tools", "steps")
	if !ok {
		return nil
	}
	if n := fields["version"]; n == nil {
		p.errorf(root.Line, "version is missing; add \"version: %d\" at the top", Version)
	} else {
		var v int
		if p.decode(n, &v) && v != Version {
			p.errorf(n.Line, "version is %d; this build reads version %d", v, Version)
		}
	}
	if n := fields["name"]; n != nil {
		p.decode(n, &sc.Name)
	}
	if n := fields["description"]; n != nil {
		p.decode(n, &sc.Description)
	}
	if n := fields["tags"]; n != nil {
		p.decode(n, &sc.Tags)
	}
	if n := fields["result_timeout"]; n != nil {
		var s string
		if p.decode(n, &s) {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				p.errorf(n.Line, "result_timeout %q is not a duration (try 30s or 2m)", s)
			case d <= 0:
				p.errorf(n.Line, "result_timeout must be positive; leave it out for no bound")
			default:
				sc.ResultTimeout = d
			}
		}
	}
	if n := fields["custom_tools"]; n != nil {
		sc.CustomTools = p.customTools(n)
	}
	n := fields["steps"]
	if n == nil || n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		line := root.Line
		if n != nil {
			line = n.Line
		}
		p.errorf(line, "steps must be a non-empty list; end it with \"- end: terminate\" or \"- end: end_turn\"")
		return sc
	}
	for _, sn := range n.Content {
		if st, ok := p.step(sn, sc); ok {
			sc.Steps = append(sc.Steps, st)
		}
	}
	if len(sc.Steps) == len(n.Content) {
		for i, st := range sc.Steps {
			last := i == len(sc.Steps)-1
			if st.Kind == KindEnd && !last {
				p.errorf(st.Line, "end must be the last step; use wait_for_user to end a turn and continue")
			}
			if last && st.Kind != KindEnd {
				p.errorf(st.Line, "the last step must be \"end: terminate\" or \"end: end_turn\"")
			}
		}
	}
	return sc
}

// mapping checks that n is a mapping whose keys are all allowed and
// distinct, and returns its values by key.
func (p *parser) mapping(n *yaml.Node, what string, allowed ...string) (map[string]*yaml.Node, bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, "%s must be a mapping of key: value", what)
		return nil, false
	}
	out := map[string]*yaml.Node{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case !slices.Contains(allowed, k.Value):
			p.errorf(k.Line, "unknown field %q in %s; expected one of %s", k.Value, what, strings.Join(allowed, ", "))
			ok = false
		case out[k.Value] != nil:
			p.errorf(k.Line, "field %q appears twice in %s", k.Value, what)
			ok = false
		default:
			out[k.Value] = v
		}
	}
	return out, ok
}

func (p *parser) decode(n *yaml.Node, v any) bool {
	if err := n.Decode(v); err != nil {
		p.yamlError(err, n.Line)
		return false
	}
	return true
}

func (p *parser) customTools(n *yaml.Node) []CustomTool {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n.Line, "custom_tools must be a list of {name, description, input_schema}")
		return nil
	}
	var out []CustomTool
	seen := map[string]bool{}
	for _, tn := range n.Content {
		f, ok := p.mapping(tn, "a custom tool", "name", "description", "input_schema")
		if !ok {
			continue
		}
		var t CustomTool
		if f["name"] == nil || !p.decode(f["name"], &t.Name) || t.Name == "" {
			p.errorf(tn.Line, "a custom tool needs a name")
			continue
		}
		if slices.Contains(BuiltinTools, t.Name) {
			p.errorf(f["name"].Line, "custom tool %q shadows a built-in tool; pick another name", t.Name)
		}
		if seen[t.Name] {
			p.errorf(f["name"].Line, "custom tool %q is declared twice", t.Name)
		}
		seen[t.Name] = true
		if d := f["description"]; d != nil {
			p.decode(d, &t.Description)
		}
		t.InputSchema = map[string]any{"type": "object", "properties": map[string]any{}}
		if s := f["input_schema"]; s != nil {
			var schema map[string]any
			if p.decode(s, &schema) && schema != nil {
				if _, err := json.Marshal(schema); err != nil {
					p.errorf(s.Line, "input_schema must be JSON-compatible (string keys, plain values): %v", err)
				}
				t.InputSchema = schema
			}
		}
		out = append(out, t)
	}
	return out
}

// stepKeys are the fields each kind of step may carry, besides its kind key
// and name.
var stepKeys = map[Kind][]string{
	KindMessage:     {},
	KindTool:        {"input", "permission", "confirm", "deny_message", "expect", "unknown_tool"},
	KindCustomTool:  {"input", "expect"},
	KindWaitForUser: {"expect"},
	KindEnd:         {},
}

var kindOrder = []Kind{KindMessage, KindTool, KindCustomTool, KindWaitForUser, KindEnd}

func (p *parser) step(n *yaml.Node, sc *Scenario) (Step, bool) {
	st := Step{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, "a step must be a mapping such as \"- tool: bash\"")
		return st, false
	}
	var kinds []string
	for i := 0; i < len(n.Content); i += 2 {
		if _, ok := stepKeys[Kind(n.Content[i].Value)]; ok {
			kinds = append(kinds, n.Content[i].Value)
		}
	}
	if len(kinds) != 1 {
		names := make([]string, len(kindOrder))
		for i, k := range kindOrder {
			names[i] = string(k)
		}
		if len(kinds) == 0 {
			p.errorf(n.Line, "a step needs exactly one of %s", strings.Join(names, ", "))
		} else {
			p.errorf(n.Line, "a step has one kind, this one has %s", strings.Join(kinds, " and "))
		}
		return st, false
	}
	st.Kind = Kind(kinds[0])
	allowed := append([]string{string(st.Kind), "name"}, stepKeys[st.Kind]...)
	f, ok := p.mapping(n, fmt.Sprintf("a %s step", st.Kind), allowed...)
	if !ok {
		return st, false
	}
	before := len(p.errs)
	if l := f["name"]; l != nil {
		p.decode(l, &st.Label)
	}
	v := f[string(st.Kind)]
	switch st.Kind {
	case KindMessage:
		if p.decode(v, &st.Text) && st.Text == "" {
			p.errorf(v.Line, "message needs text")
		}
	case KindWaitForUser:
		if v.Tag != "!!null" {
			p.decode(v, &st.Text)
		}
	case KindEnd:
		if p.decode(v, &st.End) && st.End != EndTurn && st.End != EndTerminate {
			p.errorf(v.Line, "end is %q; use end_turn (the session goes idle) or terminate", st.End)
		}
	case KindTool, KindCustomTool:
		p.toolStep(&st, f, sc)
	}
	if e := f["expect"]; e != nil {
		st.Expect = p.expect(e, &st)
	}
	return st, len(p.errs) == before
}

func (p *parser) toolStep(st *Step, f map[string]*yaml.Node, sc *Scenario) {
	v := f[string(st.Kind)]
	if !p.decode(v, &st.Tool) || st.Tool == "" {
		p.errorf(v.Line, "%s needs a tool name", st.Kind)
		return
	}
	st.Input = map[string]any{}
	if in := f["input"]; in != nil && in.Tag != "!!null" {
		var m map[string]any
		if !p.decode(in, &m) {
			return
		}
		if _, err := json.Marshal(m); err != nil {
			p.errorf(in.Line, "input must be JSON-compatible (string keys, plain values): %v", err)
			return
		}
		st.Input = m
	}
	if st.Kind == KindCustomTool {
		if !slices.ContainsFunc(sc.CustomTools, func(t CustomTool) bool { return t.Name == st.Tool }) {
			p.errorf(v.Line, "custom tool %q is not declared; add it under custom_tools", st.Tool)
		}
		st.Permission = PermissionAllow
		return
	}

	unknown := false
	if u := f["unknown_tool"]; u != nil {
		p.decode(u, &unknown)
	}
	builtin := slices.Contains(BuiltinTools, st.Tool)
	switch {
	case !builtin && !unknown:
		p.errorf(v.Line, "tool %q is not an agent_toolset_20260401 tool (%s); to call an unknown name on purpose add \"unknown_tool: true\", for a custom tool use custom_tool",
			st.Tool, strings.Join(BuiltinTools, ", "))
	case builtin && unknown:
		p.errorf(f["unknown_tool"].Line, "unknown_tool is set but %q is a built-in tool", st.Tool)
	}
	if builtin {
		for _, k := range requiredInput[st.Tool] {
			if _, ok := st.Input[k]; !ok {
				p.errorf(v.Line, "%s needs input.%s", st.Tool, k)
			}
		}
		if _, ok := st.Input["command"]; st.Tool == "bash" && !ok && st.Input["restart"] != true {
			p.errorf(v.Line, "bash needs input.command (or input.restart: true)")
		}
	}

	st.Permission = PermissionAllow
	if pn := f["permission"]; pn != nil && p.decode(pn, &st.Permission) {
		switch st.Permission {
		case PermissionAllow, PermissionAsk, PermissionDeny:
		default:
			p.errorf(pn.Line, "permission is %q; use allow, ask or deny", st.Permission)
		}
	}
	if cn := f["confirm"]; cn != nil && p.decode(cn, &st.Confirm) {
		switch {
		case st.Permission != PermissionAsk:
			p.errorf(cn.Line, "confirm only applies to permission: ask")
		case st.Confirm != PermissionAllow && st.Confirm != PermissionDeny:
			p.errorf(cn.Line, "confirm is %q; use allow or deny", st.Confirm)
		}
	}
	if dn := f["deny_message"]; dn != nil && p.decode(dn, &st.DenyMessage) && st.Confirm != PermissionDeny {
		p.errorf(dn.Line, "deny_message only applies to confirm: deny")
	}
}

func (p *parser) expect(n *yaml.Node, st *Step) Expect {
	var keys []string
	switch st.Kind {
	case KindTool:
		keys = []string{"is_error", "contains", "not_contains", "regex", "denied"}
	case KindCustomTool:
		keys = []string{"is_error", "contains", "not_contains", "regex"}
	case KindWaitForUser:
		keys = []string{"contains", "not_contains", "regex"}
	}
	var e Expect
	f, ok := p.mapping(n, "expect", keys...)
	if !ok {
		return e
	}
	if v := f["is_error"]; v != nil {
		var b bool
		if p.decode(v, &b) {
			e.IsError = &b
		}
	}
	e.Contains = p.stringList(f["contains"])
	e.NotContains = p.stringList(f["not_contains"])
	if v := f["regex"]; v != nil {
		var s string
		if p.decode(v, &s) {
			re, err := regexp.Compile(s)
			if err != nil {
				p.errorf(v.Line, "regex %q does not compile: %v", s, err)
			}
			e.Regex = re
		}
	}
	if v := f["denied"]; v != nil {
		var b bool
		if p.decode(v, &b) {
			e.Denied = &b
			if st.Permission == PermissionAllow {
				p.errorf(v.Line, "expect.denied only applies to permission: ask or deny")
			}
		}
	}
	wantDenied := st.Permission == PermissionDeny || st.Confirm == PermissionDeny
	if e.Denied != nil {
		wantDenied = *e.Denied
	}
	if wantDenied && (e.IsError != nil || len(e.Contains)+len(e.NotContains) > 0 || e.Regex != nil) {
		p.errorf(n.Line, "a call expected to be denied never runs, so it has no result to check; keep only expect.denied")
	}
	return e
}

// stringList accepts a string or a list of strings.
func (p *parser) stringList(n *yaml.Node) []string {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.ScalarNode {
		var s string
		if p.decode(n, &s) {
			return []string{s}
		}
		return nil
	}
	var out []string
	p.decode(n, &out)
	return out
}
