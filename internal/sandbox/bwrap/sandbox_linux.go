package bwrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

const (
	// closeGrace is how long Close lets sandboxd wind down after EOF on its
	// stdin before the sandbox is killed.
	closeGrace = 5 * time.Second
	// exitReasonWait bounds how long a broken channel waits to learn how
	// bwrap ended.
	exitReasonWait = 2 * time.Second
	// cgroupRemoveWait bounds how long Close waits for a killed sandbox's
	// cgroup to empty when ctx has no deadline.
	cgroupRemoveWait = 10 * time.Second
	// reapWait is how long Close lets bwrap reap the sandbox's killed pid 1
	// and exit before it is killed too.
	reapWait = time.Second
	// stderrDrain is how long Close waits for the last of sandboxd's
	// stderr once everything that could write it is dead.
	stderrDrain = time.Second
)

// Create starts a sandbox for spec: bwrap with the session's workspace at
// /workspace, running sandboxd, and waits for sandboxd's hello.
//
// bwrap is held before it runs anything of the sandbox's (--block-fd) until
// it is in the sandbox's cgroups: started directly in its cgroup v2 leaf
// (CLONE_INTO_CGROUP) where the kernel can, and moved into v1 leaves (and a
// v2 leaf on older kernels) by pid, learnt from --info-fd, while it waits.
// Nothing of the sandbox runs before its limits apply.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if spec.Workspace == "" {
		return nil, errors.New("bwrap: spec.Workspace is required")
	}
	ws, err := filepath.Abs(spec.Workspace)
	if err != nil {
		return nil, fmt.Errorf("bwrap: workspace: %w", err)
	}
	if err := os.MkdirAll(ws, 0o700); err != nil {
		return nil, fmt.Errorf("bwrap: create workspace: %w", err)
	}
	log := r.opts.Logger.With(
		slog.String("runtime", r.Name()),
		slog.String("session_id", spec.SessionID),
		slog.String("work_id", spec.WorkID),
	)
	if r.cred != nil {
		skipped, err := handOver(ws, r.hostIDs[0], r.hostIDs[1])
		if err != nil {
			return nil, fmt.Errorf("bwrap: hand the workspace to the sandbox's host uid %d: %w", r.hostIDs[0], err)
		}
		if skipped > 0 {
			log.Warn("workspace files with several hard links were left to their owner; the sandbox may not be able to write them", slog.Int("count", skipped))
		}
	}
	limits := spec.Limits.OrDefault()
	if limits.WorkspaceBytes > 0 {
		r.wsOnce.Do(func() {
			r.opts.Logger.Warn("bwrap: the workspace size limit is NOT enforced by this runtime", slog.Int64("workspace_bytes", limits.WorkspaceBytes))
		})
	}

	p, err := sandbox.NewPipes()
	if err != nil {
		return nil, fmt.Errorf("bwrap: %w", err)
	}
	s := &Sandbox{
		log:     log,
		exited:  make(chan struct{}),
		stderr:  sandbox.NewStderrLog(log),
		stderrR: p.StderrR,
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.stderr.Copy(p.StderrR)
	}()
	b, err := r.boot(ctx, bootSpec{
		name:    leafName(spec.SessionID),
		layout:  layout{env: spec.Env, tmpBytes: limits.TmpBytes, workspace: ws, egress: spec.Egress},
		limits:  limits,
		command: sandboxdCommand(spec.Egress != nil),
		into:    r.intoCgroup,
		stdin:   p.StdinR,
		stdout:  p.StdoutW,
		stderr:  p.StderrW,
	})
	p.CloseChildEnds()
	if err != nil {
		_ = p.StdinW.Close()
		_ = p.StdoutR.Close()
		s.wg.Wait() // nothing writes stderr: bwrap never started
		_ = p.StderrR.Close()
		return nil, fmt.Errorf("bwrap: start: %w", err)
	}
	s.b = b
	// Fixed from here on: the waiter reads it.
	s.log = log.With(slog.Int("bwrap_pid", b.cmd.Process.Pid))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := b.cmd.Wait()
		s.state = b.cmd.ProcessState
		if s.state == nil {
			s.log.Warn("waiting for bwrap failed", slog.Any("error", err))
		}
		close(s.exited)
	}()
	s.conn = sandbox.NewConn(p.RPC(), sandbox.ConnOptions{ExitReason: s.exitReason})

	hctx, cancel := context.WithTimeout(ctx, r.opts.StartTimeout)
	defer cancel()
	err = b.admit(hctx)
	var hello sandbox.Hello
	if err == nil {
		hello, err = s.conn.Hello(hctx)
	}
	if err != nil {
		// A sandboxd that failed to start gets no grace.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), closeGrace)
		defer ccancel()
		s.closeOnce.Do(func() { s.closeErr = s.close(cctx, 0) })
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("sandboxd did not answer within %s: %w", r.opts.StartTimeout, err)
		}
		tail := s.stderr.Tail()
		if r.cred != nil && strings.Contains(tail, "Permission denied") {
			tail += " (" + r.reachHint(ws) + ")"
		}
		if tail != "" {
			return nil, fmt.Errorf("bwrap: start sandboxd: %w; its last output: %s", err, tail)
		}
		return nil, fmt.Errorf("bwrap: start sandboxd: %w", err)
	}
	s.nsPID = hello.PID
	s.log.Debug("sandbox started", slog.Int("sandbox_pid", hello.PID), slog.String("workdir", hello.Workdir), slog.Any("cgroups", b.cgroupDirs()))
	return s, nil
}

