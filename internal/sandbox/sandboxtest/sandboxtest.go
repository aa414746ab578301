// Package sandboxtest is the conformance suite every sandbox backend runs,
// so each is held to the same behaviour:
//
//	func TestDockerRuntimeConformance(t *testing.T) {
//		sandboxtest.Run(t, func(t *testing.T) sandbox.Runtime { return docker.New(…) })
//	}
//
// The suite drives sandboxes only through sandbox.Runtime and
// sandbox.Sandbox, plus the files of Spec.Workspace on the host. A sandbox
// that also has a `PID() int` method (sandboxd's pid on the host, as in the
// process runtime) is additionally checked from outside: killed with
// SIGKILL, and proven gone after Close.
package sandboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// callTimeout turns a hung call into a test failure instead of a hung test.
const callTimeout = 60 * time.Second

// outputLimit is the 100 KiB cap on a command's output.
const outputLimit = 100 * 1024

// shellVars are the variables a shell adds to its own environment (bash
// and sh bookkeeping, and the SDK bash tool's fixed PS1/PS2/TERM/HISTFILE);
// any other variable in the sandbox must come from Spec.Env.
var shellVars = map[string]bool{
	"PWD": true, "OLDPWD": true, "SHLVL": true, "_": true,
	"PS1": true, "PS2": true, "TERM": true, "HISTFILE": true,
	"LINES": true, "COLUMNS": true,
}

// hostPID is implemented by sandboxes whose sandboxd (or, under gVisor, the
// sandbox holding it) the test can see as a host process.
type hostPID interface{ PID() int }

// Run runs the conformance suite against the runtimes newRuntime returns.
// It is called once per subtest; each subtest creates its own sandboxes.
// Subtests do not run in parallel (one of them plants a canary in the test
// process's environment).
func Run(t *testing.T, newRuntime func(t *testing.T) sandbox.Runtime) {
	t.Run("ToolsWorkInTheWorkspace", func(t *testing.T) { testToolsWork(t, newRuntime(t)) })
	t.Run("RefusesPathsOutsideTheWorkspace", func(t *testing.T) { testRefusesOutside(t, newRuntime(t)) })
	t.Run("ReportsNonZeroExitAsAToolError", func(t *testing.T) { testNonZeroExit(t, newRuntime(t)) })
	t.Run("TruncatesOutputOver100KiBKeepingTheTail", func(t *testing.T) { testTruncates(t, newRuntime(t)) })
	t.Run("MalformedInputIsAToolError", func(t *testing.T) { testMalformedInput(t, newRuntime(t)) })
	t.Run("UnknownToolIsAProtocolError", func(t *testing.T) { testUnknownTool(t, newRuntime(t)) })
	t.Run("CommandToolPassesStdin", func(t *testing.T) { testCommandStdin(t, newRuntime(t)) })
	t.Run("CancelStopsAHangingCallAndTheNextCallWorks", func(t *testing.T) { testCancel(t, newRuntime(t)) })
	t.Run("EnvironmentIsExactlyTheAllowList", func(t *testing.T) { testEnvironment(t, newRuntime(t)) })
	t.Run("SandboxdKilledFromInsideFailsCallsWithErrExited", func(t *testing.T) { testKilledFromInside(t, newRuntime(t)) })
	t.Run("SandboxdKilledFromOutsideFailsCallsWithErrExited", func(t *testing.T) { testKilledFromOutside(t, newRuntime(t)) })
	t.Run("CloseIsIdempotentAndLeavesNoProcess", func(t *testing.T) { testClose(t, newRuntime(t)) })
	t.Run("ConcurrentSandboxesDoNotSeeEachOthersFiles", func(t *testing.T) { testIsolatedWorkspaces(t, newRuntime(t)) })
}

// box is a sandbox under test with the spec it was created from.
type box struct {
	sandbox.Sandbox
	spec sandbox.Spec
}

// AllowList is the environment the suites give sandboxes, as a worker's
// allow-list would.
func AllowList() map[string]string {
	return map[string]string{
		"PATH":                  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG":                  "C.UTF-8",
		"PERIMETER_ALLOWED_VAR": "allowed-value",
	}
}

