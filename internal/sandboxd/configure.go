package sandboxd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/shell/spawn"
)

// configureTool is [sandbox.ToolConfigure]: it adds variables to the
// environment the tools start processes with (the map the bash and command
// tools read), and exports them in the persistent shell, which already
// runs in a warm sandbox.
type configureTool struct {
	env  map[string]string
	bash *bashTool // nil when there is no bash tool
}

func (t *configureTool) Name() string { return sandbox.ToolConfigure }

func (t *configureTool) Description() string {
	return "Set environment variables for every command run from now on, the persistent shell included."
}

func (t *configureTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{
		Properties: map[string]any{"env": map[string]any{"type": "object"}},
		Required:   []string{"env"},
	}
}

func (t *configureTool) Execute(ctx context.Context, raw json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	var in struct {
		Env map[string]string `json:"env"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, fmt.Errorf("invalid %s input: %v", sandbox.ToolConfigure, err)
	}
	names := make([]string, 0, len(in.Env))
	for k, v := range in.Env {
		if !sandbox.ValidEnvName(k) || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("%s: %q is not a valid variable", sandbox.ToolConfigure, k)
		}
		names = append(names, k)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return textResult("nothing to set"), nil
	}
	var export strings.Builder
	for _, k := range names {
		t.env[k] = in.Env[k]
		// The shell keeps its own prompt, terminal and history file, as a
		// shell started with these variables would (spawn.Bash).
		if !spawn.Overridden(k) {
			export.WriteString("export " + k + "=" + shellQuote(in.Env[k]) + "\n")
		}
	}
	if t.bash != nil && export.Len() > 0 {
		if err := t.source(ctx, export.String()); err != nil {
			return nil, fmt.Errorf("%s: export in the shell: %v", sandbox.ToolConfigure, err)
		}
	}
	return textResult(fmt.Sprintf("set %s", strings.Join(names, " "))), nil
}

// source runs script in the persistent shell, if one runs (one started
// later gets t.env), from a temporary file: the shell's line editor takes
// a command typed on its terminal a character at a time, so a long one is
// slow (BenchmarkConfigure).
func (t *configureTool) source(ctx context.Context, script string) error {
	sess := t.bash.running()
	if sess == nil {
		return nil
	}
	f, err := os.CreateTemp("", "perimeter-env-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	out, code, err := sess.Exec(ctx, ". "+shellQuote(f.Name()), 0)
	if err != nil {
		_ = t.bash.restart() // its state is unknown; the next one starts with t.env
		return err
	}
	if out = strings.TrimSpace(out); out != "" || code != 0 {
		return fmt.Errorf("the shell said %q (exit status %d)", out, code)
	}
	return nil
}

// shellQuote quotes s for bash: in single quotes, inside which nothing is
// special but the quote itself, each of which closes the quoting, is
// written escaped and reopens it.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// textResult is a tool result of one text block.
func textResult(s string) []anthropic.BetaToolResultBlockParamContentUnion {
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: s}}}
}

// resultText joins the text blocks of a tool's result.
func resultText(blocks []anthropic.BetaToolResultBlockParamContentUnion) string {
	var b strings.Builder
	for _, c := range blocks {
		if c.OfText != nil {
			b.WriteString(c.OfText.Text)
		}
	}
	return b.String()
}