// Sandbox is one bwrap sandbox running sandboxd.
type Sandbox struct {
	b     *booting
	conn  *sandbox.Conn
	log   *slog.Logger
	nsPID int // sandboxd's pid in the sandbox, from its hello

	pidOnce sync.Once
	pid     int // sandboxd's host pid, found by PID
	stderr  *sandbox.StderrLog
	stderrR *os.File
	wg      sync.WaitGroup // the waiter and the stderr copier

	exited chan struct{}    // closed once bwrap is reaped
	state  *os.ProcessState // how bwrap ended; set before exited is closed

	closeOnce sync.Once
	closeErr  error
}

var _ sandbox.Sandbox = (*Sandbox)(nil)

// Exec runs call in sandboxd. See [sandbox.Sandbox].
func (s *Sandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	return s.conn.Exec(ctx, call)
}

// PID is sandboxd's process id on the host, or 0 if it cannot be found.
// Only tests and diagnostics need it, so it is looked up on the first call
// (which must come while the sandbox runs), not on the way to the first
// tool call.
func (s *Sandbox) PID() int {
	s.pidOnce.Do(func() { s.pid, _ = s.b.sandboxdPID(s.nsPID) })
	return s.pid
}

// Close stops the sandbox: EOF on sandboxd's stdin (it closes its tools and
// exits), then, after a grace or when ctx ends, SIGKILL to pid 1 of its pid
// namespace (which takes every process in it), to its cgroup and to bwrap.
// It reaps bwrap, waits until nothing of the sandbox is left and removes
// its cgroup. It is idempotent.
func (s *Sandbox) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx, closeGrace) })
	return s.closeErr
}

