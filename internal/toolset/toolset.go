// Package toolset is the supervisor's side of the tools: anthropic.BetaTool
// values that a session tool runner calls, each of which forwards the call
// to the session's sandbox instead of running anything on the worker.
//
// The built-in tools present exactly the SDK's agent_toolset_20260401 names,
// descriptions and input schemas (read from the SDK, so they cannot drift);
// sandboxd runs the SDK's own implementations on the other side. Custom
// tools are operator-declared commands run with sandbox.ToolCommand.
//
// Three audiences are kept apart. The model sees a tool's own output, or for
// a sandbox failure a short sentence saying what happened (the Error of a
// [*CallError]); operators and logs get the underlying error through
// [CallError.Err]; nothing of the host (paths, process ids) reaches the model.
package toolset

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"sync"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Executor runs a call in a sandbox; sandbox.Sandbox is one.
type Executor interface {
	Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error)
}

// builtinSpec is what the model is told about one SDK tool.
type builtinSpec struct {
	name, description string
	schema            anthropic.BetaToolInputSchemaParam
}

// builtins reads the SDK toolset's metadata once. Building the toolset
// starts nothing (the bash shell is lazy), and it is closed at once anyway.
var builtins = sync.OnceValue(func() []builtinSpec {
	tools := agenttoolset.BetaAgentToolset20260401(&agenttoolset.AgentToolContext{})
	defer agenttoolset.CloseAll(tools)
	specs := make([]builtinSpec, len(tools))
	for i, t := range tools {
		specs[i] = builtinSpec{name: t.Name(), description: t.Description(), schema: t.InputSchema()}
	}
	return specs
})

// Builtin returns the agent_toolset_20260401 tools (bash, read, write, edit,
// glob, grep) forwarding to x. With a nil x the tools can be listed but not
// executed.
func Builtin(x Executor) []anthropic.BetaTool {
	specs := builtins()
	tools := make([]anthropic.BetaTool, len(specs))
	for i, s := range specs {
		tools[i] = &proxy{name: s.name, description: s.description, schema: s.schema, x: x, tool: s.name}
	}
	return tools
}

var toolName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// Custom returns the operator-declared tools in specs, each running its
// command in x's sandbox through sandbox.ToolCommand with the tool's input
// JSON on standard input. It checks every spec: a valid, unique name that is
// not a built-in's, and an object input schema (`{"type":"object"}` when
// none is given). With a nil x the specs are only validated.
func Custom(x Executor, specs []config.CustomTool) ([]anthropic.BetaTool, error) {
	taken := make(map[string]bool)
	for _, s := range builtins() {
		taken[s.name] = true
	}
	tools := make([]anthropic.BetaTool, 0, len(specs))
	for i, s := range specs {
		switch {
		case s.Name == "":
			return nil, fmt.Errorf("custom tool #%d: name is required", i+1)
		case !toolName.MatchString(s.Name):
			return nil, fmt.Errorf("custom tool %q: name must be 1 to 64 letters, digits, '_' or '-'", s.Name)
		case taken[s.Name]:
			return nil, fmt.Errorf("custom tool %q: the name is already taken by a built-in or an earlier custom tool", s.Name)
		case s.Command == "":
			return nil, fmt.Errorf("custom tool %q: command is required", s.Name)
		}
		taken[s.Name] = true
		schema, err := inputSchema(s.InputSchema)
		if err != nil {
			return nil, fmt.Errorf("custom tool %q: input_schema: %w", s.Name, err)
		}
		tools = append(tools, &proxy{
			name: s.Name, description: s.Description, schema: schema, x: x,
			tool: sandbox.ToolCommand, command: s.Command,
		})
	}
	return tools, nil
}

// inputSchema converts a YAML-declared JSON schema, which must describe an
// object, into the SDK's form: properties and required in their fields,
// every other keyword carried verbatim.
func inputSchema(m map[string]any) (anthropic.BetaToolInputSchemaParam, error) {
	var schema anthropic.BetaToolInputSchemaParam
	if len(m) == 0 {
		return schema, nil // marshals as {"type":"object"}
	}
	if t, ok := m["type"]; !ok || t != "object" {
		return schema, errors.New(`must be an object schema ("type: object")`)
	}
	extra := maps.Clone(m)
	delete(extra, "type")
	if p, ok := extra["properties"]; ok {
		if _, isMap := p.(map[string]any); !isMap {
			return schema, errors.New("properties must be a mapping of property names to schemas")
		}
		schema.Properties = p
		delete(extra, "properties")
	}
	if r, ok := extra["required"]; ok {
		list, isList := r.([]any)
		if !isList {
			return schema, errors.New("required must be a list of property names")
		}
		for _, v := range list {
			name, isString := v.(string)
			if !isString {
				return schema, errors.New("required must be a list of property names")
			}
			schema.Required = append(schema.Required, name)
		}
		delete(extra, "required")
	}
	if len(extra) > 0 {
		schema.ExtraFields = extra
	}
	// Anything YAML produced must survive the trip to the API as JSON.
	if _, err := json.Marshal(schema); err != nil {
		return schema, fmt.Errorf("cannot be encoded as JSON: %w", err)
	}
	return schema, nil
}

