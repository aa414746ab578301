package sandboxd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/shell"
)

// bashTool is the SDK's bash tool (agenttoolset.BetaBashTool) running on a
// [shell.Session]: the same name, description and input schema (the SDK's
// own), the same persistent shell and the same results, but a shell that
// starts faster and can be the one started while sandboxd initialised
// ([shell.Adopt]). TestBashMatchesSDK holds the two to the same answers.
type bashTool struct {
	sdk anthropic.BetaTool // for Name, Description and InputSchema
	dir string
	env map[string]string // read when a shell starts; configure adds to it

	mu   sync.Mutex
	sess *shell.Session
}

func newBashTool(sdk anthropic.BetaTool, dir string, env map[string]string) *bashTool {
	return &bashTool{sdk: sdk, dir: dir, env: env}
}

func (t *bashTool) Name() string        { return t.sdk.Name() }
func (t *bashTool) Description() string { return t.sdk.Description() }
func (t *bashTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return t.sdk.InputSchema()
}

func (t *bashTool) Execute(ctx context.Context, raw json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	content, isErr := t.run(ctx, raw)
	if isErr {
		return nil, &agenttoolset.ToolError{Content: content}
	}
	return textResult(content), nil
}

// start makes sure a shell runs: the prestarted one if it fits, else a new
// one. It does not wait for the shell to be ready.
func (t *bashTool) start() (*shell.Session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sess != nil {
		return t.sess, nil
	}
	env := envList(t.env)
	s := shell.Adopt(t.dir, env)
	if s == nil {
		var err error
		if s, err = shell.Start(t.dir, env); err != nil {
			return nil, err
		}
	}
	t.sess = s
	return s, nil
}

// running is the shell if one runs, else nil.
func (t *bashTool) running() *shell.Session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sess
}

// restart closes the shell; the next call starts another.
func (t *bashTool) restart() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sess == nil {
		return nil
	}
	err := t.sess.Close()
	t.sess = nil
	return err
}

func (t *bashTool) Close() error { return t.restart() }

// run is the SDK's bashTool.run, word for word in what it answers.
func (t *bashTool) run(ctx context.Context, raw json.RawMessage) (string, bool) {
	var in anthropic.BetaManagedAgentsAgentToolset20260401BashInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return fmt.Sprintf("invalid bash input: %v", err), true
	}
	if in.Restart {
		_ = t.restart()
		if in.Command == "" {
			return "bash session restarted", false
		}
	}
	if in.Command == "" {
		return "bash: command is required", true
	}
	sess, err := t.start()
	if err != nil {
		return fmt.Sprintf("bash: %v", err), true
	}
	out, code, err := sess.Exec(ctx, in.Command, time.Duration(in.TimeoutMs)*time.Millisecond)
	if err != nil {
		// The shell's state is unknown after any error (a command still
		// running would print into the next call's output): start afresh.
		_ = t.restart()
		if errors.Is(err, shell.ErrTimedOut) {
			return out + "\nsession restarted after timeout", true
		}
		return fmt.Sprintf("bash: %v", err), true
	}
	if code != 0 {
		return fmt.Sprintf("%s\nexit code: %d", out, code), true
	}
	return out, false
}
