package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-units"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

const (
	// exitReasonWait bounds how long a broken channel waits for the engine
	// to report how the container ended.
	exitReasonWait = 3 * time.Second
)

// Sandbox is one container running sandboxd.
type Sandbox struct {
	rt     *Runtime
	id     string
	log    *slog.Logger
	limits sandbox.Limits
	wsfs   *workspaceFS // nil unless the workspace is size-bounded
	conn   *sandbox.Conn
	stderr *sandbox.StderrLog
	oom    *oomCounter    // nil when the memory cgroup cannot be read
	ooms   *oomWatch      // tells an OOM death from a later SIGKILL
	wg     sync.WaitGroup // the stream demultiplexer, the stderr logger and the events watcher

	stopWatch context.CancelFunc // ends the events watcher; nil before it starts

	closeOnce sync.Once
	closeErr  error
}

var _ sandbox.Sandbox = (*Sandbox)(nil)

// ContainerID is the engine's ID of the sandbox's container.
func (s *Sandbox) ContainerID() string { return s.id }

// PID is the host pid of sandboxd under runc, and of the gVisor sandbox
// (which runs sandboxd in its own kernel) under runsc. It is 0 when the
// engine cannot say (the container is gone).
func (s *Sandbox) PID() int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.rt.cli.ContainerInspect(ctx, s.id)
	if err != nil || info.State == nil || info.State.Pid <= 0 {
		return 0
	}
	if s.rt.opts.OCIRuntime == "runsc" {
		return info.State.Pid
	}
	// The container's own process is docker-init; sandboxd is its one
	// child. Killing docker-init kills sandboxd only once the kernel tears
	// the pid namespace down, by which time sandboxd may have answered
	// another call.
	if kids := sandbox.ChildrenOf(info.State.Pid); len(kids) == 1 {
		return kids[0]
	}
	return 0
}

// Exec runs call in sandboxd. See [sandbox.Sandbox]. When the kernel killed
// a process of the sandbox for memory while the call ran (sandboxd itself
// survived), the result says so: the model sees "out of memory", not only
// a bare "Killed".
func (s *Sandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	before, counted := s.oom.count()
	res, err := s.conn.Exec(ctx, call)
	if err != nil {
		return res, err
	}
	after, ok := s.oom.count()
	if counted && ok && after > before {
		res.Text += fmt.Sprintf("\n[%s: the sandbox reached its %s memory limit and a process in it was killed]",
			sandbox.ReasonOOM, units.BytesSize(float64(s.limits.MemoryBytes)))
		s.log.Warn("a process in the sandbox was killed for memory", slog.String("tool", call.Tool), slog.Uint64("oom_kills", after-before))
	}
	// sandboxd outlived every OOM kill so far: none of them can be why it
	// dies later.
	s.ooms.callReturned(after, ok)
	return res, nil
}

// Close stops the container (SIGTERM, then SIGKILL after a short grace),
// removes it with its anonymous volumes and, for a size-bounded workspace,
// moves the files back into the workspace directory. It runs on a context
// detached from ctx's cancellation and is idempotent.
func (s *Sandbox) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer cancel()
		s.closeErr = s.close(cctx, stopGrace)
	})
	return s.closeErr
}

// close tears down whatever Create got to. It is called once.
func (s *Sandbox) close(ctx context.Context, grace time.Duration) error {
	var errs []error
	if s.conn != nil {
		_ = s.conn.Close() // closes the attach connection: the demultiplexer ends
	}
	if s.id != "" {
		if err := s.rt.removeContainer(ctx, s.id, grace); err != nil {
			errs = append(errs, err)
		}
	}
	if s.stopWatch != nil {
		s.stopWatch()
	}
	s.wg.Wait()
	if s.wsfs != nil {
		if err := s.wsfs.unmount(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		s.log.Debug("sandbox closed")
	}
	return errors.Join(errs...)
}

// attach connects to the created container's stdio: stdout feeds the RPC,
// stderr the log. It must happen before the start, so nothing sandboxd
// writes is lost.
func (s *Sandbox) attach(ctx context.Context) error {
	hj, err := s.rt.cli.ContainerAttach(ctx, s.id, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return fmt.Errorf("attach to container: %w", err)
	}
	s.stderr = sandbox.NewStderrLog(s.log)
	stdoutR, stdoutW := io.Pipe()
	stderrR, stderrW := io.Pipe()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		// The frames are the engine's, so their framing can be trusted;
		// their contents are sandboxd's.
		if _, err := stdcopy.StdCopy(stdoutW, stderrW, hj.Reader); err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("container output stream ended", slog.Any("error", err))
		}
		stdoutW.Close()
		stderrW.Close()
	}()
	go func() {
		defer s.wg.Done()
		defer stderrR.Close()
		s.stderr.Copy(stderrR)
	}()
	s.conn = sandbox.NewConn(attachIO{stdout: stdoutR, conn: hj.Conn}, sandbox.ConnOptions{ExitReason: s.exitReason})
	return nil
}

