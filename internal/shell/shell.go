// Package shell is a sandbox's persistent shell: /bin/bash on a
// pseudo-terminal, whose working directory, variables and background jobs
// last from one command to the next.
//
// It behaves as the SDK's agenttoolset.BashSession does, command for
// command: the same bash flags and variables, the same framing of each
// command and its exit status, the same output cap and cleaning. It starts
// faster, which matters because a cold sandbox's first tool result waits
// for it:
//
//   - The terminal's echo is turned off with an ioctl before bash starts,
//     where the SDK runs `stty -echo` in the new shell (a process start,
//     5 ms and more on small virtual machines) and waits for it.
//   - The line editor's set-up is written at once, and only the first
//     command waits for it to be done.
//   - The shell can be started while the process that will use it is
//     still initialising its packages (package prestart), and [Adopt]
//     hands it over.
package shell

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/perimeterhq/perimeter/internal/shell/spawn"
)

const (
	// OutputLimit is the most output a command returns; the tail is kept.
	OutputLimit = 100 * 1024
	// DefaultTimeout is a command's timeout when none is given.
	DefaultTimeout = 120 * time.Second
	// setupTimeout bounds the wait for the line editor's set-up.
	setupTimeout = 5 * time.Second
)

var (
	// ErrTimedOut: the command did not finish in time. The session is left
	// in an unknown state (the command may still run and print); the caller
	// closes it.
	ErrTimedOut = errors.New("bash: command timed out")
	// ErrTerminated: the shell exited while a command ran.
	ErrTerminated = errors.New("bash session terminated")
	errClosed     = errors.New("session closed")
)

// Session is one running shell. Exec calls are serialised by the caller
// (one command at a time, as on a terminal).
type Session struct {
	proc *spawn.Proc
	done chan struct{} // closed when the terminal reads EOF: the shell is gone
	// setup is true until the output of spawn.Setup has been seen; the
	// first Exec waits for it.
	setup bool

	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
	closed    bool
	// notify wakes a waiting exec when output arrives (capacity 1: a burst
	// of reads collapses into one wakeup, none is lost).
	notify chan struct{}
}

// Start starts bash in dir with exactly env (nothing is inherited), plus
// the variables that keep its output parseable (see [spawn.Bash]).
func Start(dir string, env []string) (*Session, error) {
	p, err := spawn.Bash(dir, env)
	if err != nil {
		return nil, err
	}
	return wrap(p), nil
}

// Adopt returns the shell [spawn.Prestart] started, if it was started in
// dir with exactly env, and otherwise nil.
func Adopt(dir string, env []string) *Session {
	if p := spawn.Adopt(dir, env); p != nil {
		return wrap(p)
	}
	return nil
}

func wrap(p *spawn.Proc) *Session {
	s := &Session{proc: p, done: make(chan struct{}), setup: true, notify: make(chan struct{}, 1)}
	go s.drain()
	return s
}

func (s *Session) drain() {
	tmp := make([]byte, 4096)
	for {
		n, err := s.proc.PTY.Read(tmp)
		if n > 0 {
			s.mu.Lock()
			s.buf.Write(tmp[:n])
			// Keep the tail, where the sentinel is, of a command that
			// prints without end.
			if over := s.buf.Len() - OutputLimit; over > 0 {
				s.buf.Next(over)
				s.truncated = true
			}
			s.mu.Unlock()
			select {
			case s.notify <- struct{}{}:
			default:
			}
		}
		if err != nil {
			close(s.done)
			return
		}
	}
}

// Exec runs cmd and returns its combined output (cleaned of terminal
// control sequences) and exit status. Its standard input is /dev/null. A
// timeout of zero or less means [DefaultTimeout]. After any error the
// session's state is unknown and it should be closed.
func (s *Session) Exec(ctx context.Context, cmd string, timeout time.Duration) (string, int, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return "", -1, errClosed
	}
	if s.setup {
		if _, _, err := s.wait(ctx, spawn.Ready, setupTimeout); err != nil && !errors.Is(err, ErrTimedOut) {
			return "", -1, err
		}
		s.setup = false
	}
	s.mu.Lock()
	s.buf.Reset()
	s.truncated = false
	s.mu.Unlock()
	return s.send(ctx, cmd, timeout)
}

