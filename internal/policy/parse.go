package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Version is the policy file format this package reads.
const Version = 1

// Error is one problem in a policy file, at a 1-based line and column.
// Parse reports every problem it finds, joined with errors.Join.
type Error struct {
	File   string
	Line   int
	Column int // 0 when only the line is known (YAML syntax errors)
	Msg    string
}

func (e *Error) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Column == 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Keys of a policy file.
var (
	topKeys     = []string{"version", "default", "rules", "egress"}
	defaultKeys = []string{"decision", "message", "deadline", "channels", "allow_edit", "read_only", "rollback"}
	ruleKeys    = []string{"name", "tools", "when", "decision", "message", "deadline", "channels", "allow_edit", "read_only", "rollback"}
)

// Parse parses and compiles a policy file; filename is used in errors and as
// the policy's Source. The error lists every problem found, each as
// FILE:LINE:COL: message.
func Parse(filename string, data []byte) (*Policy, error) {
	ps := &parser{file: filename}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			ps.errs = append(ps.errs, &Error{File: filename, Line: 1, Column: 1,
				Msg: "the file is empty: a policy needs at least version: 1 and a default"})
		} else {
			ps.yamlError(err)
		}
		return nil, errors.Join(ps.errs...)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		ps.errorf(&next, "a policy file holds one YAML document; this is a second one")
	case !errors.Is(err, io.EOF):
		ps.yamlError(err)
	}

	p := &Policy{source: filename, digest: digest(data)}
	ps.policy(&doc, p)
	if len(ps.errs) > 0 {
		return nil, errors.Join(ps.errs...)
	}
	p.index()
	return p, nil
}

// parser collects the errors of one file.
type parser struct {
	file string
	errs []error
}

func (ps *parser) errorf(n *yaml.Node, format string, args ...any) {
	ps.errs = append(ps.errs, &Error{File: ps.file, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)})
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError reports a YAML syntax error, which carries a line but no column.
func (ps *parser) yamlError(err error) {
	e := &Error{File: ps.file, Msg: err.Error()}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = "yaml: " + m[2]
	}
	ps.errs = append(ps.errs, e)
}

// field is one key of a mapping and its value.
type field struct {
	key, val *yaml.Node
}

// deref follows aliases to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	return n
}

