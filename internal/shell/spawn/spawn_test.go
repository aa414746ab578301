package spawn

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// prestarted runs Prestart and returns the shell it started, still there
// for Adopt to take.
func prestarted(t *testing.T) *Proc {
	t.Helper()
	Prestart()
	<-early.started
	early.mu.Lock()
	p := early.p
	early.mu.Unlock()
	if p == nil {
		t.Fatal("Prestart started no shell")
	}
	t.Cleanup(func() {
		if p := Adopt(p.Dir, early.base); p != nil {
			p.Kill()
		}
		early.started = nil
	})
	return p
}

// readUntil reads the shell's terminal until it has printed want.
func readUntil(t *testing.T, p *Proc, want string) string {
	t.Helper()
	var out bytes.Buffer
	buf := make([]byte, 4096)
	_ = p.PTY.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !bytes.Contains(out.Bytes(), []byte(want)) {
		n, err := p.PTY.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("reading the terminal: %v; got %q", err, out.String())
		}
	}
	return out.String()
}

func TestBashRunsSetupAndEchoesNothing(t *testing.T) {
	dir := t.TempDir()
	p, err := Bash(dir, []string{"PATH=/usr/bin:/bin", "MARK=m"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if out := readUntil(t, p, Ready); bytes.Contains([]byte(out), []byte("bind")) {
		t.Errorf("the set-up's text came back (echo on?): %q", out)
	}
	if _, err := p.PTY.WriteString("echo \"$MARK|$TERM|$(pwd)|$-\"\n"); err != nil {
		t.Fatal(err)
	}
	out := readUntil(t, p, "\n")
	if want := "m|dumb|" + dir + "|"; !bytes.Contains([]byte(out), []byte(want)) || bytes.Contains([]byte(out), []byte("echo")) {
		t.Errorf("got %q, want it to hold %q and no echo", out, want)
	}
	// An interactive shell, as on the SDK's terminal; job control off.
	if !bytes.Contains([]byte(out), []byte("i")) || bytes.ContainsAny([]byte(out[bytes.LastIndexByte([]byte(out), '|'):]), "mH") {
		t.Errorf("shell flags: %q", out)
	}
}

func TestAdoptHandsOverTheShellStartedHereWithThisEnvironment(t *testing.T) {
	p := prestarted(t)
	wd, _ := os.Getwd()
	if p.Dir != wd {
		t.Errorf("started in %q, want the working directory %q", p.Dir, wd)
	}
	reordered := append([]string{}, os.Environ()...)
	for i, j := 0, len(reordered)-1; i < j; i, j = i+1, j-1 {
		reordered[i], reordered[j] = reordered[j], reordered[i]
	}
	if got := Adopt(wd, reordered); got != p {
		t.Fatalf("Adopt = %v, want the prestarted shell", got)
	}
	defer p.Kill()
	if again := Adopt(wd, os.Environ()); again != nil {
		t.Errorf("a second Adopt returned a shell")
	}
	readUntil(t, p, Ready)
}

func TestAdoptKillsAShellThatDoesNotFit(t *testing.T) {
	wd, _ := os.Getwd()
	for name, adopt := range map[string]func() *Proc{
		"another directory":   func() *Proc { return Adopt(os.TempDir(), os.Environ()) },
		"another environment": func() *Proc { return Adopt(wd, append(os.Environ(), "EXTRA=1")) },
		"fewer variables":     func() *Proc { return Adopt(wd, os.Environ()[1:]) },
	} {
		t.Run(name, func(t *testing.T) {
			p := prestarted(t)
			if got := adopt(); got != nil {
				got.Kill()
				t.Fatalf("adopted a shell started elsewhere")
			}
			// Killed and reaped: the pid is gone.
			if err := syscall.Kill(p.Process.Pid, 0); err != syscall.ESRCH {
				t.Errorf("the prestarted shell %d: kill 0 = %v, want ESRCH", p.Process.Pid, err)
			}
		})
	}
}

func TestAdoptWithoutPrestartIsNil(t *testing.T) {
	if p := Adopt("/", os.Environ()); p != nil {
		p.Kill()
		t.Error("Adopt returned a shell nobody started")
	}
}

func TestBashFailsClearlyInAMissingDirectory(t *testing.T) {
	p, err := Bash("/nonexistent-dir", nil)
	if err == nil {
		p.Kill()
		t.Fatal("started")
	}
	// Worded as the SDK's: the bash tool shows it to the model.
	if !errors.Is(err, fs.ErrNotExist) || err.Error() != "start bash pty: fork/exec /bin/bash: no such file or directory" {
		t.Errorf("got %v", err)
	}
}

func TestPrestartedPIDIsTheShellUntilAdopted(t *testing.T) {
	p := prestarted(t)
	if got := PrestartedPID(); got != p.Process.Pid {
		t.Fatalf("PrestartedPID = %d, want %d", got, p.Process.Pid)
	}
	wd, _ := os.Getwd()
	if Adopt(wd, os.Environ()) != p {
		t.Fatal("not adopted")
	}
	defer p.Kill()
	if got := PrestartedPID(); got != 0 {
		t.Errorf("PrestartedPID after Adopt = %d, want 0", got)
	}
}

func TestPrestartStartsNothingWhenASignalMainHandlesIsIgnored(t *testing.T) {
	// A shell started now would keep it ignored; one started after main
	// has handled it gets the default (see Prestart).
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE} {
		t.Run(sig.String(), func(t *testing.T) {
			signal.Ignore(sig)
			defer func() {
				// Reset alone leaves the signal reported ignored;
				// Notify clears that.
				c := make(chan os.Signal, 1)
				signal.Notify(c, sig)
				signal.Reset(sig)
			}()
			Prestart()
			defer func() { early.started = nil }()
			if pid := PrestartedPID(); pid != 0 {
				wd, _ := os.Getwd()
				if p := Adopt(wd, os.Environ()); p != nil {
					p.Kill()
				}
				t.Fatalf("started shell %d with %v ignored", pid, sig)
			}
		})
	}
}

func TestASecondPrestartKeepsTheFirstShell(t *testing.T) {
	p := prestarted(t)
	Prestart()
	if got := PrestartedPID(); got != p.Process.Pid {
		t.Errorf("after a second Prestart, PrestartedPID = %d, want the first shell's %d", got, p.Process.Pid)
	}
}
