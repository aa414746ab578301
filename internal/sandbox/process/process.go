// Package process is the sandbox runtime that runs `perimeter sandboxd` as a
// plain child process of the worker. It isolates nothing (see [Warning]):
// the tools run as the worker's user, on its filesystem and network. What it
// does keep is the environment allow-list — sandboxd starts with exactly
// Spec.Env, never the worker's environment — and the lifecycle: every
// sandbox lives in its own process group, which Close kills and reaps.
//
// It exists for development, tests and hosts where an isolating runtime is
// unavailable and the operator has said so explicitly.
package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Warning is what the worker logs on every session run by this runtime.
const Warning = "the process sandbox runtime does NOT isolate anything: tool calls run as the worker's own user, " +
	"with the worker's files, network and processes in reach and only the environment allow-list in between; " +
	"use it for local development and tests only, never for sessions you do not trust"

// Options configures a [Runtime]. The zero value is useful.
type Options struct {
	// Binary is the perimeter executable to run as `<Binary> sandboxd`;
	// empty means the running executable.
	Binary string
	// StartTimeout bounds how long Create waits for sandboxd's hello; zero
	// means sandbox.DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives lifecycle events and sandboxd's standard error; nil
	// discards them.
	Logger *slog.Logger
}

// Runtime starts sandboxes as child processes. It is safe for concurrent use.
type Runtime struct {
	opts Options
}

var _ sandbox.Runtime = (*Runtime)(nil)

// New returns a process runtime.
func New(opts Options) *Runtime {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = sandbox.DefaultStartTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Runtime{opts: opts}
}

// Name is "process".
func (r *Runtime) Name() string { return "process" }

const (
	// closeGrace is how long Close lets sandboxd wind down after EOF on its
	// stdin before the process group is killed.
	closeGrace = 5 * time.Second
	// exitReasonWait bounds how long a broken channel waits to learn the
	// exit status of a sandboxd that closed its stdout.
	exitReasonWait = 2 * time.Second
)

// Create starts `<Binary> sandboxd --workdir <spec.Workspace>` with exactly
// spec.Env as its environment and waits for its hello.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if spec.Workspace == "" {
		return nil, errors.New("process: spec.Workspace is required")
	}
	ws, err := filepath.Abs(spec.Workspace)
	if err != nil {
		return nil, fmt.Errorf("process: workspace: %w", err)
	}
	if err := os.MkdirAll(ws, 0o700); err != nil {
		return nil, fmt.Errorf("process: create workspace: %w", err)
	}
	bin := r.opts.Binary
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("process: locate the perimeter binary: %w", err)
		}
	}

	p, err := sandbox.NewPipes()
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	cmd := exec.Command(bin, "sandboxd", "--workdir", ws)
	cmd.Env = envList(spec.Env)
	cmd.Dir = ws
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.StdinR, p.StdoutW, p.StderrW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.CloseAll()
		return nil, fmt.Errorf("process: start sandboxd: %w", err)
	}
	p.CloseChildEnds()

	log := r.opts.Logger.With(
		slog.String("runtime", r.Name()),
		slog.String("session_id", spec.SessionID),
		slog.String("work_id", spec.WorkID),
		slog.Int("pid", cmd.Process.Pid),
	)
	s := &Sandbox{
		cmd:    cmd,
		log:    log,
		exited: make(chan struct{}),
		stderr: sandbox.NewStderrLog(log),
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		err := cmd.Wait()
		s.state = cmd.ProcessState
		if s.state == nil {
			log.Warn("waiting for sandboxd failed", slog.Any("error", err))
		}
		close(s.exited)
	}()
	go func() {
		defer s.wg.Done()
		s.stderr.Copy(p.StderrR)
	}()
	s.stderrR = p.StderrR
	s.conn = sandbox.NewConn(p.RPC(), sandbox.ConnOptions{
		ExitReason: s.exitReason,
	})

	hctx, cancel := context.WithTimeout(ctx, r.opts.StartTimeout)
	defer cancel()
	hello, err := s.conn.Hello(hctx)
	if err != nil {
		// A sandboxd that failed to start gets no grace.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), closeGrace)
		defer ccancel()
		s.closeOnce.Do(func() { s.closeErr = s.close(cctx, 0) })
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("sandboxd did not answer within %s: %w", r.opts.StartTimeout, err)
		}
		if tail := s.stderr.Tail(); tail != "" {
			return nil, fmt.Errorf("process: start sandboxd: %w; its last output: %s", err, tail)
		}
		return nil, fmt.Errorf("process: start sandboxd: %w", err)
	}
	log.Debug("sandbox started", slog.String("workdir", hello.Workdir))
	return s, nil
}

// Sandbox is one sandboxd child process.
type Sandbox struct {
	cmd     *exec.Cmd
	conn    *sandbox.Conn
	log     *slog.Logger
	stderr  *sandbox.StderrLog
	stderrR *os.File
	wg      sync.WaitGroup // the waiter and the stderr copier

	exited chan struct{}    // closed once sandboxd is reaped
	state  *os.ProcessState // how it ended; set before exited is closed

	closeOnce sync.Once
	closeErr  error
}

var _ sandbox.Sandbox = (*Sandbox)(nil)

// Exec runs call in sandboxd. See [sandbox.Sandbox].
func (s *Sandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	return s.conn.Exec(ctx, call)
}

// PID is sandboxd's process id on the host.
func (s *Sandbox) PID() int { return s.cmd.Process.Pid }

// Close stops sandboxd: EOF on its stdin (it closes its tools and exits),
// then, after a grace or when ctx ends, SIGKILL to its whole process group.
// It reaps the process and is idempotent.
func (s *Sandbox) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx, closeGrace) })
	return s.closeErr
}

// close lets sandboxd exit on its own for up to grace, then kills its group.
func (s *Sandbox) close(ctx context.Context, grace time.Duration) error {
	_ = s.conn.Close()
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-s.exited:
		case <-t.C:
			s.log.Warn("sandboxd did not exit after its input closed; killing it", slog.Duration("grace", grace))
		case <-ctx.Done():
		}
	}
	// Also takes anything sandboxd left in its group. ESRCH: nothing left.
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		s.log.Warn("killing the sandbox process group failed", slog.Any("error", err))
	}
	var err error
	select {
	case <-s.exited:
	case <-ctx.Done():
		err = fmt.Errorf("process: sandboxd (pid %d) not reaped after SIGKILL: %w", s.cmd.Process.Pid, ctx.Err())
	}
	// Unblocks the stderr copier even if a straggler still holds the pipe.
	_ = s.stderrR.Close()
	if err == nil {
		s.wg.Wait()
		s.log.Debug("sandbox closed", slog.String("exit", sandbox.ExitReason(s.state)))
	}
	return err
}

// exitReason is the Conn's ExitReason: how sandboxd ended, once it is
// reaped. A sandboxd that closed its stdout but lives on is reported as such.
func (s *Sandbox) exitReason() string {
	t := time.NewTimer(exitReasonWait)
	defer t.Stop()
	select {
	case <-s.exited:
		return sandbox.ExitReason(s.state)
	case <-t.C:
		return "closed its output"
	}
}

// envList is spec.Env in exec.Cmd.Env form. It is never nil: a nil Env
// would make exec pass the worker's own environment.
func envList(env map[string]string) []string {
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	slices.Sort(list)
	return list
}
