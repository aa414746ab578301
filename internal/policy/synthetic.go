package policy

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Synthetic returns the text of an n-rule policy for benchmarking: a
// deterministic mix of rules on exact tool names, prefix globs
// ("mcp__svc3__*"), general globs and "*", about half of them with a CEL
// condition over the input, the session or the environment, and every
// decision (the denials behind conditions). BenchmarkEvaluate100Rules and bench/decision measure it with
// SyntheticCalls. It is a benchmarking aid, not a policy to run.
func Synthetic(n int) []byte {
	var b strings.Builder
	b.WriteString("version: 1\ndefault:\n  decision: ask\nrules:\n")
	// Rules without a condition mostly let calls through or ask; the
	// conditions carry the denials, as in real policies.
	plain := []Decision{Allow, Ask, Allow, Defer, Allow}
	conditional := []Decision{Ask, Deny, Allow, Defer, Allow, Ask, Allow}
	for i := range n {
		var tools, when string
		switch i % 10 {
		case 0, 5:
			tools = "[bash]"
			if i%2 == 1 {
				when = fmt.Sprintf(`input.command.matches("rm\\s+-rf\\s+/srv/%d")`, i)
			}
		case 1, 6:
			tools = "[write, edit]"
			if i%2 == 1 {
				when = fmt.Sprintf(`!input.file_path.startsWith("/workspace/docs/%d/")`, i)
			}
		case 2, 7:
			tools = fmt.Sprintf(`["mcp__svc%d__*"]`, i%7)
			if i%2 == 1 {
				when = fmt.Sprintf(`session.agent == "agent-%d"`, i%13)
			}
		case 3, 8:
			tools = fmt.Sprintf("[custom_%d, read]", i)
			if i%2 == 1 {
				when = fmt.Sprintf(`has(input.limit) && input.limit > %d`, i*10)
			}
		case 4:
			tools = `["*"]`
			when = fmt.Sprintf(`environment.labels["tier"] == "t%d" && session.metadata["team"] != "team-%d"`, i/10%5, i/10%3)
		case 9:
			tools = `["gr?p", "[gr]lob"]`
			when = fmt.Sprintf(`tool == "grep" && input.pattern.contains("secret-%d")`, i)
		}
		fmt.Fprintf(&b, "  - name: rule-%03d\n    tools: %s\n", i, tools)
		d := plain[i%len(plain)]
		if when != "" {
			fmt.Fprintf(&b, "    when: '%s'\n", when)
			d = conditional[i%len(conditional)]
		}
		fmt.Fprintf(&b, "    decision: %s\n", d)
	}
	return []byte(b.String())
}

// SyntheticCalls returns n varied calls for benchmarking against Synthetic:
// built-in tools, MCP and custom tools and unknown tools, with inputs,
// sessions and environments that make different conditions hold.
func SyntheticCalls(n int) []Call {
	calls := make([]Call, n)
	for i := range calls {
		var tool string
		var input any
		switch i % 9 {
		case 0:
			tool, input = "bash", map[string]any{"command": fmt.Sprintf("rm -rf /srv/%d/cache", i%100)}
		case 1:
			tool, input = "bash", map[string]any{"command": "go test ./...", "timeout": 120}
		case 2:
			tool, input = "read", map[string]any{"file_path": fmt.Sprintf("/workspace/src/f%d.go", i%50), "limit": i % 500}
		case 3:
			tool, input = "write", map[string]any{"file_path": fmt.Sprintf("/workspace/docs/%d/x.md", i%100), "content": strings.Repeat("text ", 40)}
		case 4:
			tool, input = "edit", map[string]any{"file_path": "/workspace/main.go", "old_string": "a", "new_string": "b"}
		case 5:
			tool, input = "grep", map[string]any{"pattern": fmt.Sprintf("secret-%d", i%100), "path": "/workspace"}
		case 6:
			tool, input = fmt.Sprintf("mcp__svc%d__list_issues", i%7), map[string]any{"repo": "org/repo", "state": "open"}
		case 7:
			tool, input = fmt.Sprintf("custom_%d", i%100), map[string]any{"limit": i % 1000}
		case 8:
			tool, input = "glob", map[string]any{"pattern": "**/*.go"}
		}
		raw, _ := json.Marshal(input)
		calls[i] = Call{
			Tool:  tool,
			Input: raw,
			Session: Session{
				ID:       fmt.Sprintf("sesn_%d", i%17),
				Agent:    fmt.Sprintf("agent-%d", i%13),
				Metadata: map[string]string{"team": fmt.Sprintf("team-%d", i%3)},
			},
			Environment: Environment{
				ID:       "env_bench",
				WorkerID: "worker-1",
				Labels:   map[string]string{"tier": fmt.Sprintf("t%d", i%5)},
			},
			Platform: []string{"", "allow", "", "ask", ""}[i%5],
		}
	}
	return calls
}
