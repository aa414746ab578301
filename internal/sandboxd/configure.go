package sandboxd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// configureTool is [sandbox.ToolConfigure]: it adds variables to the
// environment the tools start processes with (the map the bash and command
// tools read), and exports them in the persistent shell, which already
// runs in a warm sandbox.
type configureTool struct {
	env  map[string]string
	bash anthropic.BetaTool // nil when there is no bash tool
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

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
		if !envName.MatchString(k) || strings.ContainsRune(v, 0) {
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
		export.WriteString("export " + k + "=" + shellQuote(in.Env[k]) + "\n")
	}
	if t.bash != nil {
		if err := t.source(ctx, export.String()); err != nil {
			return nil, fmt.Errorf("%s: export in the shell: %v", sandbox.ToolConfigure, err)
		}
	}
	return textResult(fmt.Sprintf("set %s", strings.Join(names, " "))), nil
}

// source runs script in the persistent shell from a temporary file: the
// shell's line editor takes a command typed on its terminal a character at
// a time (about 5 µs each, and more in a sandbox), so a long one is slow.
func (t *configureTool) source(ctx context.Context, script string) error {
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
	input, _ := json.Marshal(map[string]string{"command": ". " + shellQuote(f.Name())})
	out, err := t.bash.Execute(ctx, input)
	if err != nil {
		return err
	}
	if s := resultText(out); strings.TrimSpace(s) != "" {
		return fmt.Errorf("the shell said %q", s)
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