// create starts a sandbox on a fresh workspace; it is closed when the test ends.
func create(t *testing.T, rt sandbox.Runtime) *box {
	t.Helper()
	spec := sandbox.Spec{
		SessionID: "sesn_conformance_" + randomHex(4),
		WorkID:    "work_conformance_" + randomHex(4),
		Workspace: t.TempDir(),
		Env:       AllowList(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("%s: Create: %v", rt.Name(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := sb.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &box{Sandbox: sb, spec: spec}
}

// exec runs one call with a deadline that turns a hang into a failure.
func (b *box) exec(tool string, input any) (sandbox.Result, error) {
	raw, err := json.Marshal(input)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return b.Exec(ctx, sandbox.Call{Tool: tool, Input: raw})
}

// run is exec for a call that must complete (as a success or a tool error).
func (b *box) run(t *testing.T, tool string, input any) sandbox.Result {
	t.Helper()
	res, err := b.exec(tool, input)
	if err != nil {
		t.Fatalf("%s %v: %v", tool, input, err)
	}
	return res
}

// ok is run for a call that must succeed.
func (b *box) ok(t *testing.T, tool string, input any) string {
	t.Helper()
	res := b.run(t, tool, input)
	if res.IsError {
		t.Fatalf("%s %v: unexpected tool error: %s", tool, input, res.Text)
	}
	return res.Text
}

func bash(command string) map[string]any { return map[string]any{"command": command} }

func command(cmd, stdin string) map[string]any {
	return map[string]any{"command": cmd, "stdin": stdin}
}

func testToolsWork(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	host := func(rel string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(b.spec.Workspace, rel))
		if err != nil {
			t.Fatalf("on the host: %v", err)
		}
		return string(data)
	}
	// The steps share one sandbox and run in order; each is a spec of one tool.
	steps := []struct {
		name  string
		tool  string
		input any
		check func(t *testing.T, out string)
	}{
		{"WriteCreatesTheFileInTheWorkspace", "write", map[string]any{"file_path": "notes/a.txt", "content": "hello\nworld\n"},
			func(t *testing.T, out string) {
				if got := host("notes/a.txt"); got != "hello\nworld\n" {
					t.Errorf("host file = %q", got)
				}
			}},
		{"ReadReturnsTheContent", "read", map[string]any{"file_path": "notes/a.txt"},
			func(t *testing.T, out string) { wantContains(t, out, "hello", "world") }},
		{"EditReplacesTheText", "edit", map[string]any{"file_path": "notes/a.txt", "old_string": "world", "new_string": "there"},
			func(t *testing.T, out string) {
				if got := host("notes/a.txt"); got != "hello\nthere\n" {
					t.Errorf("host file = %q", got)
				}
			}},
		{"GlobFindsTheFile", "glob", map[string]any{"pattern": "**/*.txt"},
			func(t *testing.T, out string) { wantContains(t, out, filepath.Join("notes", "a.txt")) }},
		{"GrepFindsTheLine", "grep", map[string]any{"pattern": "the[r]e"},
			func(t *testing.T, out string) { wantContains(t, out, "a.txt", "there") }},
		{"BashRunsInTheWorkspace", "bash", bash("cat notes/a.txt"),
			func(t *testing.T, out string) { wantContains(t, out, "hello\nthere") }},
		{"BashKeepsStateBetweenCalls", "bash", bash("export PERIMETER_STEP=kept; cd notes"), nil},
		{"BashSeesTheKeptState", "bash", bash(`echo "$PERIMETER_STEP"; ls`),
			func(t *testing.T, out string) { wantContains(t, out, "kept", "a.txt") }},
		{"CommandRunsInTheWorkspace", sandbox.ToolCommand, command("cat notes/a.txt", ""),
			func(t *testing.T, out string) {
				if out != "hello\nthere\n" {
					t.Errorf("output = %q, want the file", out)
				}
			}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			out := b.ok(t, s.tool, s.input)
			if s.check != nil {
				s.check(t, out)
			}
		})
	}
}

func testRefusesOutside(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	if err := os.Symlink("/etc/passwd", filepath.Join(b.spec.Workspace, "link-out")); err != nil {
		t.Fatal(err)
	}
	const refusal = "is outside the session's working directory"
	tests := []struct {
		name  string
		tool  string
		input map[string]any
	}{
		{"ReadOfEtcPasswd", "read", map[string]any{"file_path": "/etc/passwd"}},
		{"ReadThroughASymlinkLeavingTheWorkspace", "read", map[string]any{"file_path": "link-out"}},
		{"WriteToParentDirectory", "write", map[string]any{"file_path": "../escape.txt", "content": "x"}},
		{"EditOfEtcPasswd", "edit", map[string]any{"file_path": "/etc/passwd", "old_string": "root", "new_string": "toor"}},
		{"GlobOfParentDirectory", "glob", map[string]any{"pattern": "*", "path": ".."}},
		{"GrepOfEtc", "grep", map[string]any{"pattern": "root", "path": "/etc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := b.run(t, tc.tool, tc.input)
			if !res.IsError || !strings.Contains(res.Text, refusal) {
				t.Fatalf("result = %+v, want an is_error result saying the path %s", res, refusal)
			}
			if strings.Contains(res.Text, "root:") {
				t.Errorf("refusal leaks file content: %q", res.Text)
			}
			if strings.Contains(res.Text, b.spec.Workspace) {
				t.Errorf("refusal names the host workspace path: %q", res.Text)
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(b.spec.Workspace), "escape.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("../escape.txt exists next to the workspace (err = %v)", err)
	}
}

func testNonZeroExit(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	tests := []struct {
		name  string
		tool  string
		input any
		want  string
	}{
		{"Bash", "bash", bash("echo before; sh -c 'exit 3'"), "exit code: 3"},
		{"Command", sandbox.ToolCommand, command("echo before; exit 4", ""), "exit code: 4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := b.run(t, tc.tool, tc.input)
			if !res.IsError || !strings.HasPrefix(res.Text, "before\n") || !strings.HasSuffix(res.Text, "\n"+tc.want) {
				t.Errorf("result = %+v, want is_error with the output, then %q", res, tc.want)
			}
		})
	}
	t.Run("BashStillWorksAfterwards", func(t *testing.T) {
		if out := b.ok(t, "bash", bash("echo fine")); strings.TrimSpace(out) != "fine" {
			t.Errorf("output = %q", out)
		}
	})
}

func testTruncates(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	const script = `head -c 300000 /dev/zero | tr '\0' x; echo; echo END-OF-OUTPUT`
	for _, tc := range []struct{ name, tool string }{{"Bash", "bash"}, {"Command", sandbox.ToolCommand}} {
		t.Run(tc.name, func(t *testing.T) {
			input := any(bash(script))
			if tc.tool == sandbox.ToolCommand {
				input = command(script, "")
			}
			out := b.ok(t, tc.tool, input)
			if !strings.HasPrefix(out, "[output truncated]") {
				t.Errorf("output starts %q, want the [output truncated] prefix", clip(out, 40))
			}
			if !strings.Contains(out, "END-OF-OUTPUT") {
				t.Errorf("output lost its tail: ends %q", out[max(0, len(out)-40):])
			}
			if len(out) > outputLimit+len("[output truncated]\n") {
				t.Errorf("output is %d bytes, over the %d-byte cap", len(out), outputLimit)
			}
		})
	}
}

func testMalformedInput(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	for _, tool := range []string{"bash", "read", "write", "edit", "glob", "grep", sandbox.ToolCommand} {
		t.Run(tool, func(t *testing.T) {
			res := b.run(t, tool, "an input that is not an object")
			if !res.IsError {
				t.Errorf("result = %+v, want a tool error", res)
			}
		})
	}
}

func testUnknownTool(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	_, err := b.exec("no-such-tool", map[string]any{})
	if !errors.Is(err, sandbox.ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
	if out := b.ok(t, "bash", bash("echo still-here")); !strings.Contains(out, "still-here") {
		t.Errorf("next call output = %q", out)
	}
}

func testCommandStdin(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	const input = `{"query":"a b","n":2}`
	tests := []struct{ name, cmd, stdin, want string }{
		{"CatEchoesStdin", "cat", input, input},
		{"StdinIsCounted", "wc -c | tr -d ' '", input, fmt.Sprint(len(input)) + "\n"},
		{"EmptyStdinIsEOF", "cat; echo done", "", "done\n"},
		{"StderrIsMerged", "echo out; echo err >&2", "", "out\nerr\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if out := b.ok(t, sandbox.ToolCommand, command(tc.cmd, tc.stdin)); out != tc.want {
				t.Errorf("output = %q, want %q", out, tc.want)
			}
		})
	}
}

func testCancel(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	tests := []struct {
		name  string
		tool  string
		input any
		next  func(t *testing.T, before string)
	}{
		{"BashRestartsTheShell", "bash", bash("echo $$ > .shell-pid; touch .started; sleep 600"),
			func(t *testing.T, before string) {
				out := strings.TrimSpace(b.ok(t, "bash", bash("echo $$")))
				if out == "" || out == strings.TrimSpace(before) {
					t.Errorf("shell pid after cancel = %q, before = %q: want a new shell", out, before)
				}
			}},
		{"Command", sandbox.ToolCommand, command("touch .started; sleep 600", ""),
			func(t *testing.T, _ string) {
				if out := b.ok(t, sandbox.ToolCommand, command("echo next", "")); out != "next\n" {
					t.Errorf("next output = %q", out)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			started := filepath.Join(b.spec.Workspace, ".started")
			_ = os.Remove(started)
			raw, _ := json.Marshal(tc.input)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := b.Exec(ctx, sandbox.Call{Tool: tc.tool, Input: raw})
				done <- err
			}()
			waitFor(t, func() bool { _, err := os.Stat(started); return err == nil }, "the command to start")
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("err = %v, want context.Canceled", err)
				}
			case <-time.After(callTimeout):
				t.Fatalf("Exec did not return within %s of its context ending", callTimeout)
			}
			before, _ := os.ReadFile(filepath.Join(b.spec.Workspace, ".shell-pid"))
			tc.next(t, string(before))
		})
	}
}

func testEnvironment(t *testing.T, rt sandbox.Runtime) {
	canary := "canary-" + randomHex(16)
	t.Setenv("PERIMETER_CANARY_SECRET", canary)
	b := create(t, rt)
	allowed := AllowList()

	hasProc := strings.TrimSpace(b.ok(t, "bash", bash("test -r /proc/self/environ && echo yes || echo no"))) == "yes"
	// A launcher may start sandboxd with PWD set to its working directory
	// (bwrap does, as a shell would); that tells the sandbox nothing.
	workdir := strings.TrimSpace(b.ok(t, "bash", bash("pwd")))
	tests := []struct {
		name  string
		tool  string
		input any
		// exact: every variable must be from the allow-list (else also
		// shell bookkeeping is tolerated).
		exact bool
		proc  bool
	}{
		{"BashEnv", "bash", bash("env"), false, false},
		{"BashProcSelfEnviron", "bash", bash(`cat /proc/self/environ | tr '\0' '\n'`), false, true},
		{"SandboxdEnvironSeenFromBash", "bash", bash(`tr '\0' '\n' < /proc/$PPID/environ`), true, true},
		{"CommandEnv", sandbox.ToolCommand, command("env", ""), false, false},
		{"SandboxdEnvironSeenFromCommand", sandbox.ToolCommand, command(`tr '\0' '\n' < /proc/$PPID/environ`, ""), true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.proc {
				testenv.Need(t, hasProc, "/proc/self/environ readable in the sandbox")
			}
			out := b.ok(t, tc.tool, tc.input)
			if strings.Contains(out, canary) || strings.Contains(out, "PERIMETER_CANARY_SECRET") {
				t.Fatalf("the canary from the test process's environment is visible in the sandbox:\n%s", out)
			}
			got := parseEnv(out)
			for k, v := range allowed {
				if got[k] != v {
					t.Errorf("%s = %q, want %q (allow-listed)", k, got[k], v)
				}
			}
			for k := range got {
				if _, ok := allowed[k]; ok || (!tc.exact && shellVars[k]) || (k == "PWD" && got[k] == workdir) {
					continue
				}
				t.Errorf("variable %s is not on the allow-list", k)
			}
		})
	}
}

