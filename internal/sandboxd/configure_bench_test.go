package sandboxd

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"
)

// BenchmarkConfigure sets a session's dozen variables in a running shell:
// typed on its terminal as one command (what configure did first), and as
// configure does it, sourced from a file. The shell's line editor reads a
// typed command a character at a time.
func BenchmarkConfigure(b *testing.B) {
	env := map[string]string{}
	for i := range 12 {
		env[fmt.Sprintf("PERIMETER_VAR_%d", i)] = fmt.Sprintf("perimeter-secret:token%d:%s", i, strings.Repeat("x", 24))
	}
	input, _ := json.Marshal(map[string]any{"env": env})
	var typed strings.Builder
	typed.WriteString("export")
	for k, v := range env {
		typed.WriteString(" " + k + "=" + shellQuote(v))
	}
	typedInput, _ := json.Marshal(map[string]string{"command": typed.String()})

	dir, shellEnv := b.TempDir(), map[string]string{"PATH": "/usr/bin:/bin"}
	bash := newBashTool(agenttoolset.BetaBashTool(&agenttoolset.AgentToolContext{Workdir: dir, Env: shellEnv}), dir, shellEnv)
	defer bash.Close()
	c := &configureTool{env: shellEnv, bash: bash}
	if _, err := bash.Execute(context.Background(), json.RawMessage(`{"command":"true"}`)); err != nil {
		b.Fatal(err)
	}
	b.Run("typed", func(b *testing.B) {
		for b.Loop() {
			if _, err := bash.Execute(context.Background(), typedInput); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sourced", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Execute(context.Background(), input); err != nil {
				b.Fatal(err)
			}
		}
	})
}
