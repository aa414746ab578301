package sandboxd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/shell"
)

// commandOutputLimit caps a command's merged output, keeping the tail, as
// the bash tool's is.
const commandOutputLimit = shell.OutputLimit

// commandWaitDelay bounds how long a finished command's pipes may be held
// open by a process that escaped its process group.
const commandWaitDelay = 2 * time.Second

// commandTool is [sandbox.ToolCommand]: it runs an operator-declared custom
// tool's command with /bin/sh -c in the workdir, the given stdin on its
// standard input, in its own process group so a cancel kills all of it.
type commandTool struct {
	workdir string
	env     map[string]string
}

type commandInput struct {
	Command string `json:"command"`
	Stdin   string `json:"stdin"`
}

func (t *commandTool) Name() string { return sandbox.ToolCommand }

func (t *commandTool) Description() string {
	return "Run an operator-declared command with /bin/sh -c in the workdir, stdin given."
}

func (t *commandTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{
		Properties: map[string]any{
			"command": map[string]any{"type": "string"},
			"stdin":   map[string]any{"type": "string"},
		},
		Required: []string{"command"},
	}
}

func (t *commandTool) Execute(ctx context.Context, raw json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	var in commandInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, fmt.Errorf("invalid %s input: %v", sandbox.ToolCommand, err)
	}
	if in.Command == "" {
		return nil, fmt.Errorf("%s: command is required", sandbox.ToolCommand)
	}

	// The output pipe is ours, not exec's: Wait then returns when the shell
	// exits, even if something it left behind still holds the pipe.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", sandbox.ToolCommand, err)
	}
	defer r.Close()
	var out tailBuffer
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", in.Command)
	cmd.Dir = t.workdir
	cmd.Env = envList(t.env)
	cmd.Stdin = strings.NewReader(in.Stdin)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = commandWaitDelay // bounds the stdin copier
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", sandbox.ToolCommand, err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(&out, r)
	}()
	err = cmd.Wait()
	// The command is over when its shell is: whatever it left running in
	// its group goes too, which also ends the output.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	drain := time.NewTimer(commandWaitDelay)
	select {
	case <-copied:
	case <-drain.C:
		// Something outside the group holds the pipe; stop reading.
		_ = r.Close()
		<-copied
	}
	drain.Stop()
	text := out.String()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: cancelled: %w", sandbox.ToolCommand, ctx.Err())
	}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil, errors.New(text + "\nkilled by signal " + sandbox.SignalName(ws.Signal()))
		}
		return nil, fmt.Errorf("%s\nexit code: %d", text, exitErr.ExitCode())
	case errors.Is(err, exec.ErrWaitDelay):
		// The shell exited 0 without reading all of its stdin while
		// something kept the pipe open. The output stands.
	case err != nil:
		return nil, fmt.Errorf("%s: %v", sandbox.ToolCommand, err)
	}
	return textResult(text), nil
}

// envList turns env into exec.Cmd.Env form. It is never nil: a nil Env
// would make exec inherit sandboxd's own environment.
func envList(env map[string]string) []string {
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	slices.Sort(list)
	return list
}

// tailBuffer keeps the last commandOutputLimit bytes written to it.
type tailBuffer struct {
	mu        sync.Mutex // guards the fields below
	buf       []byte
	truncated bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) >= commandOutputLimit {
		p = p[len(p)-commandOutputLimit:]
		b.truncated = b.truncated || len(b.buf) > 0 || n > len(p)
		b.buf = append(b.buf[:0], p...)
		return n, nil
	}
	if over := len(b.buf) + len(p) - commandOutputLimit; over > 0 {
		b.buf = b.buf[:copy(b.buf, b.buf[over:])]
		b.truncated = true
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.truncated {
		return "[output truncated]\n" + string(b.buf)
	}
	return string(b.buf)
}
