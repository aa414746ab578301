package toolset_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"
	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/toolset"
)

// recorder is an Executor that records calls and answers from a script.
type recorder struct {
	mu     sync.Mutex // guards calls
	calls  []sandbox.Call
	result sandbox.Result
	err    error
}

func (r *recorder) Exec(_ context.Context, call sandbox.Call) (sandbox.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	return r.result, r.err
}

// schemaJSON is what the API receives for a tool's input schema.
func schemaJSON(t *testing.T, tool anthropic.BetaTool) string {
	t.Helper()
	b, err := json.Marshal(tool.InputSchema())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuiltinPresentsExactlyTheSDKTools(t *testing.T) {
	sdk := agenttoolset.BetaAgentToolset20260401(&agenttoolset.AgentToolContext{})
	defer agenttoolset.CloseAll(sdk)
	ours := toolset.Builtin(&recorder{})
	if len(ours) != len(sdk) {
		t.Fatalf("Builtin has %d tools, the SDK %d", len(ours), len(sdk))
	}
	for i, want := range sdk {
		got := ours[i]
		t.Run(want.Name(), func(t *testing.T) {
			if got.Name() != want.Name() || got.Description() != want.Description() {
				t.Errorf("got %q: %q, want %q: %q", got.Name(), got.Description(), want.Name(), want.Description())
			}
			if diff := cmp.Diff(schemaJSON(t, want), schemaJSON(t, got)); diff != "" {
				t.Errorf("input schema (-sdk +ours):\n%s", diff)
			}
		})
	}
}

func TestBuiltinForwardsTheCallUnchanged(t *testing.T) {
	for _, tool := range toolset.Builtin(nil) {
		t.Run(tool.Name(), func(t *testing.T) {
			rec := &recorder{result: sandbox.Result{Text: "out"}}
			input := json.RawMessage(`{"command":"ls","file_path":"a"}`)
			blocks, err := toolset.Builtin(rec)[indexOf(t, tool.Name())].Execute(context.Background(), input)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]sandbox.Call{{Tool: tool.Name(), Input: input}}, rec.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if len(blocks) != 1 || blocks[0].OfText == nil || blocks[0].OfText.Text != "out" {
				t.Errorf("blocks = %+v, want one text block \"out\"", blocks)
			}
		})
	}
}

func indexOf(t *testing.T, name string) int {
	t.Helper()
	for i, tool := range toolset.Builtin(nil) {
		if tool.Name() == name {
			return i
		}
	}
	t.Fatalf("no builtin %q", name)
	return -1
}

func TestExecuteMapsResultsAndFailures(t *testing.T) {
	tests := []struct {
		name      string
		result    sandbox.Result
		err       error
		wantText  string // the block's text, or the error text the model sees
		wantError bool
		wantIs    error // the underlying error stays reachable for logs
	}{
		{name: "SuccessIsOneTextBlock", result: sandbox.Result{Text: "a.txt\n"}, wantText: "a.txt\n"},
		{name: "EmptySuccessIsLeftToTheRunner", result: sandbox.Result{}, wantText: ""},
		{name: "ToolErrorIsAnErrorWithTheToolsText", result: sandbox.Result{Text: "ls: x: No such file\nexit code: 2", IsError: true},
			wantText: "ls: x: No such file\nexit code: 2", wantError: true},
		{name: "SandboxKilledMidCall", err: fmt.Errorf("exec bash: %w", &sandbox.ExitError{Reason: "killed by signal SIGKILL", Sent: true}),
			wantText: "sandbox failure: the sandbox exited (killed by signal SIGKILL) while running this call", wantError: true, wantIs: sandbox.ErrExited},
		{name: "SandboxAlreadyDead", err: &sandbox.ExitError{Reason: "exit status 2"},
			wantText: "sandbox failure: the sandbox had exited (exit status 2) before this call; it did not run", wantError: true, wantIs: sandbox.ErrExited},
		{name: "ExitReasonThatIsNotAStatusIsNotShown", err: &sandbox.ExitError{Reason: "exit status 1 at /home/worker/state/sesn_1", Sent: true},
			wantText: "sandbox failure: the sandbox exited while running this call", wantError: true, wantIs: sandbox.ErrExited},
		{name: "SandboxClosed", err: fmt.Errorf("exec read: %w", sandbox.ErrClosed),
			wantText: "sandbox failure: the sandbox was shut down before this call could run", wantError: true, wantIs: sandbox.ErrClosed},
		{name: "ProtocolViolationHidesSandboxdsWords", err: fmt.Errorf("exec bash: %w: sandboxd refused the request: /srv/secret-path", sandbox.ErrProtocol),
			wantText: "sandbox failure: the sandbox answered this call with an invalid response", wantError: true, wantIs: sandbox.ErrProtocol},
		{name: "Timeout", err: fmt.Errorf("exec bash: cancelled: %w", context.DeadlineExceeded),
			wantText: "sandbox failure: this call ran out of time and was cancelled", wantError: true, wantIs: context.DeadlineExceeded},
		{name: "Cancelled", err: fmt.Errorf("exec bash: cancelled: %w", context.Canceled),
			wantText: "sandbox failure: this call was cancelled before it finished", wantError: true, wantIs: context.Canceled},
		{name: "AnythingElse", err: errors.New("dial unix /run/perimeter/sb.sock: connection refused"),
			wantText: "sandbox failure: this call could not be completed", wantError: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{result: tc.result, err: tc.err}
			blocks, err := toolset.Builtin(rec)[0].Execute(context.Background(), json.RawMessage(`{}`))
			if !tc.wantError {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if len(blocks) != 1 || blocks[0].OfText == nil || blocks[0].OfText.Text != tc.wantText {
					t.Fatalf("blocks = %+v, want one text block %q", blocks, tc.wantText)
				}
				return
			}
			if err == nil || err.Error() != tc.wantText || blocks != nil {
				t.Fatalf("Execute = %v, %v; want the error %q", blocks, err, tc.wantText)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(err, %v) = false; the cause must stay reachable", tc.wantIs)
			}
			if tc.err != nil {
				var ce *toolset.CallError
				if !errors.As(err, &ce) || ce.Err != tc.err {
					t.Errorf("err is not a *CallError carrying the sandbox's error")
				}
			}
		})
	}
}

