package process_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/sandbox/sandboxtest"
	"github.com/perimeterhq/perimeter/internal/testenv"
	"github.com/perimeterhq/perimeter/internal/toolset"
)

// binaryPackage is what the tests run as `<binary> sandboxd`: the real
// perimeter command, built once.
const binaryPackage = "github.com/perimeterhq/perimeter/cmd/perimeter"

// perimeterBin is the built binary.
var perimeterBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "perimeter-process-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	perimeterBin = filepath.Join(dir, "perimeter")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "the go tool is needed to build the perimeter binary:", err)
		return 1
	}
	build := exec.Command(goTool, "build", "-o", perimeterBin, binaryPackage)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", binaryPackage, err, out)
		return 1
	}
	return m.Run()
}

// newRuntime is a process runtime running the built binary; its log is
// printed only if the test fails.
func newRuntime(t *testing.T, opts process.Options) *process.Runtime {
	t.Helper()
	var buf testenv.Buffer
	t.Cleanup(func() {
		if t.Failed() && buf.Len() > 0 {
			t.Logf("runtime log:\n%s", buf.String())
		}
	})
	if opts.Binary == "" {
		opts.Binary = perimeterBin
	}
	opts.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return process.New(opts)
}

func TestProcessRuntimeConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, process.Options{}) })
}

func TestProcessRuntimeIsNamedProcess(t *testing.T) {
	if got := process.New(process.Options{}).Name(); got != "process" {
		t.Errorf("Name() = %q", got)
	}
}

func TestProcessWarningSaysNothingIsIsolated(t *testing.T) {
	for _, want := range []string{"NOT isolate", "development"} {
		if !strings.Contains(process.Warning, want) {
			t.Errorf("Warning does not mention %q: %s", want, process.Warning)
		}
	}
}

func create(t *testing.T, rt *process.Runtime, spec sandbox.Spec) *process.Sandbox {
	t.Helper()
	if spec.Workspace == "" {
		spec.Workspace = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = sb.Close(context.Background()) })
	return sb.(*process.Sandbox)
}

func exec1(t *testing.T, sb sandbox.Sandbox, tool, input string) (sandbox.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return sb.Exec(ctx, sandbox.Call{Tool: tool, Input: []byte(input)})
}

func TestProcessCreateMakesAMissingWorkspacePrivate(t *testing.T) {
	ws := filepath.Join(t.TempDir(), "sessions", "sesn_1")
	create(t, newRuntime(t, process.Options{}), sandbox.Spec{Workspace: ws})
	fi, err := os.Stat(ws)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("workspace mode = %v, want 0700", fi.Mode().Perm())
	}
}

func TestProcessSandboxReportsHowSandboxdDied(t *testing.T) {
	// exits7 answers the hello, takes one request and exits.
	exits7 := filepath.Join(t.TempDir(), "exits7")
	script := fmt.Sprintf("#!/bin/sh\necho '{\"hello\":{\"version\":%d,\"workdir\":\"/\",\"pid\":1}}'\nread -r line\nexit 7\n", sandbox.ProtocolVersion)
	if err := os.WriteFile(exits7, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		binary  string
		command string
		reason  string
	}{
		{"KilledBySIGKILL", "", "kill -KILL $PPID", "killed by signal SIGKILL"},
		{"ExitedWithAStatus", exits7, "true", "exit status 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := create(t, newRuntime(t, process.Options{Binary: tc.binary}), sandbox.Spec{})
			_, err := exec1(t, sb, "bash", fmt.Sprintf(`{"command":%q}`, tc.command))
			var exit *sandbox.ExitError
			if !errors.As(err, &exit) || exit.Reason != tc.reason || !exit.Sent {
				t.Fatalf("err = %v, want an ExitError{Reason: %q, Sent: true}", err, tc.reason)
			}
			_, err = exec1(t, sb, "bash", `{"command":"true"}`)
			if !errors.As(err, &exit) || exit.Reason != tc.reason || exit.Sent {
				t.Fatalf("next call: err = %v, want an ExitError{Reason: %q, Sent: false}", err, tc.reason)
			}
		})
	}
}

