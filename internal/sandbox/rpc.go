package sandbox

// The sandboxd RPC: newline-delimited JSON over sandboxd's stdio, the only
// channel between the supervisor and a sandbox. Both sides use the types in
// this file; every backend wraps a [Conn] around whatever carries sandboxd's
// stdin and stdout (pipes of a child process, a container attach stream …).
//
//	sandboxd → supervisor, first line:  {"hello":{"version":1,"workdir":"/workspace","pid":7}}
//	supervisor → sandboxd:               {"id":1,"exec":{"tool":"bash","input":{"command":"ls"}}}
//	                                     {"id":2,"cancel":1}
//	sandboxd → supervisor:               {"id":1,"result":{"text":"a.txt\n","is_error":false}}
//	                                     {"id":3,"error":"unknown tool \"nope\""}
//
// Exec requests run one at a time in arrival order; a cancel is acted on at
// once, even while a request runs, and gets no response of its own: the
// cancelled request answers as usual (normally with an is_error result). An
// "error" response is a protocol-level failure (an unknown tool, a malformed
// request); a tool that fails answers with a result whose is_error is true.
// A response with id 0 answers a line that could not be attributed to a
// request. Lines are limited to [MaxLineBytes] in both directions.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ProtocolVersion is the version of the sandboxd RPC spoken by this build.
// sandboxd announces its version in its hello; a mismatch is an
// [ErrProtocol] failure at start.
const ProtocolVersion = 1

// MaxLineBytes bounds one line of the RPC, in either direction. A longer
// request is refused by sandboxd; a longer response is a protocol violation.
const MaxLineBytes = 16 << 20

// DefaultCancelGrace is how long [Conn.Exec] waits, after its context ends,
// for sandboxd to answer the cancelled call before giving up on it.
const DefaultCancelGrace = 5 * time.Second

// Hello is what sandboxd announces when it is ready.
type Hello struct {
	Version int    `json:"version"`
	Workdir string `json:"workdir"`
	PID     int    `json:"pid"`
}

// HelloLine is the first line sandboxd writes.
type HelloLine struct {
	Hello *Hello `json:"hello"`
}

// Request is one line from the supervisor: exactly one of Exec and Cancel is
// set. IDs are positive and unique per connection.
type Request struct {
	ID     uint64 `json:"id"`
	Exec   *Call  `json:"exec,omitempty"`
	Cancel uint64 `json:"cancel,omitempty"`
}

