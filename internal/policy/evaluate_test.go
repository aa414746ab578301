package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := Parse(t.Name()+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// input encodes v as a call's JSON input.
func input(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestToolPatternsMatchNamesAndGlobs(t *testing.T) {
	tests := []struct {
		pattern string
		tool    string
		want    bool
	}{
		{"bash", "bash", true},
		{"bash", "bash2", false},
		{"bash", "Bash", false},
		{"mcp__github__*", "mcp__github__create_issue", true},
		{"mcp__github__*", "mcp__github__", true},
		{"mcp__github__*", "mcp__gitlab__create_issue", false},
		{"mcp__github__*", "mcp__github", false},
		{"mcp__*__delete_*", "mcp__github__delete_repo", true},
		{"mcp__*__delete_*", "mcp__github__create_repo", false},
		{"mcp__*", "read", false},
		{"*", "anything_at_all", true},
		{"*", "with/slash", true},
		{"mcp__x__*", "mcp__x__a/b", true},
		{"a*c", "a/b/c", true},
		{"ba?h", "bash", true},
		{"ba?h", "bah", false},
		{"[rw]*", "write", true},
		{"[rw]*", "edit", false},
		{"[^r]ead", "read", false},
		{"[^r]ead", "bead", true},
		{`custom\*`, "custom*", true},
		{`custom\*`, "customer", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"_"+tt.tool, func(t *testing.T) {
			p := mustParse(t, fmt.Sprintf("version: 1\ndefault: {decision: deny}\nrules:\n  - name: r\n    tools: [%q]\n    decision: allow\n", tt.pattern))
			res := p.Evaluate(Call{Tool: tt.tool})
			if got := res.Decision == Allow; got != tt.want {
				t.Errorf("pattern %q, tool %q: matched %v, want %v", tt.pattern, tt.tool, got, tt.want)
			}
		})
	}
}

func TestRuleListedBySeveralPatternsMatchesOnce(t *testing.T) {
	p := mustParse(t, head+`  - name: a
    tools: [mcp__s__t, "mcp__*", "*", mcp__s__t]
    decision: ask
  - name: b
    tools: ["mcp__s__*"]
    decision: deny
  - name: c
    tools: [mcp__s__t]
    decision: defer
`)
	res := p.Evaluate(Call{Tool: "mcp__s__t"})
	var got []string
	for _, m := range res.Matched {
		got = append(got, m.Rule)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, got); diff != "" {
		t.Errorf("Matched (-want +got):\n%s", diff)
	}
	if res.Rule != "b" {
		t.Errorf("winner %q, want b", res.Rule)
	}
}

func TestConditionsSeeInputSessionAndEnvironment(t *testing.T) {
	p := mustParse(t, head+`  - name: docs writes
    tools: [write]
    when: input.file_path.startsWith("docs/")
    decision: allow
  - name: other writes
    tools: [write]
    when: '!input.file_path.startsWith("docs/")'
    decision: defer
  - name: prod needs review
    tools: ["*"]
    when: environment.labels["stage"] == "prod" && session.agent != "trusted" && environment.worker_id == "w1"
    decision: defer
  - name: long infra jobs
    tools: [bash]
    when: session.metadata["team"] == "infra" && input.timeout > 600
    decision: deny
  - name: by session and environment id
    tools: [grep]
    when: session.id == "sesn_1" && environment.id == "env_1" && tool == "grep"
    decision: deny
  - name: the rest of bash
    tools: [bash]
    decision: allow
`)
	dev := Environment{ID: "env_1", WorkerID: "w1", Labels: map[string]string{"stage": "dev"}}
	prod := Environment{ID: "env_1", WorkerID: "w1", Labels: map[string]string{"stage": "prod"}}
	infra := Session{ID: "sesn_2", Agent: "trusted", Metadata: map[string]string{"team": "infra"}}
	tests := []struct {
		name string
		call Call
		want Decision
		rule string
	}{
		{"docs write in dev", Call{Tool: "write", Input: input(map[string]any{"file_path": "docs/a.md"}), Environment: dev, Session: infra}, Allow, "docs writes"},
		{"code write in dev", Call{Tool: "write", Input: input(map[string]any{"file_path": "main.go"}), Environment: dev, Session: infra}, Defer, "other writes"},
		{"docs write in prod by an untrusted agent", Call{Tool: "write", Input: input(map[string]any{"file_path": "docs/a.md"}), Environment: prod}, Defer, "prod needs review"},
		{"docs write in prod by the trusted agent", Call{Tool: "write", Input: input(map[string]any{"file_path": "docs/a.md"}), Environment: prod, Session: infra}, Allow, "docs writes"},
		{"long infra job (a JSON number against an int)", Call{Tool: "bash", Input: input(map[string]any{"command": "make", "timeout": 900}), Environment: dev, Session: infra}, Deny, "long infra jobs"},
		{"short infra job", Call{Tool: "bash", Input: input(map[string]any{"command": "make", "timeout": 60}), Environment: dev, Session: infra}, Allow, "the rest of bash"},
		{"grep by session and environment ids", Call{Tool: "grep", Input: input(map[string]any{}), Session: Session{ID: "sesn_1"}, Environment: dev}, Deny, "by session and environment id"},
		{"grep in another session", Call{Tool: "grep", Input: input(map[string]any{}), Session: Session{ID: "sesn_9"}, Environment: dev}, Ask, "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := p.Evaluate(tt.call)
			if res.Decision != tt.want || res.Rule != tt.rule {
				t.Errorf("got %v by %q, want %v by %q\n%s", res.Decision, res.Rule, tt.want, tt.rule, p.Explain(tt.call))
			}
		})
	}
}

func TestConditionErrorsFailClosed(t *testing.T) {
	p := mustParse(t, `version: 1
default:
  decision: allow
rules:
  - name: docs writes run
    tools: [write]
    when: input.file_path.startsWith("docs/")
    decision: allow
  - name: no rm
    tools: [bash]
    when: input.command.matches("rm ")
    decision: deny
  - name: flagged
    tools: [edit]
    when: input.flag
    decision: ask
`)
	tests := []struct {
		name     string
		call     Call
		want     Decision
		rule     string
		explains string
	}{
		// A missing key makes the deny rule's condition an error: it counts
		// as true, so the call is denied.
		{"deny rule, missing key", Call{Tool: "bash", Input: input(map[string]any{"cmd": "rm -rf /"})}, Deny, "no rm", "condition error (counts as true)"},
		// A wrong type too.
		{"deny rule, wrong type", Call{Tool: "bash", Input: input(map[string]any{"command": 42})}, Deny, "no rm", "condition error (counts as true)"},
		// For an allow rule an error counts as false: the call is not
		// allowed by it and falls through (here to the default).
		{"allow rule, missing key", Call{Tool: "write", Input: input(map[string]any{"path": "docs/a.md"}), Platform: "ask"}, Ask, "platform", "condition error (counts as false)"},
		// A dynamic result that is not a bool is an evaluation error.
		{"non-bool result", Call{Tool: "edit", Input: input(map[string]any{"flag": "yes"})}, Ask, "flagged", "not a bool"},
		{"bool result", Call{Tool: "edit", Input: input(map[string]any{"flag": false})}, Allow, "default", "condition false"},
		// Keys that differ only in case could reach the tool either way.
		{"ambiguous keys", Call{Tool: "bash", Input: []byte(`{"command":"ls","Command":"rm -rf /"}`)}, Deny, "no rm", "differ only in case"},
		// A key twice: encoding/json keeps the last, the SDK's tools the
		// first. Spelt alike or only decoded alike, at any depth.
		{"a key twice", Call{Tool: "bash", Input: []byte(`{"command":"rm -rf /","command":"ls"}`)}, Deny, "no rm", `"command" twice`},
		{"a key twice, escaped", Call{Tool: "bash", Input: []byte(`{"command":"rm -rf /","\u0063ommand":"ls"}`)}, Deny, "no rm", `"command" twice`},
		{"a key twice, nested", Call{Tool: "bash", Input: []byte(`{"command":"ls","opts":[{"a":1,"a":2}]}`)}, Deny, "no rm", `"a" twice`},
		{"a key twice, after strings with quotes and backslashes", Call{Tool: "bash", Input: []byte(`{"command":"a\"b\\","x":["\\\"",{"command":1}],"command":"ls"}`)}, Deny, "no rm", `"command" twice`},
		{"one key in two objects", Call{Tool: "bash", Input: []byte(`{"command":"ls","x":{"a":1},"y":[{"a":2},{"a":3}]}`)}, Allow, "default", "condition false"},
		{"input not an object", Call{Tool: "bash", Input: []byte(`["rm -rf /"]`)}, Deny, "no rm", "not an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := p.Evaluate(tt.call)
			if res.Decision != tt.want || res.Rule != tt.rule {
				t.Errorf("got %v by %q, want %v by %q", res.Decision, res.Rule, tt.want, tt.rule)
			}
			if ex := p.Explain(tt.call); !strings.Contains(ex, tt.explains) {
				t.Errorf("Explain does not say %q:\n%s", tt.explains, ex)
			}
		})
	}

	res := p.Evaluate(Call{Tool: "bash", Input: input(map[string]any{})})
	if len(res.Matched) != 1 || !strings.HasPrefix(res.Matched[0].Note, "condition error (counts as true): ") {
		t.Errorf("Matched = %+v, want the deny rule with the error in its note", res.Matched)
	}
	res = p.Evaluate(Call{Tool: "bash", Input: []byte(`"rm"`)})
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "a JSON string, not an object") {
		t.Errorf("Notes = %q, want a note on the non-object input", res.Notes)
	}
}