// attachIO joins the demultiplexed stdout (read) and the attach
// connection (write, to sandboxd's stdin) for the Conn.
type attachIO struct {
	stdout *io.PipeReader
	conn   net.Conn
}

func (a attachIO) Read(b []byte) (int, error)  { return a.stdout.Read(b) }
func (a attachIO) Write(b []byte) (int, error) { return a.conn.Write(b) }

// Close unblocks a pending Read (the pipe) and Write (the connection).
func (a attachIO) Close() error {
	return errors.Join(a.conn.Close(), a.stdout.Close())
}

// exitReason is the Conn's ExitReason: how the container ended, once the
// engine reports it stopped.
func (s *Sandbox) exitReason() string {
	ctx, cancel := context.WithTimeout(context.Background(), exitReasonWait)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		ins, err := s.rt.cli.ContainerInspect(ctx, s.id)
		switch {
		case cerrdefs.IsNotFound(err):
			return "container removed"
		case err == nil && ins.State != nil && !ins.State.Running:
			st := *ins.State
			s.ooms.explain(ctx, &st)
			return exitReason(&st)
		}
		select {
		case <-ctx.Done():
			if err != nil {
				s.log.Warn("cannot learn how the sandbox ended", slog.Any("error", err))
				return ""
			}
			return "closed its output"
		case <-time.After(delay):
			delay = min(2*delay, 200*time.Millisecond)
		}
	}
}

// exitReason words a stopped container's state like sandbox.ExitReason.
// PID 1 is docker-init, which exits 128+n when sandboxd dies of signal n,
// and the engine reports 128+n for a container it killed.
func exitReason(st *container.State) string {
	switch code := st.ExitCode; {
	case st.OOMKilled && code == 128+int(syscall.SIGKILL):
		return sandbox.ReasonOOM
	case code > 128 && code <= 128+64:
		return "killed by signal " + sandbox.SignalName(syscall.Signal(code-128))
	default:
		return "exit status " + strconv.Itoa(code)
	}
}

// removeContainer stops id (SIGTERM, SIGKILL after grace; none if grace is
// 0) and removes it. A container already gone is not an error.
func (r *Runtime) removeContainer(ctx context.Context, id string, grace time.Duration) error {
	if grace > 0 {
		secs := int((grace + time.Second - 1) / time.Second)
		if err := r.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Debug("stopping a sandbox container failed; removing it by force", slog.String("container", shortID(id)), slog.Any("error", err))
		}
	}
	for attempt := 1; ; attempt++ {
		err := r.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
		switch {
		case err == nil || cerrdefs.IsNotFound(err):
			return nil
		case cerrdefs.IsConflict(err):
			// Another caller (RemoveOrphans, a concurrent Close) is
			// removing it: wait for that to finish.
			for {
				if _, ierr := r.cli.ContainerInspect(ctx, id); cerrdefs.IsNotFound(ierr) {
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("remove container %s: %w", shortID(id), err)
				case <-time.After(100 * time.Millisecond):
				}
			}
		case attempt == removeAttempts:
			return fmt.Errorf("remove container %s: %w", shortID(id), err)
		}
		// The engine can fail to delete a container's directory while it
		// still holds files in it ("unable to remove filesystem ...
		// directory not empty"), leaving the container dead; removing it
		// again a moment later succeeds.
		r.log.Debug("removing a sandbox container failed; retrying", slog.String("container", shortID(id)), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove container %s: %w", shortID(id), err)
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
}

// removeAttempts bounds how often removeContainer asks the engine.
const removeAttempts = 5

// statOwner is the owner uid of fi's file.
func statOwner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