func (s *Sandbox) close(ctx context.Context, grace time.Duration) error {
	_ = s.conn.Close()
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-s.exited:
		case <-t.C:
			s.log.Warn("sandboxd did not exit after its input closed; killing the sandbox", slog.Duration("grace", grace))
		case <-ctx.Done():
		}
	}
	if s.b.nsinit != nil {
		// pid 1 of the sandbox first: bwrap reaps it and exits, so that
		// nothing is left for the host's init to reap.
		_ = s.b.nsinit.Kill()
		t := time.NewTimer(reapWait)
		select {
		case <-s.exited:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.b.kill()
	var errs []error
	select {
	case <-s.exited:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("bwrap: bwrap (pid %d) not reaped after SIGKILL: %w", s.b.cmd.Process.Pid, ctx.Err()))
	}
	if err := s.b.waitGone(ctx); err != nil {
		errs = append(errs, err)
	}
	if s.b.cg != nil {
		wait := cgroupRemoveWait
		if d, ok := ctx.Deadline(); ok {
			wait = time.Until(d)
		}
		if err := s.b.cg.remove(wait); err != nil {
			errs = append(errs, fmt.Errorf("bwrap: %w", err))
		}
	}
	// Everything that could write stderr is dead: let the copier drain it.
	_ = s.stderrR.SetReadDeadline(time.Now().Add(stderrDrain))
	if len(errs) == 0 {
		s.wg.Wait()
		s.log.Debug("sandbox closed", slog.String("exit", s.reason()))
	}
	_ = s.stderrR.Close()
	return errors.Join(errs...)
}

// exitReason is the Conn's ExitReason: how sandboxd ended, once bwrap is
// reaped (bwrap exits with sandboxd's status as soon as sandboxd ends).
func (s *Sandbox) exitReason() string {
	t := time.NewTimer(exitReasonWait)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		return "closed its output"
	}
	reason := s.reason()
	// The kernel's OOM killer sends SIGKILL; the cgroup counts its kills.
	// (A sandbox that had a process OOM-killed earlier and later has
	// sandboxd killed by a SIGKILL of its own is reported as OOM too.)
	if reason == "killed by signal SIGKILL" && s.b.cg != nil && s.b.cg.oomKills() > 0 {
		return sandbox.ReasonOOM
	}
	return reason
}

// reason is how bwrap ended, in sandboxd's terms; valid once exited is
// closed. bwrap exits with its command's status, and with 128+n when the
// command was killed by signal n.
func (s *Sandbox) reason() string {
	if s.state == nil {
		return ""
	}
	if ws, ok := s.state.Sys().(syscall.WaitStatus); ok && ws.Exited() && ws.ExitStatus() > 128 && ws.ExitStatus() <= 128+64 {
		return "killed by signal " + sandbox.SignalName(syscall.Signal(ws.ExitStatus()-128))
	}
	return sandbox.ExitReason(s.state)
}