// fields returns the keys of mapping m, reporting keys not in known (and
// repeated keys) as errors; what names the mapping in them.
func (ps *parser) fields(m *yaml.Node, what string, known []string) map[string]field {
	out := make(map[string]field, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := deref(m.Content[i]), deref(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			ps.errorf(k, "%s: a key must be a plain name", what)
			continue
		}
		if !contains(known, k.Value) {
			ps.errorf(k, "%s: unknown key %q (want %s)", what, k.Value, orList(known))
			continue
		}
		if prev, dup := out[k.Value]; dup {
			ps.errorf(k, "%s: key %q repeats (first at line %d)", what, k.Value, prev.key.Line)
			continue
		}
		out[k.Value] = field{key: k, val: v}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// orList formats a, b or c.
func orList(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// str returns a scalar's text; null, a list or a mapping is an error.
func (ps *parser) str(f field, what string) (string, bool) {
	if f.val.Kind != yaml.ScalarNode || f.val.Tag == "!!null" {
		ps.errorf(f.val, "%s: %s must be a string", what, f.key.Value)
		return "", false
	}
	return f.val.Value, true
}

// strList returns a list of non-empty strings.
func (ps *parser) strList(f field, what string) ([]*yaml.Node, bool) {
	if f.val.Kind != yaml.SequenceNode {
		ps.errorf(f.val, "%s: %s must be a list of strings", what, f.key.Value)
		return nil, false
	}
	ok := true
	items := make([]*yaml.Node, 0, len(f.val.Content))
	for _, n := range f.val.Content {
		n = deref(n)
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Value == "" {
			ps.errorf(n, "%s: every entry of %s must be a non-empty string", what, f.key.Value)
			ok = false
			continue
		}
		items = append(items, n)
	}
	return items, ok
}

func (ps *parser) policy(doc *yaml.Node, p *Policy) {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = deref(root.Content[0])
	}
	if root.Kind != yaml.MappingNode {
		ps.errorf(root, "a policy must be a mapping with version, default and rules")
		return
	}
	f := ps.fields(root, "policy", topKeys)

	if v, ok := f["version"]; !ok {
		ps.errorf(root, "missing version (want version: %d)", Version)
	} else if v.val.Kind != yaml.ScalarNode || v.val.Tag != "!!int" {
		ps.errorf(v.val, "version must be an integer (want version: %d)", Version)
	} else if n, err := strconv.Atoi(v.val.Value); err != nil || n != Version {
		ps.errorf(v.val, "unsupported version %s (this build reads version %d)", v.val.Value, Version)
	}

	if d, ok := f["default"]; !ok {
		ps.errorf(root, "missing default (the decision for calls no rule matches)")
	} else if d.val.Kind != yaml.MappingNode {
		ps.errorf(d.val, "default must be a mapping with a decision")
	} else {
		p.defLine = d.key.Line
		ps.outcome(d.val, ps.fields(d.val, "default", defaultKeys), "default", &p.def)
	}

	if e, ok := f["egress"]; ok {
		ps.egressSection(e, p)
	}

	r, ok := f["rules"]
	if !ok || (r.val.Kind == yaml.ScalarNode && r.val.Tag == "!!null") {
		return // a policy of only a default
	}
	if r.val.Kind != yaml.SequenceNode {
		ps.errorf(r.val, "rules must be a list of rules")
		return
	}
	names := map[string]int{} // rule name → line
	for i, n := range r.val.Content {
		n = deref(n)
		if n.Kind != yaml.MappingNode {
			ps.errorf(n, "rule %d: a rule must be a mapping with name, tools and decision", i+1)
			continue
		}
		if rl, ok := ps.rule(n, i+1, names); ok {
			p.rules = append(p.rules, rl)
		}
	}
}

// rule parses the rule at n, the index-th (1-based) of the file.
func (ps *parser) rule(n *yaml.Node, index int, names map[string]int) (rule, bool) {
	before := len(ps.errs)
	r := rule{line: n.Line}
	what := fmt.Sprintf("rule %d", index)
	// The name first, so that every other error can say which rule.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := deref(n.Content[i]), deref(n.Content[i+1]); k.Value == "name" && v.Kind == yaml.ScalarNode && v.Value != "" {
			what = fmt.Sprintf("rule %q", v.Value)
			break
		}
	}
	f := ps.fields(n, what, ruleKeys)
	if nf, ok := f["name"]; !ok {
		ps.errorf(n, "%s: missing name", what)
	} else if name, ok := ps.str(nf, what); ok {
		switch {
		case name == "":
			ps.errorf(nf.val, "%s: name is empty", what)
		case name == RuleDefault || name == RulePlatform:
			ps.errorf(nf.val, "%s: the names %q and %q are reserved", what, RuleDefault, RulePlatform)
		default:
			if line, dup := names[name]; dup {
				ps.errorf(nf.val, "%s: duplicate name (first used at line %d)", what, line)
			} else {
				names[name] = nf.val.Line
			}
		}
		r.name = name
	}

	if tf, ok := f["tools"]; !ok {
		ps.errorf(n, "%s: missing tools (names or globs such as \"mcp__github__*\")", what)
	} else if items, ok := ps.strList(tf, what); ok {
		if len(items) == 0 {
			ps.errorf(tf.val, "%s: tools is empty", what)
		}
		for _, it := range items {
			if _, err := path.Match(it.Value, ""); err != nil {
				ps.errorf(it, "%s: invalid tool pattern %q: %v", what, it.Value, err)
				continue
			}
			if !contains(r.tools, it.Value) {
				r.tools = append(r.tools, it.Value)
			}
		}
	}

	if wf, ok := f["when"]; ok {
		if src, ok := ps.str(wf, what); ok {
			if strings.TrimSpace(src) == "" {
				ps.errorf(wf.val, "%s: when is empty (leave it out for no condition)", what)
			} else {
				cond, msgs := compileCondition(src)
				for _, m := range msgs {
					ps.errorf(wf.val, "%s: when: %s", what, m)
				}
				r.when = cond
			}
		}
	}

	ps.outcome(n, f, what, &r.outcome)
	return r, len(ps.errs) == before
}

