package shell_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/shell"
)

func start(t *testing.T, env ...string) *shell.Session {
	t.Helper()
	s, err := shell.Start(t.TempDir(), append([]string{"PATH=/usr/bin:/bin"}, env...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func run(t *testing.T, s *shell.Session, cmd string) (string, int) {
	t.Helper()
	out, code, err := s.Exec(context.Background(), cmd, 10*time.Second)
	if err != nil {
		t.Fatalf("%q: %v", cmd, err)
	}
	return out, code
}

// Output ends with the newline printed before the sentinel, and leading
// newlines are dropped, as the SDK's shell does (package sandboxd holds the
// two to the same answers).
func TestExecReturnsOutputAndStatus(t *testing.T) {
	s := start(t)
	for _, c := range []struct {
		cmd  string
		out  string
		code int
	}{
		{"echo hello", "hello\n\n", 0},
		{"echo out; echo err >&2", "out\nerr\n\n", 0},
		{"false", "", 1},
		{"(exit 42)", "", 42},
		{"printf 'no newline'", "no newline\n", 0},
		{"printf 'a\\r\\nb\\rc\\n'", "a\nbc\n\n", 0},
		{`printf '\033[31mred\033[0m\n'`, "red\n\n", 0},
		{"echo héllo wörld", "héllo wörld\n\n", 0},
		{"cat <<'EOF'\nline one\nline two\nEOF", "line one\nline two\n\n", 0},
		{"cat", "", 0}, // stdin is /dev/null: no wait on the terminal
		{"echo '__ANT_CMD_'deadbeef'_DONE__0'", "__ANT_CMD_deadbeef_DONE__0\n\n", 0},
	} {
		out, code := run(t, s, c.cmd)
		if out != c.out || code != c.code {
			t.Errorf("%q: got %q, %d; want %q, %d", c.cmd, out, code, c.out, c.code)
		}
	}
}

func TestStateLastsFromOneCommandToTheNext(t *testing.T) {
	s := start(t)
	dir := t.TempDir()
	run(t, s, "cd "+dir+" && export GREETING=hi && f() { echo fn; }")
	if out, _ := run(t, s, `pwd; echo "$GREETING"; f`); out != dir+"\nhi\nfn\n\n" {
		t.Errorf("got %q", out)
	}
}

func TestStartsWithExactlyTheGivenEnvironment(t *testing.T) {
	t.Setenv("PERIMETER_SHELL_TEST_LEAK", "leaked")
	dir := t.TempDir()
	s, err := shell.Start(dir, []string{"PATH=/usr/bin:/bin", "ONLY=this"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, _ := run(t, s, `echo "$ONLY|$PERIMETER_SHELL_TEST_LEAK|$TERM|$PS1|$HISTFILE"; pwd`)
	if out != "this||dumb||\n"+dir+"\n\n" {
		t.Errorf("got %q", out)
	}
}

func TestTheTerminalDoesNotEchoTheCommand(t *testing.T) {
	s := start(t)
	if out, _ := run(t, s, "true # a comment only an echo would show"); out != "" {
		t.Errorf("got %q", out)
	}
	// Nor does the line editor expand history.
	if out, _ := run(t, s, `echo "!!"`); out != "!!\n\n" {
		t.Errorf("got %q", out)
	}
}

// A command line longer than a terminal line (4095 bytes) typed right
// after the previous command ended, before bash is back in its line
// editor, runs whole, not cut at the terminal's limit.
func TestALongCommandLineRunsWhole(t *testing.T) {
	s := start(t)
	cmd := "echo " + strings.Repeat("y", 5000) + " | wc -c"
	for i := range 50 {
		if out, code := run(t, s, cmd); out != "5001\n\n" || code != 0 {
			t.Fatalf("call %d: got %d bytes ending %q, status %d; want %q", i+1, len(out), out[max(0, len(out)-20):], code, "5001\n\n")
		}
	}
}

func TestOutputIsCappedKeepingTheTail(t *testing.T) {
	s := start(t)
	out, code := run(t, s, "head -c 300000 /dev/zero | tr '\\0' a; echo; echo THE-END")
	if code != 0 || !strings.HasPrefix(out, "[output truncated]\n") || !strings.HasSuffix(out, "a\nTHE-END\n\n") {
		t.Fatalf("code %d, %d bytes: %.40q … %q", code, len(out), out, out[max(0, len(out)-20):])
	}
	if len(out) > shell.OutputLimit+len("[output truncated]\n") {
		t.Errorf("%d bytes, over the cap", len(out))
	}
	// The next command starts from an empty buffer.
	if out, _ := run(t, s, "echo small"); out != "small\n\n" {
		t.Errorf("after the cap: %q", out)
	}
}

func TestTimeoutReturnsWhatWasPrinted(t *testing.T) {
	s := start(t)
	out, code, err := s.Exec(context.Background(), "echo started; sleep 10", 300*time.Millisecond)
	if !errors.Is(err, shell.ErrTimedOut) || code != -1 || out != "started\n\n[timed out]" {
		t.Errorf("got %q, %d, %v", out, code, err)
	}
}

// A shell that stops reading cannot hold a long command's write for ever:
// the timeout ends it, and so does the context.
func TestAShellThatStopsReadingCannotHoldTheWrite(t *testing.T) {
	// The first lines end the group and stop the shell before it has read
	// the rest, more than the terminal holds.
	long := ":\n}\nkill -STOP $$\n{ : " + strings.Repeat("x", 256<<10)
	exec := func(ctx context.Context, timeout time.Duration) error {
		s := start(t)
		done := make(chan error, 1)
		go func() {
			_, _, err := s.Exec(ctx, long, timeout)
			done <- err
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(time.Minute):
			t.Fatal("Exec still writing a minute on")
			return nil
		}
	}
	if err := exec(context.Background(), 500*time.Millisecond); !errors.Is(err, shell.ErrTimedOut) {
		t.Errorf("with a timeout: %v, want ErrTimedOut", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	if err := exec(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

func TestCancelReturnsTheContextsError(t *testing.T) {
	s := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, _, err := s.Exec(ctx, "sleep 10", time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
}

func TestAShellThatExitsIsReportedTerminated(t *testing.T) {
	s := start(t)
	if _, _, err := s.Exec(context.Background(), "exit 3", 10*time.Second); !errors.Is(err, shell.ErrTerminated) {
		t.Errorf("got %v", err)
	}
}

// A shell that exits while something it started in a session of its own
// keeps the terminal open is reported as it exits, not at the timeout.
func TestAShellThatExitsLeavingTheTerminalHeldIsReportedTerminated(t *testing.T) {
	s := start(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	begin := time.Now()
	_, _, err := s.Exec(context.Background(), "setsid sh -c 'echo $$ >"+pidFile+"; exec sleep 60' & sleep 0.2; exit", 10*time.Second)
	if !errors.Is(err, shell.ErrTerminated) {
		t.Errorf("got %v, want %v", err, shell.ErrTerminated)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("reported after %v", d)
	}
}

func TestCloseKillsWhatTheShellStarted(t *testing.T) {
	s := start(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	run(t, s, "sleep 60 >/dev/null 2>&1 & echo $! >"+pidFile)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// Killed but not yet reaped by init shows as a zombie.
		if st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background process %d still runs after Close", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := s.Exec(context.Background(), "true", time.Second); err == nil {
		t.Error("Exec after Close succeeded")
	}
}

func TestStartFailsClearlyInAMissingDirectory(t *testing.T) {
	_, err := shell.Start(filepath.Join(t.TempDir(), "missing"), nil)
	if err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("got %v", err)
	}
}