func TestExecuteWithoutAnExecutorFails(t *testing.T) {
	_, err := toolset.Builtin(nil)[0].Execute(context.Background(), json.RawMessage(`{}`))
	if err == nil || !strings.HasPrefix(err.Error(), "sandbox failure:") {
		t.Fatalf("err = %v, want a sandbox failure", err)
	}
}

func TestCustomRunsTheCommandWithTheInputOnStdin(t *testing.T) {
	rec := &recorder{result: sandbox.Result{Text: "42"}}
	tools, err := toolset.Custom(rec, []config.CustomTool{{
		Name: "lookup_order", Description: "Look an order up.", Command: "./bin/lookup --json",
		InputSchema: map[string]any{"type": "object", "properties": map[string]any{"id": map[string]any{"type": "string"}}, "required": []any{"id"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	input := json.RawMessage(`{"id":"o-1"}`)
	if _, err := tools[0].Execute(context.Background(), input); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 1 || rec.calls[0].Tool != sandbox.ToolCommand {
		t.Fatalf("calls = %+v, want one %s call", rec.calls, sandbox.ToolCommand)
	}
	var got struct{ Command, Stdin string }
	if err := json.Unmarshal(rec.calls[0].Input, &got); err != nil {
		t.Fatal(err)
	}
	if got.Command != "./bin/lookup --json" || got.Stdin != string(input) {
		t.Errorf("command input = %+v", got)
	}
	if tools[0].Name() != "lookup_order" || tools[0].Description() != "Look an order up." {
		t.Errorf("tool = %q: %q", tools[0].Name(), tools[0].Description())
	}
}

func TestCustomInputSchema(t *testing.T) {
	tests := []struct {
		name   string
		schema map[string]any
		want   string
	}{
		{"DefaultsToAnEmptyObject", nil, `{"type":"object"}`},
		{"KeepsPropertiesAndRequired", map[string]any{
			"type": "object", "properties": map[string]any{"q": map[string]any{"type": "string"}}, "required": []any{"q"},
		}, `{"properties":{"q":{"type":"string"}},"required":["q"],"type":"object"}`},
		{"CarriesOtherKeywords", map[string]any{"type": "object", "additionalProperties": false},
			`{"type":"object","additionalProperties":false}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tools, err := toolset.Custom(nil, []config.CustomTool{{Name: "t", Command: "true", InputSchema: tc.schema}})
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			_ = json.Unmarshal([]byte(schemaJSON(t, tools[0])), &got)
			_ = json.Unmarshal([]byte(tc.want), &want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("schema (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCustomRejectsInvalidSpecs(t *testing.T) {
	ok := config.CustomTool{Name: "fine", Command: "true"}
	tests := []struct {
		name  string
		specs []config.CustomTool
		want  string
	}{
		{"EmptyName", []config.CustomTool{{Command: "true"}}, "name is required"},
		{"NameWithSpaces", []config.CustomTool{{Name: "look up", Command: "true"}}, "letters, digits"},
		{"NameTooLong", []config.CustomTool{{Name: strings.Repeat("a", 65), Command: "true"}}, "1 to 64"},
		{"NameOfABuiltin", []config.CustomTool{{Name: "bash", Command: "true"}}, "already taken"},
		{"DuplicateName", []config.CustomTool{ok, ok}, "already taken"},
		{"NoCommand", []config.CustomTool{{Name: "x"}}, "command is required"},
		{"SchemaNotAnObject", []config.CustomTool{{Name: "x", Command: "true", InputSchema: map[string]any{"type": "string"}}}, "object schema"},
		{"SchemaWithoutType", []config.CustomTool{{Name: "x", Command: "true", InputSchema: map[string]any{"properties": map[string]any{}}}}, "object schema"},
		{"PropertiesNotAMapping", []config.CustomTool{{Name: "x", Command: "true", InputSchema: map[string]any{"type": "object", "properties": []any{"a"}}}}, "properties"},
		{"RequiredNotAList", []config.CustomTool{{Name: "x", Command: "true", InputSchema: map[string]any{"type": "object", "required": "a"}}}, "required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := toolset.Custom(nil, tc.specs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	custom, err := toolset.Custom(nil, []config.CustomTool{{Name: "deploy", Command: "true"}})
	if err != nil {
		t.Fatal(err)
	}
	got := toolset.Names(append(toolset.Builtin(nil), custom...))
	want := map[string]bool{"bash": true, "read": true, "write": true, "edit": true, "glob": true, "grep": true, "deploy": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Names (-want +got):\n%s", diff)
	}
}
