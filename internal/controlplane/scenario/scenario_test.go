package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestExampleScenariosParse(t *testing.T) {
	scs, err := LoadDir(filepath.Join("..", "..", "..", "examples", "scenarios"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sc := range scs {
		ids = append(ids, sc.AgentID)
	}
	want := []string{"agent_confirmation", "agent_conversation", "agent_custom-tools", "agent_errors", "agent_quickstart"}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("agents (-want +got):\n%s", diff)
	}
}

func TestParseReadsEveryField(t *testing.T) {
	src := `version: 1
name: Every field
description: d
tags: [a, b]
result_timeout: 45s
custom_tools:
  - name: lookup
    description: looks up
    input_schema: {type: object}
steps:
  - message: hello
  - name: labelled
    tool: bash
    input: {command: ls}
    permission: ask
    confirm: deny
    deny_message: no
  - custom_tool: lookup
    input: {id: 1}
    expect: {is_error: false, contains: [x, y], not_contains: z, regex: '^x'}
  - wait_for_user: What next?
    expect: {contains: go}
  - end: end_turn
`
	sc, err := Parse("dir/every-field.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if sc.AgentID != "agent_every-field" || sc.Name != "Every field" || sc.ResultTimeout != 45*time.Second || len(sc.Tags) != 2 {
		t.Errorf("header = %q %q %v %v", sc.AgentID, sc.Name, sc.ResultTimeout, sc.Tags)
	}
	if len(sc.Steps) != 5 {
		t.Fatalf("steps = %d, want 5", len(sc.Steps))
	}
	b := sc.Steps[1]
	if b.Label != "labelled" || b.Permission != PermissionAsk || b.Confirm != PermissionDeny || b.DenyMessage != "no" || !b.WantDenied() || b.Line != 12 {
		t.Errorf("bash step = %+v", b)
	}
	c := sc.Steps[2]
	if c.Kind != KindCustomTool || *c.Expect.IsError || len(c.Expect.Contains) != 2 || c.Expect.NotContains[0] != "z" || c.Expect.Regex.String() != "^x" {
		t.Errorf("custom step = %+v", c)
	}
	if w := sc.Steps[3]; w.Kind != KindWaitForUser || w.Text != "What next?" || w.Expect.Contains[0] != "go" {
		t.Errorf("wait step = %+v", w)
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	head := "version: 1\nsteps:\n"
	tests := []struct {
		name, src, want string
	}{
		{"empty file", "", "f.yaml:1: the file is empty"},
		{"bad yaml", "version: [1\n", "f.yaml:"},
		{"wrong version", "version: 2\nsteps:\n  - end: terminate\n", "f.yaml:1: version is 2"},
		{"missing version", "steps:\n  - end: terminate\n", "version is missing"},
		{"unknown top-level field", "version: 1\nstesp: []\n", `f.yaml:2: unknown field "stesp"`},
		{"no steps", "version: 1\n", "steps must be a non-empty list"},
		{"step without kind", head + "  - input: {}\n  - end: terminate\n", "f.yaml:3: a step needs exactly one of"},
		{"step with two kinds", head + "  - message: hi\n    end: terminate\n", "f.yaml:3: a step has one kind, this one has message and end"},
		{"unknown step field", head + "  - tool: bash\n    input: {command: ls}\n    expcet: {}\n  - end: terminate\n", `f.yaml:5: unknown field "expcet" in a tool step`},
		{"typo in tool name", head + "  - tool: bsh\n    input: {command: ls}\n  - end: terminate\n", `f.yaml:3: tool "bsh" is not an agent_toolset_20260401 tool`},
		{"missing required input", head + "  - tool: read\n  - end: terminate\n", "f.yaml:3: read needs input.file_path"},
		{"bash without command", head + "  - tool: bash\n  - end: terminate\n", "bash needs input.command"},
		{"undeclared custom tool", head + "  - custom_tool: lookup\n  - end: terminate\n", `f.yaml:3: custom tool "lookup" is not declared`},
		{"bad permission", head + "  - tool: bash\n    input: {command: ls}\n    permission: maybe\n  - end: terminate\n", `f.yaml:5: permission is "maybe"`},
		{"confirm without ask", head + "  - tool: bash\n    input: {command: ls}\n    confirm: allow\n  - end: terminate\n", "f.yaml:5: confirm only applies to permission: ask"},
		{"bad regex", head + "  - tool: bash\n    input: {command: ls}\n    expect: {regex: '('}\n  - end: terminate\n", "does not compile"},
		{"result expectation on a denied call", head + "  - tool: bash\n    input: {command: ls}\n    permission: deny\n    expect: {is_error: false}\n  - end: terminate\n", "f.yaml:6: a call expected to be denied never runs"},
		{"denied on an allowed call", head + "  - tool: bash\n    input: {command: ls}\n    expect: {denied: true}\n  - end: terminate\n", "f.yaml:5: expect.denied only applies"},
		{"is_error on a user message", head + "  - wait_for_user:\n    expect: {is_error: true}\n  - end: terminate\n", `f.yaml:4: unknown field "is_error" in expect`},
		{"bad end", head + "  - end: stop\n", `f.yaml:3: end is "stop"`},
		{"end not last", head + "  - end: terminate\n  - message: hi\n", "end must be the last step"},
		{"no end", head + "  - message: hi\n", "f.yaml:3: the last step must be"},
		{"bad timeout", "version: 1\nresult_timeout: soon\nsteps:\n  - end: terminate\n", `f.yaml:2: result_timeout "soon" is not a duration`},
		{"input that is not JSON", head + "  - tool: bash\n    input: {command: ls, env: {1: x}}\n  - end: terminate\n", "f.yaml:4: input must be JSON-compatible"},
		{"wrong type", head + "  - message: [a, b]\n  - end: terminate\n", "f.yaml:3:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded; want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadDirReportsEveryBadFile(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"good.yaml": "version: 1\nsteps:\n  - end: terminate\n",
		"bad1.yaml": "version: 3\nsteps:\n  - end: terminate\n",
		"bad2.yaml": "version: 1\nsteps:\n  - message: hi\n",
		"skip.txt":  "not a scenario",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "bad1.yaml:1:") || !strings.Contains(err.Error(), "bad2.yaml:3:") {
		t.Errorf("LoadDir error = %v; want both bad files named with lines", err)
	}
}

// A scenario file given where its directory belongs is refused, not read
// as a directory with no scenarios in it.
func TestLoadDirRefusesAFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "quickstart.yaml")
	if err := os.WriteFile(file, []byte("version: 1\nsteps:\n  - end: terminate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	scs, err := LoadDir(file)
	if err == nil || !strings.Contains(err.Error(), "is a file: give the directory holding it ("+filepath.Dir(file)+")") {
		t.Errorf("LoadDir(a file) = %d scenarios, %v; want an error naming its directory", len(scs), err)
	}
}
