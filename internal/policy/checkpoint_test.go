package policy

import (
	"strings"
	"testing"
)

func TestParseCheckpointOptions(t *testing.T) {
	p, err := Parse("p.yaml", []byte(head+`  - name: migrations
    tools: [bash]
    decision: allow
    rollback: on_error
  - name: listings
    tools: [glob, mcp__fs__list]
    decision: allow
    read_only: true
`))
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Evaluate(Call{Tool: "bash", Input: []byte(`{"command":"x"}`)}); !r.RollbackOnError || r.ReadOnly {
		t.Errorf("bash: %+v, want rollback on error", r)
	}
	if r := p.Evaluate(Call{Tool: "mcp__fs__list", Input: []byte(`{}`)}); !r.ReadOnly || r.RollbackOnError {
		t.Errorf("mcp__fs__list: %+v, want read only", r)
	}
	for _, tt := range []struct{ src, want string }{
		{head + "  - {name: a, tools: [bash], decision: allow, rollback: always}\n", `p.yaml:5:57: rule "a": rollback must be on_error or never, not "always"`},
		{head + "  - {name: a, tools: [bash], decision: allow, read_only: maybe}\n", `p.yaml:5:58: rule "a": read_only must be true or false`},
		{head + "  - {name: a, tools: [bash], decision: allow, read_only: true, rollback: on_error}\n", `p.yaml:5:5: rule "a": a read_only call takes no checkpoint`},
	} {
		_, err := Parse("p.yaml", []byte(tt.src))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("err = %v, want it to start %q", err, tt.want)
		}
	}
}