// outcome parses the decision and its options, of a rule or the default,
// from the mapping m.
func (ps *parser) outcome(m *yaml.Node, f map[string]field, what string, o *outcome) {
	known := false
	if df, ok := f["decision"]; !ok {
		ps.errorf(m, "%s: missing decision (allow, deny, ask or defer)", what)
	} else if s, ok := ps.str(df, what); ok {
		d, err := ParseDecision(s)
		if err != nil {
			ps.errorf(df.val, "%s: %v", what, err)
		} else {
			o.decision, known = d, true
		}
	}
	if mf, ok := f["message"]; ok {
		o.message, _ = ps.str(mf, what)
	}
	// The options of a decision that waits for a human.
	waitsOnly := func(key string) (field, bool) {
		fl, ok := f[key]
		if ok && known && !o.decision.waits() {
			ps.errorf(fl.key, "%s: %s applies only to ask and defer, not %s", what, key, o.decision)
			return fl, false
		}
		return fl, ok
	}
	if o.decision.waits() {
		o.deadline = o.decision.defaultDeadline()
	}
	if fl, ok := waitsOnly("deadline"); ok {
		if s, ok := ps.str(fl, what); ok {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				ps.errorf(fl.val, "%s: invalid deadline %q (want a duration such as 90s, 30m or 2h)", what, s)
			case d <= 0:
				ps.errorf(fl.val, "%s: deadline %q must be positive", what, s)
			case d > MaxDeadlineAllowed:
				ps.errorf(fl.val, "%s: deadline %q is longer than the maximum, %s", what, s, MaxDeadlineAllowed)
			default:
				o.deadline = d
			}
		}
	}
	if fl, ok := waitsOnly("channels"); ok {
		if items, ok := ps.strList(fl, what); ok {
			for _, it := range items {
				if contains(o.channels, it.Value) {
					ps.errorf(it, "%s: channel %q is listed twice", what, it.Value)
					continue
				}
				o.channels = append(o.channels, it.Value)
			}
		}
	}
	if fl, ok := waitsOnly("allow_edit"); ok {
		if fl.val.Kind != yaml.ScalarNode || fl.val.Tag != "!!bool" || fl.val.Decode(&o.allowEdit) != nil {
			ps.errorf(fl.val, "%s: allow_edit must be true or false", what)
		}
	}
	// What a call that runs does to the workspace's checkpoints.
	if fl, ok := f["read_only"]; ok {
		ps.boolean(fl, what, &o.readOnly)
	}
	if fl, ok := f["rollback"]; ok {
		if s, ok := ps.str(fl, what); ok {
			switch s {
			case "on_error":
				o.rollbackOnError = true
			case "never":
			default:
				ps.errorf(fl.val, "%s: rollback must be on_error or never, not %q", what, s)
			}
		}
	}
	if o.readOnly && o.rollbackOnError {
		ps.errorf(m, "%s: a read_only call takes no checkpoint, so it cannot be rolled back on error", what)
	}
}

// index builds the tool lookups of a parsed policy.
func (p *Policy) index() {
	p.exact = make(map[string][]int)
	for i := range p.rules {
		for _, t := range p.rules[i].tools {
			if hasMeta(t) {
				p.globs = append(p.globs, newGlob(i, t))
				continue
			}
			if l := p.exact[t]; len(l) == 0 || l[len(l)-1] != i {
				p.exact[t] = append(l, i)
			}
		}
	}
}