// send writes cmd, followed by a command that prints its exit status after
// a sentinel, and waits for the sentinel. The sentinel carries a fresh
// random nonce, so that no output matches it by chance or by printing
// what an earlier call returned, and it is written as two adjacent quoted
// halves, so that an echo of the input could not contain it. A command
// set on forging it can (it can read the shell's history, as in the SDK's
// shell); it then misreports its own call and leaves what it prints
// afterwards to the next one, as a background job or a trap it sets
// could. The command's standard input is /dev/null (a command that reads
// it gets EOF rather than wait on the terminal).
func (s *Session) send(ctx context.Context, cmd string, timeout time.Duration) (string, int, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	sentinel := "__ANT_CMD_" + hex.EncodeToString(b) + "_DONE__"
	half := len(sentinel) / 2
	wrapped := fmt.Sprintf("{ %s\n} </dev/null 2>&1; printf '\\n%s''%s%%d\\n' $?\n", cmd, sentinel[:half], sentinel[half:])
	if err := s.write(ctx, wrapped, timeout); err != nil {
		return "", -1, err
	}
	return s.wait(ctx, sentinel, timeout)
}

// write types text into the terminal. The shell reads it as it goes, so a
// shell that stops reading (stopped, or busy in a command that does not
// read) leaves a long text's write waiting on a full terminal: the write
// ends at the timeout, or when ctx ends, like the wait for the answer.
func (s *Session) write(ctx context.Context, text string, timeout time.Duration) error {
	pty := s.proc.PTY
	_ = pty.SetWriteDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { _ = pty.SetWriteDeadline(time.Now()) })
	_, err := io.WriteString(pty, text)
	stop()
	_ = pty.SetWriteDeadline(time.Time{})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (the shell stopped reading the command)", ErrTimedOut)
	}
	return fmt.Errorf("write to pty: %w", err)
}

// wait waits for sentinel in the output and returns what came before it
// and the status after it.
func (s *Session) wait(ctx context.Context, sentinel string, timeout time.Duration) (string, int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	timedOut := false
	for {
		select {
		case <-ctx.Done():
			return "", -1, ctx.Err()
		case <-s.done:
			return "", -1, ErrTerminated
		case <-s.proc.Exited():
			return "", -1, ErrTerminated
		case <-s.notify:
		case <-timer.C:
			timedOut = true
		}
		s.mu.Lock()
		out := append([]byte(nil), s.buf.Bytes()...)
		truncated := s.truncated
		s.mu.Unlock()
		// The sentinel counts once the line with the status after it is
		// whole: a read may end between the two.
		if i := bytes.Index(out, []byte(sentinel)); i >= 0 && bytes.IndexByte(out[i+len(sentinel):], '\n') >= 0 {
			var code int
			if n, err := fmt.Fscan(bytes.NewReader(out[i+len(sentinel):]), &code); err != nil || n != 1 {
				code = -1 // the framing is corrupt: not a success
			}
			return cleanOutput(out[:i], truncated), code, nil
		}
		if timedOut {
			return cleanOutput(out, truncated) + "\n[timed out]", -1, ErrTimedOut
		}
	}
}

// Close kills the shell's process group and closes the terminal. It may be
// called more than once.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.proc.Kill()
	return nil
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

func cleanOutput(b []byte, truncated bool) string {
	out := ansi.ReplaceAll(b, nil)
	out = bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n"))
	out = bytes.ReplaceAll(out, []byte("\r"), nil)
	out = bytes.TrimLeft(out, "\n")
	if truncated {
		return "[output truncated]\n" + string(out)
	}
	return string(out)
}