func TestProcessSandboxDeathReachesTheModelAsOneSafeSentence(t *testing.T) {
	sb := create(t, newRuntime(t, process.Options{}), sandbox.Spec{})
	bash := toolset.Builtin(sb)[0]
	if bash.Name() != "bash" {
		t.Fatalf("first builtin is %q", bash.Name())
	}
	_, err := bash.Execute(context.Background(), []byte(`{"command":"kill -9 $PPID"}`))
	const want = "sandbox failure: the sandbox exited (killed by signal SIGKILL) while running this call"
	if err == nil || err.Error() != want {
		t.Fatalf("the model would see %v, want %q", err, want)
	}
}

func TestProcessSandboxCloseKillsTheShellAndItsBackgroundJobs(t *testing.T) {
	sb := create(t, newRuntime(t, process.Options{}), sandbox.Spec{})
	res, err := exec1(t, sb, "bash", `{"command":"sleep 600 >/dev/null 2>&1 & echo \"pids $$ $!\""}`)
	if err != nil || res.IsError {
		t.Fatalf("bash: %+v, %v", res, err)
	}
	// Interactive bash also announces the job ("[1] 1234").
	_, after, _ := strings.Cut(res.Text, "pids ")
	fields := strings.Fields(after)
	if len(fields) != 2 {
		t.Fatalf("bash printed %q, want the shell's and the job's pids", res.Text)
	}
	pids := []int{sb.PID()}
	for _, f := range fields {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := sb.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
}

func TestProcessSandboxdStartsWithExactlyTheSpecEnvironment(t *testing.T) {
	t.Setenv("PERIMETER_CANARY_SECRET", "do-not-pass")
	sb := create(t, newRuntime(t, process.Options{}), sandbox.Spec{Env: map[string]string{"ONLY": "this"}})
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sb.PID()))
	testenv.Need(t, err == nil, fmt.Sprintf("sandboxd's environment to be readable (%v)", err))
	if got := string(bytes.TrimRight(environ, "\x00")); got != "ONLY=this" {
		t.Errorf("sandboxd's environment = %q, want exactly ONLY=this", got)
	}
}

func TestProcessSandboxWithNilEnvInheritsNothing(t *testing.T) {
	sb := create(t, newRuntime(t, process.Options{}), sandbox.Spec{Env: nil})
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sb.PID()))
	testenv.Need(t, err == nil, fmt.Sprintf("sandboxd's environment to be readable (%v)", err))
	if len(environ) != 0 {
		t.Errorf("sandboxd's environment = %q, want empty", environ)
	}
}

func TestProcessCreateFailsFastWhenSandboxdCannotStart(t *testing.T) {
	script := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'sandboxd: no such thing' >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, process.Options{Binary: script})
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: t.TempDir()})
	var exit *sandbox.ExitError
	if !errors.As(err, &exit) || exit.Reason != "exit status 3" {
		t.Fatalf("err = %v, want an ExitError with exit status 3", err)
	}
	if !strings.Contains(err.Error(), "sandboxd: no such thing") {
		t.Errorf("err = %v, want it to quote sandboxd's stderr", err)
	}
}

func TestProcessCreateGivesUpOnASilentSandboxd(t *testing.T) {
	script := filepath.Join(t.TempDir(), "silent")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 600\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, process.Options{Binary: script, StartTimeout: 200 * time.Millisecond})
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: t.TempDir()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a start timeout", err)
	}
}

func TestProcessCreateRejectsAGarbageHello(t *testing.T) {
	script := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'hello, world'\nexec sleep 600\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, process.Options{Binary: script})
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: t.TempDir()})
	if !errors.Is(err, sandbox.ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func TestProcessCloseDuringACallFailsItWithErrClosed(t *testing.T) {
	sb := create(t, newRuntime(t, process.Options{}), sandbox.Spec{})
	started := filepath.Join(t.TempDir(), "started")
	done := make(chan error, 1)
	go func() {
		_, err := exec1(t, sb, sandbox.ToolCommand, fmt.Sprintf(`{"command":"touch %s; sleep 600"}`, started))
		done <- err
	}()
	waitFor(t, func() bool { _, err := os.Stat(started); return err == nil }, "the command to start")
	if err := sb.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, sandbox.ErrClosed) {
		t.Errorf("in-flight call: err = %v, want ErrClosed", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits until pid is absent or a zombie.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) || errors.Is(err, os.ErrNotExist)
		}
		i := bytes.LastIndexByte(stat, ')')
		return i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
	}, fmt.Sprintf("process %d to be gone", pid))
}
