package policy

import (
	"path"
	"strings"
)

// glob is one tool pattern with a wildcard, compiled for the common shapes.
type glob struct {
	rule    int
	kind    globKind
	pattern string // the prefix for globPrefix; the path.Match pattern for globMatch
}

type globKind uint8

const (
	globAll    globKind = iota // "*"
	globPrefix                 // "mcp__github__*": a literal then one trailing *
	globMatch                  // anything else
)

// hasMeta reports whether s has path.Match syntax in it.
func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// slashSubstitute stands in for '/' in tool names and patterns, so that
// path.Match's * and ? match it like any other character: a tool name with
// a slash in it must not slip past a "*" rule.
const slashSubstitute = "\x00"

func newGlob(rule int, pattern string) glob {
	switch {
	case pattern == "*":
		return glob{rule: rule, kind: globAll}
	case strings.HasSuffix(pattern, "*") && !hasMeta(pattern[:len(pattern)-1]):
		return glob{rule: rule, kind: globPrefix, pattern: pattern[:len(pattern)-1]}
	default:
		return glob{rule: rule, kind: globMatch, pattern: strings.ReplaceAll(pattern, "/", slashSubstitute)}
	}
}

// match reports whether the glob matches name, whose slashes the caller has
// replaced by slashSubstitute for globMatch.
func (g *glob) match(tool, name string) bool {
	switch g.kind {
	case globAll:
		return true
	case globPrefix:
		return strings.HasPrefix(tool, g.pattern)
	default:
		ok, _ := path.Match(g.pattern, name) // validated at parse time
		return ok
	}
}

// candidates appends to buf the rules whose tools match tool, in file order.
func (p *Policy) candidates(tool string, buf []int) []int {
	out := buf[:0]
	exact := p.exact[tool]
	name := tool
	if strings.Contains(tool, "/") {
		name = strings.ReplaceAll(tool, "/", slashSubstitute)
	}
	last := -1
	for gi := range p.globs {
		g := &p.globs[gi]
		for len(exact) > 0 && exact[0] <= g.rule {
			if exact[0] != last {
				out = append(out, exact[0])
				last = exact[0]
			}
			exact = exact[1:]
		}
		if g.rule != last && g.match(tool, name) {
			out = append(out, g.rule)
			last = g.rule
		}
	}
	for _, i := range exact {
		if i != last {
			out = append(out, i)
		}
	}
	return out
}

// verdict is what happened to one rule whose tools matched a call.
type verdict struct {
	rule    int
	matched bool
	note    string
}

// Evaluate decides on a call. It is safe for concurrent use.
func (p *Policy) Evaluate(c Call) Result {
	return withPlatform(p.decide(&c, nil), c.Platform)
}

// decide makes the policy's decision on c, without the platform's, and, if
// trace is not nil, records a verdict for every rule whose tools matched.
// Explain and Evaluate share it, so an explanation is of the decision
// Evaluate makes.
func (p *Policy) decide(c *Call, trace *[]verdict) Result {
	var buf [32]int
	var act *activation
	best := -1
	var matched []Match
	for _, i := range p.candidates(c.Tool, buf[:]) {
		r := &p.rules[i]
		holds, note := true, "no condition"
		if r.when != nil {
			if act == nil {
				act = newActivation(c)
			}
			ok, err := r.when.eval(act)
			switch {
			case err != nil && r.decision == Allow:
				holds, note = false, "condition error (counts as false): "+err.Error()
			case err != nil:
				holds, note = true, "condition error (counts as true): "+err.Error()
			case ok:
				note = "condition true"
			default:
				holds, note = false, "condition false"
			}
		}
		if trace != nil {
			*trace = append(*trace, verdict{rule: i, matched: holds, note: note})
		}
		if !holds {
			continue
		}
		matched = append(matched, Match{Rule: r.name, Line: r.line, Decision: r.decision, Note: note})
		if best < 0 || r.decision > p.rules[best].decision {
			best = i
		}
	}

	var res Result
	if best >= 0 {
		r := &p.rules[best]
		res = r.result(SourceRule, r.name)
	} else {
		res = p.def.result(SourceDefault, RuleDefault)
	}
	res.Matched = matched
	if act != nil && act.note != "" {
		res.Notes = append(res.Notes, act.note)
	}
	return res
}

// withPlatform combines the policy's decision with the platform's
// evaluated_permission: the stricter wins, the policy's on a tie.
func withPlatform(res Result, platform string) Result {
	if pd := platformDecision(platform); pd > res.Decision {
		res.Decision, res.Source, res.Rule = pd, SourcePlatform, RulePlatform
		res.Message, res.Deadline, res.Channels, res.AllowEdit = "", 0, nil, false
		switch pd {
		case Deny:
			res.Message = platformDenyMessage
		case Ask:
			res.Message = platformAskMessage
			res.Deadline = DefaultAskDeadline
		}
	}
	return res
}

func (o *outcome) result(src Source, name string) Result {
	return Result{
		Decision:        o.decision,
		Source:          src,
		Rule:            name,
		Message:         o.message,
		Deadline:        o.deadline,
		Channels:        o.channels,
		AllowEdit:       o.allowEdit,
		ReadOnly:        o.readOnly,
		RollbackOnError: o.rollbackOnError,
	}
}
