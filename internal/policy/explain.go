package policy

import (
	"fmt"
	"strings"
)

// Explain evaluates c like Evaluate and describes, for people, how the
// decision came about: every rule in file order (matched, or why not), the
// policy's decision, its combination with the platform's
// evaluated_permission, and the final decision.
func (p *Policy) Explain(c Call) string {
	var trace []verdict
	policyRes := p.decide(&c, &trace)
	res := withPlatform(policyRes, c.Platform)
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s (sha256 %.12s), %d rules\n", p.source, p.digest, len(p.rules))
	fmt.Fprintf(&b, "call: tool %q, evaluated_permission %q\n", c.Tool, c.Platform)
	for _, n := range res.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}

	fmt.Fprintln(&b, "rules:")
	if len(p.rules) == 0 {
		fmt.Fprintln(&b, "  (none)")
	}
	byRule := make(map[int]verdict, len(trace))
	for _, v := range trace {
		byRule[v.rule] = v
	}
	for i := range p.rules {
		r := &p.rules[i]
		fmt.Fprintf(&b, "  line %d, %q (%s): ", r.line, r.name, r.decision)
		v, considered := byRule[i]
		switch {
		case !considered:
			fmt.Fprintf(&b, "not matched: tool did not match %s\n", strings.Join(r.tools, ", "))
		case v.matched:
			fmt.Fprintf(&b, "MATCHED: %s\n", v.note)
		default:
			fmt.Fprintf(&b, "not matched: %s\n", v.note)
		}
		if considered && r.when != nil {
			fmt.Fprintf(&b, "      when: %s\n", oneLine(r.when.src))
		}
	}

	switch policyRes.Source {
	case SourceRule:
		fmt.Fprintf(&b, "policy decision: %s, by rule %q", policyRes.Decision, policyRes.Rule)
		if n := len(res.Matched); n > 1 {
			fmt.Fprintf(&b, " (the strictest of %d matched rules: deny > defer > ask > allow, then the first in the file)", n)
		}
		fmt.Fprintln(&b)
	default:
		fmt.Fprintf(&b, "policy decision: %s, by the default (line %d): no rule matched\n", policyRes.Decision, p.defLine)
	}

	pd := platformDecision(c.Platform)
	switch {
	case c.Platform == "" || c.Platform == "allow":
		fmt.Fprintf(&b, "platform: evaluated_permission %q expresses no opinion\n", c.Platform)
	case res.Source == SourcePlatform:
		fmt.Fprintf(&b, "platform: evaluated_permission %q means %s, stricter than the policy's %s, so it wins\n", c.Platform, pd, policyRes.Decision)
	default:
		fmt.Fprintf(&b, "platform: evaluated_permission %q means %s; the policy's %s is at least as strict, so it stands\n", c.Platform, pd, policyRes.Decision)
	}
	if pd == Ask && c.Platform != "ask" {
		fmt.Fprintf(&b, "  (%q is not a value this build knows; it counts as ask)\n", c.Platform)
	}

	fmt.Fprintf(&b, "decision: %s (source %s, rule %q)\n", res.Decision, res.Source, res.Rule)
	if res.Message != "" {
		fmt.Fprintf(&b, "  message: %s\n", oneLine(res.Message))
	}
	if res.Decision.waits() {
		fmt.Fprintf(&b, "  deadline: %s\n", res.Deadline)
		if len(res.Channels) > 0 {
			fmt.Fprintf(&b, "  channels: %s\n", strings.Join(res.Channels, ", "))
		} else {
			fmt.Fprintln(&b, "  channels: none")
		}
		fmt.Fprintf(&b, "  allow_edit: %t\n", res.AllowEdit)
	}
	if res.ReadOnly {
		fmt.Fprintln(&b, "  read_only: no checkpoint before it")
	}
	if res.RollbackOnError {
		fmt.Fprintln(&b, "  rollback: on_error (restored if it fails or the egress proxy refuses one of its requests)")
	}
	return b.String()
}

// oneLine folds a multi-line text onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
