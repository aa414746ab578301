package policy

import (
	"fmt"
	"testing"
	"time"
)

func TestDecisionNamesRoundTrip(t *testing.T) {
	for _, d := range []Decision{Allow, Ask, Defer, Deny} {
		got, err := ParseDecision(d.String())
		if err != nil || got != d {
			t.Errorf("ParseDecision(%q) = %v, %v; want %v", d.String(), got, err, d)
		}
	}
	for _, bad := range []string{"", "Allow", "DENY", "maybe", " ask"} {
		if _, err := ParseDecision(bad); err == nil {
			t.Errorf("ParseDecision(%q) succeeded, want an error", bad)
		}
	}
	if !(Allow < Ask && Ask < Defer && Defer < Deny) {
		t.Error("decisions are not ordered Allow < Ask < Defer < Deny")
	}
}

// twoRules is a policy in which both rules match the tool "t".
func twoRules(t *testing.T, first, second Decision) *Policy {
	t.Helper()
	src := fmt.Sprintf(`version: 1
default:
  decision: ask
rules:
  - name: first
    tools: [t]
    decision: %s
    message: from first
  - name: second
    tools: ["*"]
    decision: %s
    message: from second
`, first, second)
	p, err := Parse("two.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStrictestMatchedRuleWinsAndFirstAmongEquals(t *testing.T) {
	// Every combination of two matched rules' decisions, written out.
	tests := []struct {
		first, second Decision
		want          Decision
		wantRule      string
	}{
		{Allow, Allow, Allow, "first"},
		{Allow, Ask, Ask, "second"},
		{Allow, Defer, Defer, "second"},
		{Allow, Deny, Deny, "second"},
		{Ask, Allow, Ask, "first"},
		{Ask, Ask, Ask, "first"},
		{Ask, Defer, Defer, "second"},
		{Ask, Deny, Deny, "second"},
		{Defer, Allow, Defer, "first"},
		{Defer, Ask, Defer, "first"},
		{Defer, Defer, Defer, "first"},
		{Defer, Deny, Deny, "second"},
		{Deny, Allow, Deny, "first"},
		{Deny, Ask, Deny, "first"},
		{Deny, Defer, Deny, "first"},
		{Deny, Deny, Deny, "first"},
	}
	for _, tt := range tests {
		t.Run(tt.first.String()+"_"+tt.second.String(), func(t *testing.T) {
			res := twoRules(t, tt.first, tt.second).Evaluate(Call{Tool: "t", Input: []byte(`{}`)})
			if res.Decision != tt.want || res.Source != SourceRule || res.Rule != tt.wantRule {
				t.Errorf("got %v from %s %q, want %v from rule %q", res.Decision, res.Source, res.Rule, tt.want, tt.wantRule)
			}
			if want := "from " + tt.wantRule; res.Message != want {
				t.Errorf("message %q, want the winner's %q", res.Message, want)
			}
			if len(res.Matched) != 2 || res.Matched[0].Rule != "first" || res.Matched[1].Rule != "second" {
				t.Errorf("Matched = %+v, want first then second", res.Matched)
			}
		})
	}
}

func TestStricterOfPolicyAndPlatformWins(t *testing.T) {
	const (
		r = SourceRule
		p = SourcePlatform
	)
	// Every policy decision against every evaluated_permission, written out.
	tests := []struct {
		policy   Decision
		platform string
		want     Decision
		source   Source
	}{
		{Allow, "", Allow, r},
		{Allow, "allow", Allow, r},
		{Allow, "ask", Ask, p},
		{Allow, "deny", Deny, p},
		{Allow, "bogus", Ask, p},
		{Ask, "", Ask, r},
		{Ask, "allow", Ask, r},
		{Ask, "ask", Ask, r},
		{Ask, "deny", Deny, p},
		{Ask, "bogus", Ask, r},
		{Defer, "", Defer, r},
		{Defer, "allow", Defer, r},
		{Defer, "ask", Defer, r},
		{Defer, "deny", Deny, p},
		{Defer, "bogus", Defer, r},
		{Deny, "", Deny, r},
		{Deny, "allow", Deny, r},
		{Deny, "ask", Deny, r},
		{Deny, "deny", Deny, r},
		{Deny, "bogus", Deny, r},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s_%q", tt.policy, tt.platform), func(t *testing.T) {
			pol := twoRules(t, tt.policy, Allow)
			res := pol.Evaluate(Call{Tool: "t", Input: []byte(`{}`), Platform: tt.platform})
			wantRule := "first"
			if tt.source == SourcePlatform {
				wantRule = RulePlatform
			}
			if res.Decision != tt.want || res.Source != tt.source || res.Rule != wantRule {
				t.Fatalf("got %v from %s %q, want %v from %s %q", res.Decision, res.Source, res.Rule, tt.want, tt.source, wantRule)
			}
			if tt.source != SourcePlatform {
				return
			}
			switch tt.want {
			case Deny:
				if res.Message != "denied by the session's permission policy" || res.Deadline != 0 {
					t.Errorf("platform deny: message %q, deadline %v", res.Message, res.Deadline)
				}
			case Ask:
				if res.Deadline != DefaultAskDeadline || res.Channels != nil || res.AllowEdit {
					t.Errorf("platform ask: deadline %v (want %v), channels %v, allow_edit %v", res.Deadline, DefaultAskDeadline, res.Channels, res.AllowEdit)
				}
			}
		})
	}
}

func TestDefaultAppliesWhenNoRuleMatches(t *testing.T) {
	p, err := Parse("d.yaml", []byte(`version: 1
default:
  decision: defer
  message: nobody wrote a rule for this
  channels: [ops]
rules:
  - name: reads
    tools: [read]
    decision: allow
`))
	if err != nil {
		t.Fatal(err)
	}
	res := p.Evaluate(Call{Tool: "mcp__jira__create_ticket", Input: []byte(`{}`)})
	if res.Decision != Defer || res.Source != SourceDefault || res.Rule != RuleDefault {
		t.Fatalf("got %v from %s %q, want defer from the default", res.Decision, res.Source, res.Rule)
	}
	if res.Deadline != time.Hour || res.Message != "nobody wrote a rule for this" || len(res.Channels) != 1 || res.Matched != nil {
		t.Errorf("default's outcome not carried over: %+v", res)
	}
	res = p.Evaluate(Call{Tool: "mcp__jira__create_ticket", Input: []byte(`{}`), Platform: "deny"})
	if res.Decision != Deny || res.Source != SourcePlatform {
		t.Errorf("platform deny over the default: got %v from %s", res.Decision, res.Source)
	}
}