// Names returns the set of the tools' names.
func Names(tools []anthropic.BetaTool) map[string]bool {
	names := make(map[string]bool, len(tools))
	for _, t := range tools {
		names[t.Name()] = true
	}
	return names
}

// proxy is a tool whose Execute runs in the sandbox.
type proxy struct {
	name, description string
	schema            anthropic.BetaToolInputSchemaParam
	x                 Executor
	tool              string // the sandboxd tool that runs it
	command           string // for sandbox.ToolCommand: the operator's command
}

func (p *proxy) Name() string                                    { return p.name }
func (p *proxy) Description() string                             { return p.description }
func (p *proxy) InputSchema() anthropic.BetaToolInputSchemaParam { return p.schema }

// Execute runs the call in the sandbox. A tool failure comes back as an error
// whose text is the tool's output, which the SDK's runners post with
// is_error set; a sandbox failure as a [*CallError].
func (p *proxy) Execute(ctx context.Context, input json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	if p.x == nil {
		return nil, &CallError{Model: "sandbox failure: no sandbox is attached to this tool", Err: errors.New("toolset: tool built without an executor")}
	}
	call := sandbox.Call{Tool: p.tool, Input: input}
	if p.tool == sandbox.ToolCommand {
		in, err := json.Marshal(struct {
			Command string `json:"command"`
			Stdin   string `json:"stdin"`
		}{p.command, string(input)})
		if err != nil {
			return nil, err
		}
		call.Input = in
	}
	res, err := p.x.Exec(ctx, call)
	if err != nil {
		return nil, &CallError{Model: modelText(err), Err: err}
	}
	if res.IsError {
		return nil, &agenttoolset.ToolError{Content: res.Text}
	}
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: res.Text}}}, nil
}

// CallError is a call the sandbox could not complete. Its Error is the
// sentence the model sees; Err is the underlying error for logs and spans,
// and what errors.Is and errors.As look through.
type CallError struct {
	Model string
	Err   error
}

func (e *CallError) Error() string { return e.Model }
func (e *CallError) Unwrap() error { return e.Err }

// modelText says what happened to a call, in words safe for the model: the
// class of failure and, for an exit, how the sandbox ended.
func modelText(err error) string {
	var exit *sandbox.ExitError
	switch {
	case errors.As(err, &exit) && exit.Sent:
		return "sandbox failure: the sandbox exited" + reason(exit) + " while running this call"
	case errors.As(err, &exit):
		return "sandbox failure: the sandbox had exited" + reason(exit) + " before this call; it did not run"
	case errors.Is(err, sandbox.ErrExited):
		return "sandbox failure: the sandbox exited while running this call"
	case errors.Is(err, sandbox.ErrClosed):
		return "sandbox failure: the sandbox was shut down before this call could run"
	case errors.Is(err, sandbox.ErrProtocol):
		return "sandbox failure: the sandbox answered this call with an invalid response"
	case errors.Is(err, context.DeadlineExceeded):
		return "sandbox failure: this call ran out of time and was cancelled"
	case errors.Is(err, context.Canceled):
		return "sandbox failure: this call was cancelled before it finished"
	default:
		return "sandbox failure: this call could not be completed"
	}
}

// reason is " (killed by signal SIGKILL)", or "" when unknown. Only the
// reasons a backend produced with sandbox.ExitReason pass: they name a
// number or a signal, nothing of the host.
func reason(e *sandbox.ExitError) string {
	if !safeReason.MatchString(e.Reason) {
		return ""
	}
	return " (" + e.Reason + ")"
}

var safeReason = regexp.MustCompile(`^(exit status -?[0-9]{1,5}|killed by signal (SIG[A-Z0-9]{2,8}|signal [0-9]{1,3})|` + sandbox.ReasonOOM + `)$`)
