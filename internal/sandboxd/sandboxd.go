// Package sandboxd is the in-sandbox agent: `perimeter sandboxd` runs inside
// each sandbox and executes the tool calls the supervisor sends it over its
// stdio (the RPC defined in internal/sandbox).
//
// Trust model: sandboxd runs on the hostile side. It holds no credential and
// decides nothing; every call it receives was already allowed by the
// supervisor's gate. Its tools are the SDK's agent_toolset_20260401
// implementations (read, write, edit, glob, grep), reused unchanged so
// their path confinement and error texts are exactly the SDK's; bash, whose
// persistent shell the SDK starts with a second process and a round trip
// before the first call (a cold sandbox waits for it), keeps the SDK's
// name, schema and answers on a shell of internal/shell that starts
// faster; and [sandbox.ToolCommand] runs operator-declared custom tools.
// The processes it starts get exactly the environment sandboxd itself was
// given, which the supervisor built from an allow-list.
//
// The package stays small on purpose: the standard library, the SDK's
// agenttoolset, internal/shell and the wire types of internal/sandbox.
package sandboxd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Options configures [Serve].
type Options struct {
	// Workdir is the directory the tools work in and the file tools are
	// confined to; empty means the current directory.
	Workdir string
	// MaxFileBytes caps the files read and edit load, as the SDK's
	// AgentToolContext.MaxFileBytes: zero means 256 KiB, negative no cap.
	MaxFileBytes int64
	// Env is the complete environment of the processes the tools start; nil
	// means an empty one. Nothing else is inherited.
	Env map[string]string
}

// maxQueued bounds the exec requests waiting behind the running one.
const maxQueued = 64