// parseEnv reads NAME=value lines; lines without '=' continue a multi-line
// value and are ignored.
func parseEnv(out string) map[string]string {
	env := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" && !strings.ContainsAny(k, " \t") {
			env[k] = v
		}
	}
	return env
}

func testKilledFromInside(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	b.ok(t, "bash", bash("echo warm"))
	_, err := b.exec("bash", bash("kill -9 $PPID"))
	var exit *sandbox.ExitError
	if !errors.Is(err, sandbox.ErrExited) {
		t.Fatalf("call that killed sandboxd: err = %v, want ErrExited", err)
	}
	if errors.As(err, &exit) && !exit.Sent {
		t.Errorf("call that killed sandboxd: ExitError.Sent = false, want true")
	}
	t.Logf("call that killed sandboxd: %v", err)
	wantExited(t, b)
}

func testKilledFromOutside(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	p, ok := b.Sandbox.(hostPID)
	testenv.Need(t, ok, rt.Name()+" sandboxes to expose sandboxd's host pid (killing from inside is covered above)")
	b.ok(t, "bash", bash("echo warm"))
	pid := p.PID()
	if pid <= 0 {
		t.Fatalf("%s reports host pid %d for a live sandbox", rt.Name(), pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wantExited(t, b)
}

// wantExited checks that calls to a sandbox whose sandboxd died fail with
// ErrExited and that Close still works. The first call may have been
// written to sandboxd's channel before its death was noticed; the later
// ones must say they did not run.
func wantExited(t *testing.T, b *box) {
	t.Helper()
	for i := range 3 {
		_, err := b.exec("bash", bash("echo unreachable"))
		if !errors.Is(err, sandbox.ErrExited) {
			t.Fatalf("call %d after sandboxd died: err = %v, want ErrExited", i+1, err)
		}
		var exit *sandbox.ExitError
		if i > 0 && errors.As(err, &exit) && exit.Sent {
			t.Errorf("call %d after sandboxd died: ExitError.Sent = true, want false (it never reached sandboxd)", i+1)
		}
	}
	closeTwice(t, b)
}

func testClose(t *testing.T, rt sandbox.Runtime) {
	b := create(t, rt)
	b.ok(t, "bash", bash("sleep 600 &"))
	pid := 0
	if p, ok := b.Sandbox.(hostPID); ok {
		pid = p.PID() // asked before Close: afterwards there is nothing to ask
	}
	closeTwice(t, b)
	if _, err := b.exec("bash", bash("echo after-close")); !errors.Is(err, sandbox.ErrClosed) {
		t.Errorf("Exec after Close: err = %v, want ErrClosed", err)
	}
	if pid > 0 {
		waitGone(t, pid)
	}
}

func closeTwice(t *testing.T, b *box) {
	t.Helper()
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := b.Close(ctx)
		cancel()
		if err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
}

func testIsolatedWorkspaces(t *testing.T, rt sandbox.Runtime) {
	boxes := []*box{create(t, rt), create(t, rt)}
	secrets := []string{"secret-a-" + randomHex(8), "secret-b-" + randomHex(8)}
	var wg sync.WaitGroup
	errs := make([]error, len(boxes))
	for i, b := range boxes {
		wg.Go(func() {
			for range 5 {
				if _, err := b.exec("write", map[string]any{"file_path": fmt.Sprintf("mine-%d.txt", i), "content": secrets[i]}); err != nil {
					errs[i] = err
					return
				}
				res, err := b.exec("read", map[string]any{"file_path": fmt.Sprintf("mine-%d.txt", i)})
				if err != nil || res.Text != secrets[i] {
					errs[i] = fmt.Errorf("read back %+v, %v; want %q", res, err, secrets[i])
					return
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("sandbox %d: %v", i, err)
		}
	}
	for i, b := range boxes {
		other := 1 - i
		otherFile := fmt.Sprintf("mine-%d.txt", other)
		t.Run(fmt.Sprintf("Sandbox%dCannotSeeSandbox%d", i, other), func(t *testing.T) {
			// A read must fail; a listing must not name the file. Neither
			// may show the other sandbox's content.
			checks := []struct {
				name   string
				tool   string
				input  any
				isRead bool
			}{
				{"ReadByName", "read", map[string]any{"file_path": otherFile}, true},
				{"ReadByHostPath", "read", map[string]any{"file_path": filepath.Join(boxes[other].spec.Workspace, otherFile)}, true},
				{"Glob", "glob", map[string]any{"pattern": "**/*"}, false},
				{"Grep", "grep", map[string]any{"pattern": "secret"}, false},
				{"BashLs", "bash", bash("ls -a"), false},
			}
			for _, c := range checks {
				res := b.run(t, c.tool, c.input)
				switch {
				case strings.Contains(res.Text, secrets[other]):
					t.Errorf("%s: sees the other sandbox's content: %q", c.name, res.Text)
				case c.isRead && !res.IsError:
					t.Errorf("%s: read the other sandbox's file: %+v", c.name, res)
				case !c.isRead && strings.Contains(res.Text, otherFile):
					t.Errorf("%s: lists the other sandbox's file: %q", c.name, res.Text)
				}
			}
		})
	}
}

// waitFor polls cond until it holds; what names what is awaited.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(callTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits for pid to be gone. A process killed with SIGKILL takes a
// moment to die and, once its parent is gone, to be reaped by init.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, func() bool { return processGone(pid) }, fmt.Sprintf("process %d to be gone", pid))
}

// processGone reports whether pid no longer runs: absent, or a zombie
// waiting to be reaped.
func processGone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		// pid (comm) S …: the state follows the last ')'.
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
			return slices.Contains([]byte{'Z', 'X'}, stat[i+2])
		}
		return false
	}
	if _, statErr := os.Stat("/proc/self/stat"); statErr == nil {
		return errors.Is(err, os.ErrNotExist)
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func wantContains(t *testing.T, out string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(out, s) {
			t.Errorf("output %q does not contain %q", clip(out, 500), s)
		}
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