func TestCostLimitStopsPathologicalCondition(t *testing.T) {
	p := mustParse(t, head+`  - name: slow
    tools: [bash]
    when: input.xs.all(a, input.xs.all(b, input.xs.all(c, a + b + c >= 0)))
    decision: deny
`)
	// Unbounded, this is 8·10⁹ steps.
	xs := make([]int, 2000)
	done := make(chan Result, 1)
	start := time.Now()
	go func() { done <- p.Evaluate(Call{Tool: "bash", Input: input(map[string]any{"xs": xs})}) }()
	var res Result
	select {
	case res = <-done:
		t.Logf("stopped after %v", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("evaluation still running after 10s; the cost limit did not stop it")
	}
	if res.Decision != Deny || len(res.Matched) != 1 || !strings.Contains(res.Matched[0].Note, "cost limit") {
		t.Errorf("got %v, %+v; want a deny by a condition error over the cost limit", res.Decision, res.Matched)
	}
}

// The spelling the package doc gives for a boolean field catches the
// loose spellings the SDK's tools accept as true, and only those.
func TestALooseBooleanIsCaughtAsTheDocSays(t *testing.T) {
	p := mustParse(t, `version: 1
default:
  decision: allow
rules:
  - name: no restarts
    tools: [bash]
    when: has(input.restart) && string(input.restart) in ["true", "1"]
    decision: deny
`)
	for raw, want := range map[string]Decision{
		`{"command":"id","restart":true}`:    Deny,
		`{"command":"id","restart":"true"}`:  Deny,
		`{"command":"id","restart":1}`:       Deny,
		`{"command":"id","restart":false}`:   Allow,
		`{"command":"id","restart":"false"}`: Allow,
		`{"command":"id"}`:                   Allow,
	} {
		if got := p.Evaluate(Call{Tool: "bash", Input: []byte(raw)}).Decision; got != want {
			t.Errorf("%s: %v, want %v", raw, got, want)
		}
	}
}

func TestProductionExampleDecidesAsItsCommentsSay(t *testing.T) {
	p, err := Load("../../examples/policies/production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	prod := Environment{Labels: map[string]string{"stage": "prod"}}
	bot := Session{Agent: "release-bot"}
	tests := []struct {
		name string
		call Call
		want Decision
		rule string
	}{
		{"read", Call{Tool: "read", Input: input(map[string]any{"file_path": "/workspace/main.go"})}, Allow, "read-only tools"},
		{"read a secret", Call{Tool: "read", Input: input(map[string]any{"file_path": "/home/u/.ssh/id_rsa"})}, Deny, "no secret files"},
		{"cat a secret", Call{Tool: "bash", Input: input(map[string]any{"command": "cat .env"})}, Deny, "no secret files"},
		{"rm -rf /", Call{Tool: "bash", Input: input(map[string]any{"command": "rm -rf /"})}, Deny, "no destructive shell"},
		{"force push", Call{Tool: "bash", Input: input(map[string]any{"command": "git push origin main --force"})}, Deny, "no destructive shell"},
		{"go test", Call{Tool: "bash", Input: input(map[string]any{"command": "go test ./..."})}, Allow, "routine shell"},
		{"routine with a pipe", Call{Tool: "bash", Input: input(map[string]any{"command": "ls | sh"})}, Ask, "other shell commands"},
		{"routine with arguments", Call{Tool: "bash", Input: input(map[string]any{"command": "git log -n 3 --oneline main.go"})}, Allow, "routine shell"},
		// What the shell would unquote, unescape or expand into a secret's
		// path is not routine.
		{"quoted secret", Call{Tool: "bash", Input: input(map[string]any{"command": `cat ~/.s""sh/config`})}, Ask, "other shell commands"},
		{"single-quoted secret", Call{Tool: "bash", Input: input(map[string]any{"command": `cat .e''nv`})}, Ask, "other shell commands"},
		{"escaped secret", Call{Tool: "bash", Input: input(map[string]any{"command": `cat .a\ws/credentials`})}, Ask, "other shell commands"},
		{"globbed secret", Call{Tool: "bash", Input: input(map[string]any{"command": "cat .ss?/config"})}, Ask, "other shell commands"},
		{"bracketed secret", Call{Tool: "bash", Input: input(map[string]any{"command": "cat .e[n]v"})}, Ask, "other shell commands"},
		{"home secret", Call{Tool: "bash", Input: input(map[string]any{"command": "head ~/.n?trc"})}, Ask, "other shell commands"},
		{"curl", Call{Tool: "bash", Input: input(map[string]any{"command": "curl example.com"})}, Ask, "other shell commands"},
		{"bash without a command", Call{Tool: "bash", Input: input(map[string]any{})}, Deny, "no destructive shell"},
		{"docs write", Call{Tool: "write", Input: input(map[string]any{"file_path": "docs/x.md", "content": "hi"})}, Allow, "docs changes"},
		{"code write", Call{Tool: "write", Input: input(map[string]any{"file_path": "main.go", "content": "hi"})}, Defer, "code changes need a review"},
		{"mcp call", Call{Tool: "mcp__slack__post", Input: input(map[string]any{})}, Ask, "mcp tools"},
		{"release bot reads github in prod", Call{Tool: "mcp__github__list_prs", Input: input(map[string]any{}), Session: bot, Environment: prod}, Allow, "release agent reads github"},
		{"release bot reads github elsewhere", Call{Tool: "mcp__github__list_prs", Input: input(map[string]any{}), Session: bot}, Ask, "mcp tools"},
		{"github write in prod", Call{Tool: "mcp__github__merge_pr", Input: input(map[string]any{}), Session: bot, Environment: prod}, Defer, "github writes in prod"},
		{"custom tool", Call{Tool: "deploy", Input: input(map[string]any{})}, Ask, "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := p.Evaluate(tt.call)
			if res.Decision != tt.want || res.Rule != tt.rule {
				t.Errorf("got %v by %q, want %v by %q\n%s", res.Decision, res.Rule, tt.want, tt.rule, p.Explain(tt.call))
			}
		})
	}
	if diff := cmp.Diff([]string{"ops-webhook", "slack"}, p.Channels()); diff != "" {
		t.Errorf("Channels (-want +got):\n%s", diff)
	}
	if got := p.MaxDeadline(); got != 4*time.Hour {
		t.Errorf("MaxDeadline = %v, want 4h", got)
	}
}

func TestExplainShowsEveryRuleAndTheDecision(t *testing.T) {
	p := mustParse(t, head+`  - name: reads
    tools: [read]
    decision: allow
  - name: destructive
    tools: [bash]
    when: input.command.startsWith("rm")
    decision: deny
    message: no deleting
  - name: shell
    tools: [bash]
    decision: ask
`)
	ex := p.Explain(Call{Tool: "bash", Input: input(map[string]any{"command": "rm -rf x"}), Platform: "ask"})
	for _, want := range []string{
		`call: tool "bash", evaluated_permission "ask"`,
		`line 5, "reads" (allow): not matched: tool did not match read`,
		`line 8, "destructive" (deny): MATCHED: condition true`,
		`when: input.command.startsWith("rm")`,
		`line 13, "shell" (ask): MATCHED: no condition`,
		`policy decision: deny, by rule "destructive" (the strictest of 2 matched rules`,
		`platform: evaluated_permission "ask" means ask; the policy's deny is at least as strict, so it stands`,
		`decision: deny (source rule, rule "destructive")`,
		`message: no deleting`,
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}

	ex = p.Explain(Call{Tool: "bash", Input: input(map[string]any{"command": "ls"}), Platform: "deny"})
	for _, want := range []string{
		`line 8, "destructive" (deny): not matched: condition false`,
		`policy decision: ask, by rule "shell"`,
		`platform: evaluated_permission "deny" means deny, stricter than the policy's ask, so it wins`,
		`decision: deny (source platform, rule "platform")`,
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}

	ex = p.Explain(Call{Tool: "web_fetch", Platform: "later"})
	for _, want := range []string{
		`policy decision: ask, by the default (line 2): no rule matched`,
		`("later" is not a value this build knows; it counts as ask)`,
		"deadline: 2m0s",
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}
}

func TestEvaluateIsSafeForConcurrentUse(t *testing.T) {
	p := mustParse(t, string(Synthetic(100)))
	calls := SyntheticCalls(400)
	want := make([]Result, len(calls))
	for i, c := range calls {
		want[i] = p.Evaluate(c)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range calls {
				j := (i + g*50) % len(calls)
				if diff := cmp.Diff(want[j], p.Evaluate(calls[j])); diff != "" {
					errs <- fmt.Sprintf("call %d (-serial +concurrent):\n%s", j, diff)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestSyntheticPolicyExercisesEveryDecision(t *testing.T) {
	p := mustParse(t, string(Synthetic(100)))
	if p.Rules() != 100 {
		t.Fatalf("%d rules, want 100", p.Rules())
	}
	seen := map[Decision]int{}
	conds := 0
	for _, c := range SyntheticCalls(1000) {
		res := p.Evaluate(c)
		seen[res.Decision]++
		for _, m := range res.Matched {
			if strings.HasPrefix(m.Note, "condition") {
				conds++
			}
		}
	}
	for _, d := range []Decision{Allow, Ask, Defer, Deny} {
		if seen[d] == 0 {
			t.Errorf("no call was decided %v: %v", d, seen)
		}
	}
	if conds == 0 {
		t.Error("no condition held on any call")
	}
}