// Serve speaks the sandboxd RPC: it writes the hello line to out, then runs
// the exec requests read from in, one at a time in arrival order, acting on
// cancel requests at once. It returns nil when in reaches EOF or ctx ends,
// after cancelling the running call (without waiting for a tool that
// ignores the cancellation) and closing the tools (which kills the
// persistent shell). It returns an error only when it cannot start.
//
// When ctx ends while a Read on in is blocked, Serve does not wait for that
// Read: the reading goroutine exits when in yields (it is closed here if it
// is an io.Closer). In the sandboxd binary the process exits right after.
func Serve(ctx context.Context, in io.Reader, out io.Writer, opts Options) error {
	workdir := opts.Workdir
	if workdir == "" {
		workdir = "."
	}
	workdir, err := filepath.Abs(workdir)
	if err != nil {
		return fmt.Errorf("workdir: %w", err)
	}
	if fi, err := os.Stat(workdir); err != nil {
		return fmt.Errorf("workdir: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("workdir %s is not a directory", workdir)
	}
	env := make(map[string]string, len(opts.Env))
	for k, v := range opts.Env {
		env[k] = v
	}

	tools := agenttoolset.BetaAgentToolset20260401(&agenttoolset.AgentToolContext{
		Workdir:      workdir,
		MaxFileBytes: opts.MaxFileBytes,
		Env:          env,
	})
	configure := &configureTool{env: env}
	var bash *bashTool
	for i, t := range tools {
		if t.Name() == "bash" {
			bash = newBashTool(t, workdir, env)
			tools[i], configure.bash = bash, bash
		}
	}
	tools = append(tools, &commandTool{workdir: workdir, env: env})
	defer agenttoolset.CloseAll(tools)
	tools = append(tools, configure)

	ctx, cancelAll := context.WithCancel(ctx)
	defer cancelAll()
	s := &server{
		out:     out,
		tools:   make(map[string]anthropic.BetaTool, len(tools)),
		queue:   make(chan *job, maxQueued),
		running: make(map[uint64]*job),
		base:    ctx,
		stop:    cancelAll,
	}
	for _, t := range tools {
		s.tools[t.Name()] = t
	}
	if err := s.send(sandbox.HelloLine{Hello: &sandbox.Hello{
		Version: sandbox.ProtocolVersion, Workdir: workdir, PID: os.Getpid(),
	}}); err != nil {
		return nil // nobody is listening: same as EOF
	}

	// Start the persistent shell now (or take the one started while
	// sandboxd initialised), while the supervisor attaches to the session,
	// so that the first bash call does not wait for all of it; a sandbox
	// waiting in a warm pool has it ready. A failure is left for the first
	// call to report.
	if bash != nil {
		_, _ = bash.start()
	}

	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer cancelAll() // EOF on in: the supervisor is gone or closing us
		s.read(in)
	}()
	defer func() {
		cancelAll()
		select {
		case <-readerDone:
		default:
			// ctx ended first; release the reader if in allows it.
			if c, ok := in.(io.Closer); ok {
				_ = c.Close()
			}
		}
	}()

	for {
		// Cancellation wins over queued work: after EOF every queued job
		// is cancelled, and nobody is waiting for its answer.
		if ctx.Err() != nil {
			return nil
		}
		select {
		case j := <-s.queue:
			// The job runs on its own goroutine so that Serve can end while
			// a tool that ignores its context (the SDK's file tools block
			// in open on a FIFO, and read a sparse file to its end) still
			// runs: its context is cancelled, its answer is not written,
			// and in the sandboxd binary the process exits right after.
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.run(j)
			}()
			select {
			case <-done:
			case <-ctx.Done():
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// server is one Serve call's state.
type server struct {
	out   io.Writer
	tools map[string]anthropic.BetaTool
	queue chan *job
	base  context.Context    // parent of every job's context
	stop  context.CancelFunc // cancels base: Serve is ending

	outMu     sync.Mutex // serialises writes to out
	outBroken bool       // guarded by outMu

	mu      sync.Mutex      // guards running
	running map[uint64]*job // queued or running jobs by request id
}

// job is one accepted exec request.
type job struct {
	id     uint64
	call   sandbox.Call
	ctx    context.Context
	cancel context.CancelFunc
}

// read handles request lines until in ends. Cancels are acted on here, so
// they take effect while a job runs; execs are queued for Serve's loop.
func (s *server) read(in io.Reader) {
	br := bufio.NewReaderSize(in, 64<<10)
	for {
		line, err := sandbox.ReadLine(br, sandbox.MaxLineBytes)
		if errors.Is(err, sandbox.ErrLineTooLong) {
			s.fail(0, fmt.Sprintf("request line over %d bytes refused", sandbox.MaxLineBytes))
			continue
		}
		if err != nil {
			return
		}
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var req sandbox.Request
		if err := json.Unmarshal(line, &req); err != nil {
			s.fail(0, "malformed request: "+err.Error())
			continue
		}
		switch {
		case req.ID == 0:
			s.fail(0, "request id must be a positive integer")
		case req.Exec != nil && req.Cancel != 0, req.Exec == nil && req.Cancel == 0:
			s.fail(req.ID, "a request has exactly one of exec and cancel")
		case req.Cancel != 0:
			s.mu.Lock()
			j := s.running[req.Cancel]
			s.mu.Unlock()
			if j != nil {
				j.cancel()
			}
		default:
			s.accept(req.ID, *req.Exec)
		}
	}
}

// accept queues an exec request, or answers it at once when it cannot run.
func (s *server) accept(id uint64, call sandbox.Call) {
	if _, ok := s.tools[call.Tool]; !ok {
		s.fail(id, fmt.Sprintf("unknown tool %q", call.Tool))
		return
	}
	ctx, cancel := context.WithCancel(s.base)
	j := &job{id: id, call: call, ctx: ctx, cancel: cancel}
	s.mu.Lock()
	_, dup := s.running[id]
	if !dup {
		s.running[id] = j
	}
	s.mu.Unlock()
	if dup {
		cancel()
		s.fail(id, "duplicate request id")
		return
	}
	select {
	case s.queue <- j:
	default:
		s.finish(j)
		s.fail(id, fmt.Sprintf("too many queued requests (limit %d)", maxQueued))
	}
}

// run executes one job and answers it. The id is free again before the
// answer leaves: a supervisor may reuse it as soon as it has the answer.
func (s *server) run(j *job) {
	res := sandbox.Result{Text: "call cancelled before it started", IsError: true}
	if j.ctx.Err() == nil {
		res = s.exec(j.ctx, j.call)
	}
	s.finish(j)
	s.answer(j.id, res)
}

func (s *server) finish(j *job) {
	j.cancel()
	s.mu.Lock()
	delete(s.running, j.id)
	s.mu.Unlock()
}

// exec runs a tool. A Go error from the tool is an is_error result carrying
// its text, as the SDK's own runners treat it; a panic is contained so one
// bad call cannot take the session's shell down with sandboxd.
func (s *server) exec(ctx context.Context, call sandbox.Call) (res sandbox.Result) {
	defer func() {
		if p := recover(); p != nil {
			res = sandbox.Result{Text: fmt.Sprintf("%s: internal error in the tool: %v", call.Tool, p), IsError: true}
		}
	}()
	input := call.Input
	if len(input) == 0 {
		input = json.RawMessage("{}")
	}
	blocks, err := s.tools[call.Tool].Execute(ctx, input)
	if err != nil {
		return sandbox.Result{Text: err.Error(), IsError: true}
	}
	return sandbox.Result{Text: resultText(blocks)}
}

func (s *server) answer(id uint64, r sandbox.Result) {
	_ = s.send(sandbox.Response{ID: id, Result: &r})
}

func (s *server) fail(id uint64, msg string) {
	_ = s.send(sandbox.Response{ID: id, Error: msg})
}

// send writes one line. After a write fails the supervisor is gone: the
// pending work is cancelled and later writes are dropped. Once Serve is
// ending (EOF on in, or its context ended) nobody waits for answers, so
// none are written: a write to a supervisor that stopped reading could
// block Serve's return.
func (s *server) send(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if resp, ok := v.(sandbox.Response); ok && len(line) > sandbox.MaxLineBytes {
		// The supervisor would refuse the line and take the sandbox for
		// broken: answer the call with why instead. (A tool's text grows
		// when encoded: the SDK's errors quote paths, and JSON escapes
		// control characters six-fold.)
		msg := fmt.Sprintf("the answer is %d bytes once encoded, over the %d bytes a line of the sandbox's RPC may carry; ask for less at a time", len(line), sandbox.MaxLineBytes)
		short := sandbox.Response{ID: resp.ID, Error: msg}
		if resp.Result != nil {
			short = sandbox.Response{ID: resp.ID, Result: &sandbox.Result{Text: msg, IsError: true}}
		}
		if line, err = json.Marshal(short); err != nil {
			return err
		}
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if s.outBroken || s.base.Err() != nil {
		return io.ErrClosedPipe
	}
	if _, err := s.out.Write(append(line, '\n')); err != nil {
		s.outBroken = true
		s.stop()
		return err
	}
	return nil
}