// bootSpec is one bwrap run.
type bootSpec struct {
	name    string // the cgroup leaf's name
	layout  layout
	limits  sandbox.Limits
	command []string // run in the sandbox
	into    bool     // start bwrap in its cgroup v2 leaf
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

// booting is a started bwrap: held at --block-fd until admit.
type booting struct {
	cmd    *exec.Cmd
	cg     *cgroup // nil when the host gives none
	born   bool    // bwrap was started in cg.v2
	infoR  *os.File
	blockW *os.File

	// nsinit is pid 1 of the sandbox's pid namespace (bwrap's child),
	// through a pidfd, so that a recycled pid is never signalled; set by
	// admit.
	nsinit    *os.Process
	nsinitPID int
}

// startError means bwrap could not be started at all.
type startError struct{ err error }

func (e *startError) Error() string { return "start bwrap: " + e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// joinError means bwrap could not be moved into its cgroups.
type joinError struct{ err error }

func (e *joinError) Error() string { return "cgroup: " + e.err.Error() }
func (e *joinError) Unwrap() error { return e.err }

// boot creates the cgroup and starts bwrap, which stops before running
// anything of the sandbox's until admit.
func (r *Runtime) boot(ctx context.Context, spec bootSpec) (*booting, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	args, err := r.args(spec.layout)
	if err != nil {
		return nil, err
	}
	b := &booting{}
	if r.cg.v2 != "" || len(r.cg.ctl) > 0 {
		if b.cg, err = r.cg.create(spec.name, spec.limits); err != nil {
			return nil, fmt.Errorf("cgroup: %w", err)
		}
	}
	files := make([]*os.File, 0, fdCount)
	var parentEnds []*os.File
	fail := func(err error) (*booting, error) {
		closeFiles(files...)
		closeFiles(parentEnds...)
		if b.cg != nil {
			_ = b.cg.remove(time.Second)
		}
		return nil, err
	}
	add := func(data []byte) error {
		f, err := dataPipe(data)
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	}
	if err := add([]byte(strings.Join(args, "\x00") + "\x00")); err != nil {
		return fail(fmt.Errorf("bwrap arguments: %w", err))
	}
	infoR, infoW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	files, parentEnds = append(files, infoW), append(parentEnds, infoR)
	blockR, blockW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	files, parentEnds = append(files, blockR), append(parentEnds, blockW)
	for _, data := range [][]byte{r.seccomp, []byte(etcPasswd), []byte(etcGroup), []byte(etcNsswitch), []byte(etcHosts)} {
		if err := add(data); err != nil {
			return fail(err)
		}
	}

	cmd := exec.Command(r.bwrap, append([]string{"--args", strconv.Itoa(fdArgs), "--"}, spec.command...)...)
	cmd.Env = []string{} // bwrap itself gets nothing of the worker's environment
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = spec.stdin, spec.stdout, spec.stderr
	cmd.ExtraFiles = files
	// Its own process group: a terminal's ^C to the worker is the worker's
	// to handle (drain), not a kill of every sandbox. Credential: see
	// Options.HostUID.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: r.cred}
	if spec.into && b.cg != nil && b.cg.v2 != "" {
		dir, err := os.Open(b.cg.v2)
		if err != nil {
			return fail(fmt.Errorf("open cgroup %s: %w", b.cg.v2, err))
		}
		defer dir.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(dir.Fd())
		b.born = true
	}
	closeOnExecInherited()
	if err := cmd.Start(); err != nil {
		return fail(&startError{err: err})
	}
	closeFiles(files...)
	b.cmd, b.infoR, b.blockW = cmd, infoR, blockW
	return b, nil
}

// admit learns bwrap's child (pid 1 of the sandbox) from --info-fd, puts
// both bwrap processes into the cgroups they were not born in, and lets
// the sandbox run.
func (b *booting) admit(ctx context.Context) error {
	if d, ok := ctx.Deadline(); ok {
		_ = b.infoR.SetReadDeadline(d)
	}
	var info struct {
		ChildPID int `json:"child-pid"`
	}
	err := json.NewDecoder(io.LimitReader(b.infoR, 4096)).Decode(&info)
	_ = b.infoR.Close()
	switch {
	case errors.Is(err, io.EOF):
		return errors.New("bwrap exited before creating the sandbox")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("bwrap did not create the sandbox in time: %w", context.DeadlineExceeded)
	case err != nil:
		return fmt.Errorf("read bwrap's --info-fd: %w", err)
	case info.ChildPID <= 0:
		return errors.New("bwrap's --info-fd has no child-pid")
	}
	p, err := os.FindProcess(info.ChildPID)
	if err != nil {
		return fmt.Errorf("find bwrap's child %d: %w", info.ChildPID, err)
	}
	if ppid, _ := sandbox.ParentPID(info.ChildPID); ppid != b.cmd.Process.Pid {
		return fmt.Errorf("pid %d from bwrap's --info-fd is not bwrap's child", info.ChildPID)
	}
	b.nsinit, b.nsinitPID = p, info.ChildPID
	if b.cg != nil {
		if err := b.cg.join(b.born, b.cmd.Process.Pid, info.ChildPID); err != nil {
			return &joinError{err: err}
		}
	}
	_, err = b.blockW.Write([]byte{1})
	_ = b.blockW.Close()
	if err != nil {
		return fmt.Errorf("release bwrap: %w", err)
	}
	return nil
}

// kill kills everything of the sandbox: pid 1 of its pid namespace (the
// kernel then kills every other process in the namespace, and nothing can
// leave one), its cgroup, and bwrap. Only then is --block-fd closed: a
// bwrap still waiting there would otherwise go on unconfined.
func (b *booting) kill() {
	if b.nsinit != nil {
		_ = b.nsinit.Kill()
	} else {
		// admit never learnt the child: find it the slow way.
		for _, pid := range sandbox.ChildrenOf(b.cmd.Process.Pid) {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	}
	if b.cg != nil {
		_ = b.cg.kill()
	}
	_ = b.cmd.Process.Kill()
	closeFiles(b.infoR, b.blockW)
}

// waitGone waits until pid 1 of the sandbox has exited, which the kernel
// lets happen only once every other process of its namespace is gone, and
// until the cgroup is empty.
func (b *booting) waitGone(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		gone := b.nsinit == nil || processGone(b.nsinit, b.nsinitPID)
		if gone && (b.cg == nil || b.cg.empty()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bwrap: the sandbox's processes (pid namespace init %d) did not go away after SIGKILL: %w", b.nsinitPID, ctx.Err())
		case <-t.C:
		}
	}
}

// sandboxdPID finds sandboxd's host pid: the child of pid 1 of the sandbox
// whose pid in the namespace is nsPID (from its hello).
func (b *booting) sandboxdPID(nsPID int) (int, error) {
	var candidates []int
	if b.cg != nil {
		candidates = b.cg.procs()
	}
	if len(candidates) == 0 {
		candidates = sandbox.ChildrenOf(b.nsinitPID)
	}
	for _, pid := range candidates {
		if ppid, _ := sandbox.ParentPID(pid); ppid != b.nsinitPID {
			continue
		}
		if nsPIDOf(pid) == nsPID {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("cannot find sandboxd (pid %d in the sandbox) among the host's processes", nsPID)
}

// cgroupDirs are the sandbox's cgroup leaves, for logs and tests.
func (b *booting) cgroupDirs() []string {
	if b.cg == nil {
		return nil
	}
	return b.cg.dirs()
}

// processGone reports whether p (pid) has exited: the pidfd says so, or
// the process is a zombie. Checking the pidfd first means a pid recycled
// after the process was reaped is never mistaken for it.
func processGone(p *os.Process, pid int) bool {
	if errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
		return true
	}
	state, ok := procState(pid)
	return !ok || state == 'Z' || state == 'X'
}

// procState is the state letter of pid from /proc/<pid>/stat.
func procState(pid int) (byte, bool) {
	fields, ok := sandbox.ProcStat(pid)
	if !ok || len(fields) < 1 || len(fields[0]) != 1 {
		return 0, false
	}
	return fields[0][0], true
}

// nsPIDOf is pid's pid in its innermost pid namespace (the last NSpid
// field of /proc/<pid>/status); 0 if unknown.
func nsPIDOf(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}

// dataPipe returns the read end of a pipe holding data, for bwrap to read
// (--args, --seccomp, --ro-bind-data). The pipe is made big enough to hold
// all of it, so the write does not wait for a reader.
func dataPipe(data []byte) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	if len(data) > 60<<10 {
		var serr error
		rc, err := w.SyscallConn()
		if err == nil {
			err = rc.Control(func(fd uintptr) {
				const fSetPipeSz = 1031 // F_SETPIPE_SZ
				_, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSz, uintptr(len(data)))
				if errno != 0 {
					serr = errno
				}
			})
		}
		if err := errors.Join(err, serr); err != nil {
			closeFiles(r, w)
			return nil, fmt.Errorf("%d bytes are too many to hand to bwrap: %w", len(data), err)
		}
	}
	_, err = w.Write(data)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}

// closeOnExecInherited marks every descriptor of the worker above stderr
// close-on-exec. Go opens all of its own that way, but descriptors the
// worker inherited from whatever started it (a supervisor's pipe, an
// activation socket) are not, and would otherwise pass through bwrap, which
// hands its command every descriptor it has, into the sandbox. exec.Cmd's
// ExtraFiles are unaffected: the child gets them as fresh descriptors.
func closeOnExecInherited() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
		if errno == 0 && flags&syscall.FD_CLOEXEC == 0 {
			_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, flags|syscall.FD_CLOEXEC)
		}
	}
}

func closeFiles(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			_ = f.Close()
		}
	}
}
