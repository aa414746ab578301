package sandboxd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"
)

// TestBashMatchesSDK runs the same calls through the SDK's bash tool and
// through sandboxd's, each in a workspace of its own, and wants the same
// answers: text, error or not, and the error's type.
func TestBashMatchesSDK(t *testing.T) {
	calls := []string{
		`{"command":"echo hello"}`,
		`{"command":"echo out; echo err >&2"}`,
		`{"command":"false"}`,
		`{"command":"(exit 42)"}`,
		`{"command":"printf 'no newline'"}`,
		`{"command":"printf 'a\\r\\nb\\rc\\n'"}`,
		`{"command":"printf '\\033[31mred\\033[0m\\n'"}`,
		`{"command":"echo héllo wörld; echo \"!!\""}`,
		`{"command":"cat <<'EOF'\nline one\nline two\nEOF"}`,
		`{"command":"cat"}`,
		`{"command":"cd sub 2>&1; mkdir -p sub && cd sub && export GREETING=hi && f() { echo fn; }"}`,
		`{"command":"basename \"$PWD\"; echo \"$GREETING|$TERM|$PS1|$HISTFILE|$ONLY\"; f; tr '\\0' '\\n' </proc/$$/environ | grep -c '^TERM='"}`,
		`{"command":"sleep 0.01 & wait; echo waited"}`,
		`{"command":"head -c 300000 /dev/zero | tr '\\0' a; echo; echo THE-END"}`,
		`{"command":"echo after the cap"}`,
		`{"command":""}`,
		`{"restart":true}`,
		`{"command":"basename \"$PWD\"; echo \"[$GREETING]\""}`,
		`{"restart":true,"command":"echo restarted"}`,
		`{"command":"echo started; sleep 5","timeout_ms":300}`,
		`{"command":"echo after the timeout"}`,
		`{"command":"exit 3"}`,
		`{"command":"echo after the exit"}`,
		`{"command":42}`,
		`not json`,
	}
	// TERM and PS1 are replaced in both shells, to keep output parseable.
	env := map[string]string{"PATH": os.Getenv("PATH"), "ONLY": "this", "TERM": "xterm-256color", "PS1": "$ "}
	// Workspaces of the same name, as "basename $PWD" prints it.
	sdkDir, ownDir := filepath.Join(t.TempDir(), "ws"), filepath.Join(t.TempDir(), "ws")
	for _, dir := range []string{sdkDir, ownDir} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sdk := agenttoolset.BetaBashTool(&agenttoolset.AgentToolContext{Workdir: sdkDir, Env: env})
	own := newBashTool(agenttoolset.BetaBashTool(&agenttoolset.AgentToolContext{Workdir: ownDir, Env: env}), ownDir, env)
	defer sdk.(interface{ Close() error }).Close()
	defer own.Close()
	if own.Name() != sdk.Name() || own.Description() != sdk.Description() || !sameJSON(t, own.InputSchema(), sdk.InputSchema()) {
		t.Errorf("name, description or schema differ")
	}
	for _, call := range calls {
		want := answer(sdk, call)
		got := answer(own, call)
		if got != want {
			t.Errorf("%s:\n got %.300q\nwant %.300q", call, got, want)
		}
	}
}

// jobPID is bash's notice of a background job, whose pid differs between
// two shells.
var jobPID = regexp.MustCompile(`\[1\] [0-9]+`)

// TestBashStartFailureMatchesSDK: a shell that cannot start (here, its
// workdir is gone) is reported in the SDK's words.
func TestBashStartFailureMatchesSDK(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "gone")
	env := map[string]string{"PATH": os.Getenv("PATH")}
	sdk := agenttoolset.BetaBashTool(&agenttoolset.AgentToolContext{Workdir: gone, Env: env})
	own := newBashTool(agenttoolset.BetaBashTool(&agenttoolset.AgentToolContext{Workdir: gone, Env: env}), gone, env)
	defer own.Close()
	call := `{"command":"echo hi"}`
	if got, want := answer(own, call), answer(sdk, call); got != want || !strings.Contains(got, "start bash pty") {
		t.Errorf("got %q, want %q", got, want)
	}
}

// answer is a call's result as one comparable string.
func answer(tool anthropic.BetaTool, input string) string {
	return jobPID.ReplaceAllString(execute(tool, input), "[1] PID")
}

func execute(tool anthropic.BetaTool, input string) string {
	blocks, err := tool.Execute(context.Background(), json.RawMessage(input))
	if err != nil {
		if _, ok := err.(*agenttoolset.ToolError); ok {
			return "tool error: " + err.Error()
		}
		return "error: " + err.Error()
	}
	return "ok: " + resultText(blocks)
}

func sameJSON(t *testing.T, a, b any) bool {
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return strings.EqualFold(string(ja), string(jb))
}