// Response answers the Exec request with the same ID: exactly one of Result
// and Error is set.
type Response struct {
	ID     uint64  `json:"id"`
	Result *Result `json:"result,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// ErrLineTooLong is returned by [ReadLine] for a line over its limit; the
// line has been consumed and the next read starts after it.
var ErrLineTooLong = errors.New("line too long")

// ReadLine reads one newline-terminated line of at most limit bytes (the
// newline not counted) and returns it without the newline. A longer line is
// read to its end and discarded, so memory stays bounded, and
// [ErrLineTooLong] is returned. A final line without a newline is returned
// with a nil error; io.EOF comes only when nothing is left.
func ReadLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		frag, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(frag) > limit+1 { // +1: the newline
				tooLong = true
				line = nil
			} else {
				line = append(line, frag...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && (len(line) > 0 || tooLong):
			// The last line had no newline.
		case err != nil:
			return nil, err
		}
		if tooLong {
			return nil, ErrLineTooLong
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		if len(line) > limit {
			return nil, ErrLineTooLong
		}
		return line, nil
	}
}

// ExitError reports that sandboxd exited, or its channel broke, before the
// call was answered. It matches [ErrExited].
type ExitError struct {
	// Reason says how sandboxd ended, in words safe to show anyone:
	// "exit status 2", "killed by signal SIGKILL"; empty when unknown.
	Reason string
	// Sent reports whether the call had reached sandboxd. When false the
	// call certainly did not run; when true it may have had effects.
	Sent bool
}

func (e *ExitError) Error() string {
	if e.Reason == "" {
		return ErrExited.Error()
	}
	return ErrExited.Error() + " (" + e.Reason + ")"
}

// Unwrap makes errors.Is(err, ErrExited) true.
func (e *ExitError) Unwrap() error { return ErrExited }

// ExitReason describes how a process ended: "exit status 2" or "killed by
// signal SIGKILL". It is the Reason of an [ExitError].
func ExitReason(ps *os.ProcessState) string {
	if ps == nil {
		return ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by signal " + SignalName(ws.Signal())
	}
	return "exit status " + strconv.Itoa(ps.ExitCode())
}

// SignalName returns the conventional name of sig ("SIGKILL"), or
// "signal N" for one without a well-known name.
func SignalName(sig syscall.Signal) string {
	if name, ok := signalNames[sig]; ok {
		return name
	}
	return "signal " + strconv.Itoa(int(sig))
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP:  "SIGHUP",
	syscall.SIGINT:  "SIGINT",
	syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL:  "SIGILL",
	syscall.SIGTRAP: "SIGTRAP",
	syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS:  "SIGBUS",
	syscall.SIGFPE:  "SIGFPE",
	syscall.SIGKILL: "SIGKILL",
	syscall.SIGSEGV: "SIGSEGV",
	syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGALRM: "SIGALRM",
	syscall.SIGTERM: "SIGTERM",
}

// ConnOptions configures a [Conn]. The zero value is useful.
type ConnOptions struct {
	// ExitReason is called once, when sandboxd's output ends, to learn how
	// sandboxd ended (see [ExitReason]); it may block briefly, e.g. until
	// the process is reaped. Nil means the reason is unknown.
	ExitReason func() string
	// CancelGrace overrides [DefaultCancelGrace].
	CancelGrace time.Duration
}

// Conn is the supervisor's end of the sandboxd RPC. It is safe for
// concurrent use; calls are pipelined and sandboxd runs them in order.
//
// A Conn owns two goroutines, a reader and a writer, which [Conn.Close]
// stops and waits for; the io.ReadWriteCloser it wraps must unblock a
// pending Read and Write when closed (pipes from os.Pipe and network
// connections do).
type Conn struct {
	rwc  io.ReadWriteCloser
	opts ConnOptions

	writes chan outgoing
	hello  chan struct{} // closed once helloMsg is set
	done   chan struct{} // closed when the reader stops; fail* are final then
	stop   chan struct{} // closed by Close; stops the writer
	wg     sync.WaitGroup

	closeOnce sync.Once

	mu       sync.Mutex // guards the fields below
	nextID   uint64
	pending  map[uint64]chan Response
	helloMsg Hello
	closed   bool   // Close was called
	failErr  error  // the protocol violation that stopped the reader, if any
	reason   string // how sandboxd ended, once the reader stopped on EOF
}

// outgoing is one line for the writer; sent, when non-nil, gets the write's
// error.
type outgoing struct {
	line []byte
	sent chan error
}

// NewConn starts speaking the RPC over rwc, which carries sandboxd's stdout
// (reads) and stdin (writes). Wait for sandboxd with [Conn.Hello].
func NewConn(rwc io.ReadWriteCloser, opts ConnOptions) *Conn {
	if opts.CancelGrace <= 0 {
		opts.CancelGrace = DefaultCancelGrace
	}
	c := &Conn{
		rwc:     rwc,
		opts:    opts,
		writes:  make(chan outgoing, 16),
		hello:   make(chan struct{}),
		done:    make(chan struct{}),
		stop:    make(chan struct{}),
		pending: make(map[uint64]chan Response),
	}
	c.wg.Add(2)
	go c.read()
	go c.write()
	return c
}

// Hello waits for sandboxd's hello line and returns it. It fails with the
// reason sandboxd stopped (an [ExitError], [ErrProtocol] …) or ctx's error.
func (c *Conn) Hello(ctx context.Context) (Hello, error) {
	select {
	case <-c.hello:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.helloMsg, nil
	case <-c.done:
		return Hello{}, c.failure(false)
	case <-ctx.Done():
		return Hello{}, fmt.Errorf("waiting for sandboxd's hello: %w", ctx.Err())
	}
}

// Done is closed when the channel from sandboxd has ended: sandboxd exited,
// broke the protocol, or the Conn was closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Exec sends call to sandboxd and waits for its result. When ctx ends first,
// Exec asks sandboxd to cancel the call, waits up to the cancel grace for
// its answer (so the next call does not queue behind it), and returns an
// error wrapping ctx.Err(). A call too large for the RPC is answered with an
// is_error result without reaching sandboxd.
func (c *Conn) Exec(ctx context.Context, call Call) (Result, error) {
	if len(call.Input) == 0 {
		call.Input = json.RawMessage("{}")
	}
	select {
	case <-c.done:
		return Result{}, fmt.Errorf("exec %s: %w", call.Tool, c.failure(false))
	default:
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Result{}, fmt.Errorf("exec %s: %w", call.Tool, ErrClosed)
	}
	c.nextID++
	id := c.nextID
	c.mu.Unlock()

	line, err := json.Marshal(Request{ID: id, Exec: &call})
	if err != nil {
		// Input is a RawMessage: only invalid JSON gets here.
		return Result{IsError: true, Text: fmt.Sprintf("tool input is not valid JSON: %v", err)}, nil
	}
	if len(line) > MaxLineBytes {
		return Result{IsError: true, Text: fmt.Sprintf("tool input is too large (%d bytes; the limit is %d)", len(call.Input), MaxLineBytes)}, nil
	}

	replies := make(chan Response, 1)
	c.mu.Lock()
	c.pending[id] = replies
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	sent := make(chan error, 1)
	select {
	case c.writes <- outgoing{line: append(line, '\n'), sent: sent}:
	case <-c.done:
		return Result{}, fmt.Errorf("exec %s: %w", call.Tool, c.failure(false))
	case <-ctx.Done():
		return Result{}, fmt.Errorf("exec %s: %w", call.Tool, ctx.Err())
	}

	for {
		select {
		case err := <-sent:
			sent = nil
			if err != nil {
				// sandboxd stopped reading: it is exiting or hostile. The
				// reader learns which when its output ends.
				return Result{}, fmt.Errorf("exec %s: %w", call.Tool, c.writeFailure(ctx))
			}
		case resp := <-replies:
			return c.decode(call.Tool, resp)
		case <-c.done:
			// A reply that raced the end of the channel still counts.
			select {
			case resp := <-replies:
				return c.decode(call.Tool, resp)
			default:
			}
			// Unless the write is known to have failed, the call may have
			// reached sandboxd and had effects.
			reached := true
			if sent != nil {
				select {
				case err := <-sent:
					reached = err == nil
				default:
				}
			}
			return Result{}, fmt.Errorf("exec %s: %w", call.Tool, c.failure(reached))
		case <-ctx.Done():
			return Result{}, c.cancel(ctx, call.Tool, id, replies)
		}
	}
}

// cancel asks sandboxd to stop request id and waits up to the grace for it
// to answer, so the call does not hold up the next one unnoticed.
func (c *Conn) cancel(ctx context.Context, tool string, id uint64, replies chan Response) error {
	line, _ := json.Marshal(Request{ID: c.newID(), Cancel: id})
	select {
	case c.writes <- outgoing{line: append(line, '\n')}:
	default:
		// The writer is wedged on a sandboxd that stopped reading; the
		// cancel could not be delivered anyway.
	}
	grace := time.NewTimer(c.opts.CancelGrace)
	defer grace.Stop()
	select {
	case <-replies:
		return fmt.Errorf("exec %s: cancelled: %w", tool, ctx.Err())
	case <-c.done:
		return fmt.Errorf("exec %s: cancelled: %w", tool, ctx.Err())
	case <-grace.C:
		return fmt.Errorf("exec %s: cancelled; sandboxd did not stop the call within %s: %w: %w", tool, c.opts.CancelGrace, ErrUnresponsive, ctx.Err())
	}
}

func (c *Conn) newID() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	return c.nextID
}

// writeFailure waits briefly for the reader to learn why sandboxd stopped
// reading, and returns that failure.
func (c *Conn) writeFailure(ctx context.Context) error {
	t := time.NewTimer(c.opts.CancelGrace)
	defer t.Stop()
	select {
	case <-c.done:
		return c.failure(false)
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &ExitError{Reason: "stopped reading requests"}
	}
}

func (c *Conn) decode(tool string, resp Response) (Result, error) {
	switch {
	case resp.Result != nil && resp.Error == "":
		return *resp.Result, nil
	case resp.Result == nil && resp.Error != "":
		return Result{}, fmt.Errorf("exec %s: %w: sandboxd refused the request: %s", tool, ErrProtocol, clip(resp.Error, 256))
	default:
		return Result{}, fmt.Errorf("exec %s: %w: response has neither or both of result and error", tool, ErrProtocol)
	}
}

// failure is the error for a call that could not complete because the
// channel ended; valid once done is closed (or, for closed, at any time).
func (c *Conn) failure(sent bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return ErrClosed
	case c.failErr != nil:
		return c.failErr
	default:
		return &ExitError{Reason: c.reason, Sent: sent}
	}
}

// Close stops the Conn: calls in flight and later fail with [ErrClosed], the
// underlying channel is closed (sandboxd sees EOF on its stdin, which tells
// it to stop), and the reader and writer are waited for. It is idempotent.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.stop)
		err = c.rwc.Close()
		c.wg.Wait()
	})
	return err
}

func (c *Conn) write() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case w := <-c.writes:
			_, err := c.rwc.Write(w.line)
			if w.sent != nil {
				w.sent <- err
			}
		}
	}
}

func (c *Conn) read() {
	defer c.wg.Done()
	err := c.readLoop(bufio.NewReaderSize(c.rwc, 64<<10))
	c.mu.Lock()
	closed := c.closed
	if errors.Is(err, ErrProtocol) && !closed {
		c.failErr = err
	}
	protocol := c.failErr != nil
	c.mu.Unlock()
	if !closed && !protocol && c.opts.ExitReason != nil {
		reason := c.opts.ExitReason()
		c.mu.Lock()
		c.reason = reason
		c.mu.Unlock()
	}
	close(c.done)
}

// readLoop reads the hello, then responses, until the channel ends. It
// returns an error wrapping ErrProtocol for a violation, else the read error.
func (c *Conn) readLoop(br *bufio.Reader) error {
	line, err := ReadLine(br, MaxLineBytes)
	switch {
	case errors.Is(err, ErrLineTooLong):
		return fmt.Errorf("%w: hello line over %d bytes", ErrProtocol, MaxLineBytes)
	case err != nil:
		return err
	}
	var hl HelloLine
	if err := json.Unmarshal(line, &hl); err != nil || hl.Hello == nil {
		return fmt.Errorf("%w: first line is not a hello: %q", ErrProtocol, clip(string(line), 128))
	}
	if hl.Hello.Version != ProtocolVersion {
		return fmt.Errorf("%w: sandboxd speaks protocol version %d, this worker speaks %d (use the same perimeter build for both)", ErrProtocol, hl.Hello.Version, ProtocolVersion)
	}
	c.mu.Lock()
	c.helloMsg = *hl.Hello
	c.mu.Unlock()
	close(c.hello)

	for {
		line, err := ReadLine(br, MaxLineBytes)
		switch {
		case errors.Is(err, ErrLineTooLong):
			return fmt.Errorf("%w: response line over %d bytes", ErrProtocol, MaxLineBytes)
		case err != nil:
			return err
		}
		var resp Response
		if err := json.Unmarshal(line, &resp); err != nil {
			return fmt.Errorf("%w: malformed response: %q", ErrProtocol, clip(string(line), 128))
		}
		c.mu.Lock()
		replies, ok := c.pending[resp.ID]
		delete(c.pending, resp.ID)
		c.mu.Unlock()
		if ok {
			replies <- resp // buffered, and each ID is answered at most once here
		}
		// Otherwise: the answer to a call whose caller gave up (or an id-0
		// complaint about a line nobody waits for). Nothing to do.
	}
}

// clip shortens s to at most n bytes for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
