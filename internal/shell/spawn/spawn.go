// Package spawn starts the persistent shell's bash on a new
// pseudo-terminal. It imports little beyond os and syscall, so that a
// program can start the shell early in its initialisation ([Prestart]): Go
// initialises a package only once everything it imports is (importing
// strings alone moved the start from right after os to some 40 packages
// later). Package shell runs the commands.
package spawn

import (
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
)

// Setup is written to every shell as it starts: job-control notices would
// mix into the output, and the line editor's history expansion and
// completion would rewrite the commands. Its output ends with Ready, then
// its exit status and a newline, framed as package shell frames a command.
const (
	Ready = "__PERIMETER_SHELL_READY__"
	Setup = "{ set +m +H; bind 'set disable-completion on'\n} 2>&1; printf '\\n__PERIMETER_SHELL''_READY__%d\\n' $?\n"
)

// overrides are the variables Bash sets, whatever env says.
var overrides = []string{"PS1=", "PS2=", "TERM=", "HISTFILE="}

// Overridden reports whether Bash sets the variable name, whatever the
// environment it is given says.
func Overridden(name string) bool {
	return slices.Contains(overrides, name+"=")
}

// Proc is a started shell.
type Proc struct {
	PTY     *os.File // the terminal's controlling side: the shell's input and output
	Process *os.Process
	Dir     string // its first working directory
	exited  chan struct{}
}

// Exited is closed when the shell has exited. That is not when its
// terminal ends: a process it left behind in a session of its own can
// keep the terminal open.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Bash starts /bin/bash --noprofile --norc in dir with exactly env plus
// the variables that keep its output parseable (an empty prompt, a dumb
// terminal, no history file); its standard input, output and error are a
// new terminal whose echo is off, the controlling terminal of a session of
// its own. [Setup] is written to it at once.
func Bash(dir string, env []string) (*Proc, error) {
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return slices.ContainsFunc(overrides, func(o string) bool { return len(kv) >= len(o) && kv[:len(o)] == o })
	})
	env = append(env, "PS1=", "PS2=", "TERM=dumb", "HISTFILE=")
	p, err := start(dir, env)
	if err != nil {
		return nil, err
	}
	if _, err := p.PTY.WriteString(Setup); err != nil {
		p.Kill()
		return nil, startError{err}
	}
	return p, nil
}

// Kill kills the shell's process group, closes the terminal and reaps the
// shell.
func (p *Proc) Kill() {
	p.PTY.Close()
	killGroup(p.Process)
	_, _ = p.Process.Wait()
}

// early is the shell Prestart starts, until Adopt takes it.
var early struct {
	started chan struct{} // closed once the start has succeeded or failed; nil without Prestart
	mu      sync.Mutex
	p       *Proc
	base    []string // the environment it was started with, before Bash's additions
}

// Prestart starts a shell, in the background, in the process's working
// directory with the process's environment, for [Adopt] to hand over. It is
// for a process whose tools run in that directory with that environment
// (sandboxd, which the runtimes start in the workspace with the sandbox's
// environment), called early in its initialisation, so that the shell
// starts meanwhile. Call it at most once. A failure is not reported: Adopt
// then returns nil, and the caller starts a shell as it would have.
//
// Nothing sandboxd's main does before its tools start may change what a
// shell inherits, or the prestarted one would differ from one started
// later. Main handles SIGINT, SIGTERM and SIGPIPE, which resets them to
// the default in the processes it starts; a prestarted shell would keep
// them ignored if sandboxd was started with them ignored, so Prestart then
// starts nothing.
func Prestart() {
	if early.started != nil {
		return
	}
	early.started = make(chan struct{})
	if signal.Ignored(syscall.SIGINT) || signal.Ignored(syscall.SIGTERM) || signal.Ignored(syscall.SIGPIPE) {
		close(early.started)
		return
	}
	go func() {
		defer close(early.started)
		dir, err := os.Getwd()
		if err != nil {
			return
		}
		env := os.Environ()
		p, err := Bash(dir, env)
		if err != nil {
			return
		}
		early.mu.Lock()
		early.p, early.base = p, env
		early.mu.Unlock()
	}()
}

// Adopt returns the shell Prestart started if it was started in dir with
// exactly env (in any order), and otherwise nil, once the start has ended.
// A prestarted shell it does not return is killed; only one call can
// return it.
func Adopt(dir string, env []string) *Proc {
	if early.started == nil {
		return nil
	}
	<-early.started
	early.mu.Lock()
	p, base := early.p, early.base
	early.p, early.base = nil, nil
	early.mu.Unlock()
	if p == nil {
		return nil
	}
	if p.Dir == dir && sameSet(base, env) {
		return p
	}
	p.Kill()
	return nil
}

// PrestartedPID is the process id of the shell Prestart started, once the
// start has ended, while nobody has adopted it; otherwise 0. It is for
// diagnostics and tests.
func PrestartedPID() int {
	if early.started == nil {
		return 0
	}
	<-early.started
	early.mu.Lock()
	defer early.mu.Unlock()
	if early.p == nil {
		return 0
	}
	return early.p.Process.Pid
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// startError is a failure to start the shell, worded as the SDK's:
// "start bash pty: <cause>".
type startError struct{ err error }

func (e startError) Error() string { return "start bash pty: " + e.err.Error() }
func (e startError) Unwrap() error { return e.err }
