package sandboxd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandboxd"
	"github.com/perimeterhq/perimeter/internal/shell/spawn"
)

// server is a Serve running in the test process, spoken to over pipes.
type server struct {
	workdir string
	in      *io.PipeWriter // requests
	out     *bufio.Reader  // responses
	outR    *io.PipeReader
	done    chan error // Serve's result
	cancel  context.CancelFunc
}

func start(t *testing.T, opts sandboxd.Options) *server {
	t.Helper()
	if opts.Workdir == "" {
		opts.Workdir = t.TempDir()
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{workdir: opts.Workdir, in: inW, out: bufio.NewReader(outR), outR: outR, done: make(chan error, 1), cancel: cancel}
	go func() {
		err := sandboxd.Serve(ctx, inR, outW, opts)
		_ = outW.Close()
		s.done <- err
	}()
	t.Cleanup(func() {
		_ = inW.Close()
		_ = outR.Close()
		cancel()
		if err := <-s.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func (s *server) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(s.in, line+"\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
}

func (s *server) exec(t *testing.T, id int, tool string, input any) {
	t.Helper()
	raw, err := json.Marshal(sandbox.Request{ID: uint64(id), Exec: &sandbox.Call{Tool: tool, Input: mustJSON(input)}})
	if err != nil {
		t.Fatal(err)
	}
	s.send(t, string(raw))
}

func (s *server) readLine(t *testing.T) string {
	t.Helper()
	type read struct {
		line string
		err  error
	}
	ch := make(chan read, 1)
	go func() {
		line, err := s.out.ReadString('\n')
		ch <- read{line, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read response: %v", r.err)
		}
		return strings.TrimSuffix(r.line, "\n")
	case <-time.After(30 * time.Second):
		t.Fatal("no response within 30s")
		return ""
	}
}

func (s *server) response(t *testing.T) sandbox.Response {
	t.Helper()
	line := s.readLine(t)
	var r sandbox.Response
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	return r
}

func (s *server) hello(t *testing.T) sandbox.Hello {
	t.Helper()
	var h sandbox.HelloLine
	line := s.readLine(t)
	if err := json.Unmarshal([]byte(line), &h); err != nil || h.Hello == nil {
		t.Fatalf("first line %q is not a hello (%v)", line, err)
	}
	return *h.Hello
}

// waitForOpen waits until this process has path open.
func waitForOpen(t *testing.T, path string) {
	t.Helper()
	waitUntil(t, path+" was never opened", func() bool {
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == path {
				return true
			}
		}
		return false
	})
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func result(id int, text string, isError bool) sandbox.Response {
	return sandbox.Response{ID: uint64(id), Result: &sandbox.Result{Text: text, IsError: isError}}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	waitUntil(t, path+" never appeared", func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
}

// waitUntil polls ok for up to 30s, then fails with what.
func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestServeSaysHelloFirst(t *testing.T) {
	s := start(t, sandboxd.Options{})
	want := sandbox.Hello{Version: sandbox.ProtocolVersion, Workdir: s.workdir, PID: os.Getpid()}
	if diff := cmp.Diff(want, s.hello(t)); diff != "" {
		t.Errorf("hello (-want +got):\n%s", diff)
	}
}

func TestServeAnswersMalformedRequestsAndCarriesOn(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	tests := []struct {
		name string
		line string
		want sandbox.Response
	}{
		{"NotJSON", `{"id":`, sandbox.Response{ID: 0}},
		{"IDZero", `{"id":0,"exec":{"tool":"bash","input":{}}}`, sandbox.Response{ID: 0}},
		{"NeitherExecNorCancel", `{"id":4}`, sandbox.Response{ID: 4}},
		{"BothExecAndCancel", `{"id":5,"exec":{"tool":"bash","input":{}},"cancel":1}`, sandbox.Response{ID: 5}},
		{"UnknownTool", `{"id":6,"exec":{"tool":"web_fetch","input":{}}}`, sandbox.Response{ID: 6}},
		{"LineOver16MiB", `{"id":7,"exec":{"tool":"write","input":{"file_path":"big","content":"` + strings.Repeat("x", sandbox.MaxLineBytes) + `"}}}`, sandbox.Response{ID: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.send(t, tc.line)
			got := s.response(t)
			if got.ID != tc.want.ID || got.Error == "" || got.Result != nil {
				t.Errorf("response = %+v, want an error response with id %d", got, tc.want.ID)
			}
			s.exec(t, 100, sandbox.ToolCommand, map[string]string{"command": "echo alive"})
			if diff := cmp.Diff(result(100, "alive\n", false), s.response(t)); diff != "" {
				t.Errorf("next request (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(s.workdir, "big")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused oversize write ran (stat err = %v)", err)
	}
}

// An answer that would be over the RPC's line limit once encoded is
// replaced by an error saying so; the supervisor would otherwise take the
// sandbox for broken.
func TestServeKeepsAnOversizeAnswerWithinTheLineLimit(t *testing.T) {
	s := start(t, sandboxd.Options{MaxFileBytes: 4 << 20})
	s.hello(t)
	// Control characters are escaped six-fold in JSON: 3 MiB of them
	// encode to 18 MiB.
	if err := os.WriteFile(filepath.Join(s.workdir, "ctl"), bytes.Repeat([]byte{1}, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	s.exec(t, 1, "read", map[string]string{"file_path": "ctl"})
	line := s.readLine(t)
	if len(line) > sandbox.MaxLineBytes {
		t.Fatalf("an answer of %d bytes, over the %d limit", len(line), sandbox.MaxLineBytes)
	}
	var got sandbox.Response
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != 1 || got.Result == nil || !got.Result.IsError || !strings.Contains(got.Result.Text, "over the 16777216 bytes") {
		t.Errorf("answer = %.300s", line)
	}
	s.exec(t, 2, sandbox.ToolCommand, map[string]string{"command": "echo alive"})
	if diff := cmp.Diff(result(2, "alive\n", false), s.response(t)); diff != "" {
		t.Errorf("next call (-want +got):\n%s", diff)
	}
}

func TestServeRunsRequestsOneAtATimeInArrivalOrder(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	for i := 1; i <= 5; i++ {
		// Earlier requests sleep longer: were they concurrent, the file
		// would list them out of order.
		s.exec(t, i, sandbox.ToolCommand, map[string]string{"command": fmt.Sprintf("sleep 0.0%d; echo %d >> order", 6-i, i)})
	}
	for i := 1; i <= 5; i++ {
		if got := s.response(t); got.ID != uint64(i) || got.Result == nil || got.Result.IsError {
			t.Fatalf("response %d = %+v", i, got)
		}
	}
	got, _ := os.ReadFile(filepath.Join(s.workdir, "order"))
	if string(got) != "1\n2\n3\n4\n5\n" {
		t.Errorf("order = %q", got)
	}
}

func TestServeCancelStopsTheRunningCall(t *testing.T) {
	tests := []struct {
		name  string
		tool  string
		input map[string]string
	}{
		{"Bash", "bash", map[string]string{"command": "touch started; sleep 600"}},
		{"Command", sandbox.ToolCommand, map[string]string{"command": "touch started; sleep 600"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, sandboxd.Options{})
			s.hello(t)
			s.exec(t, 1, tc.tool, tc.input)
			waitForFile(t, filepath.Join(s.workdir, "started"))
			s.send(t, `{"id":2,"cancel":1}`)
			if got := s.response(t); got.ID != 1 || got.Result == nil || !got.Result.IsError {
				t.Fatalf("cancelled call answered %+v, want an is_error result for id 1", got)
			}
			s.exec(t, 3, tc.tool, map[string]string{"command": "echo next"})
			if got := s.response(t); got.ID != 3 || got.Result == nil || strings.TrimSpace(got.Result.Text) != "next" {
				t.Fatalf("next call answered %+v", got)
			}
		})
	}
}

func TestServeCancelOfAQueuedCallSkipsIt(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	s.exec(t, 1, sandbox.ToolCommand, map[string]string{"command": "touch started; sleep 600"})
	s.exec(t, 2, sandbox.ToolCommand, map[string]string{"command": "touch ran"})
	waitForFile(t, filepath.Join(s.workdir, "started"))
	s.send(t, `{"id":3,"cancel":2}`)
	s.send(t, `{"id":4,"cancel":1}`)
	if got := s.response(t); got.ID != 1 || got.Result == nil || !got.Result.IsError {
		t.Fatalf("first answer = %+v, want id 1 cancelled", got)
	}
	if diff := cmp.Diff(result(2, "call cancelled before it started", true), s.response(t)); diff != "" {
		t.Errorf("queued call (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(s.workdir, "ran")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cancelled queued call ran")
	}
}

func TestServeReturnsOnEOFAndKillsTheShell(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	s.exec(t, 1, "bash", map[string]string{"command": "echo $$"})
	got := s.response(t)
	if got.Result == nil || got.Result.IsError {
		t.Fatalf("bash: %+v", got)
	}
	var pid int
	if _, err := fmt.Sscan(got.Result.Text, &pid); err != nil {
		t.Fatalf("bash printed %q", got.Result.Text)
	}
	// A call in flight at EOF is cancelled, not waited for.
	s.exec(t, 2, sandbox.ToolCommand, map[string]string{"command": "sleep 600"})
	_ = s.in.Close()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve = %v, want nil on EOF", err)
		}
		s.done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after EOF")
	}
	// The shell was a child of this process and has been reaped by Close.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("bash (pid %d) still exists after Serve returned: kill(0) = %v", pid, err)
	}
}

// Serve ends on EOF even while a tool that ignores its context runs: the
// SDK's read streams a sparse file up to the lines it was asked for.
func TestServeReturnsOnEOFWhileAToolIgnoresItsCancel(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	f, err := os.Create(filepath.Join(s.workdir, "sparse"))
	if err == nil {
		err = f.Truncate(64 << 30) // a minute or more of reading holes
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	s.exec(t, 1, "read", map[string]any{"file_path": "sparse", "view_range": []int64{1 << 60, 1<<60 + 1}})
	// The read is under way once this process has the file open.
	waitForOpen(t, filepath.Join(s.workdir, "sparse"))
	_ = s.in.Close()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still running 30s after EOF")
	}
}

func TestServeReturnsNilWhenItsContextEnds(t *testing.T) {
	s := start(t, sandboxd.Options{})
	s.hello(t)
	s.exec(t, 1, sandbox.ToolCommand, map[string]string{"command": "touch started; sleep 600"})
	waitForFile(t, filepath.Join(s.workdir, "started"))
	go func() { _, _ = io.Copy(io.Discard, s.outR) }() // whatever it still answers
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
		s.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestServeRefusesAWorkdirThatIsNotADirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := sandboxd.Serve(context.Background(), strings.NewReader(""), io.Discard, sandboxd.Options{Workdir: file})
	if err == nil {
		t.Fatal("Serve accepted a file as its workdir")
	}
}

func TestServeGivesToolsExactlyItsEnv(t *testing.T) {
	t.Setenv("PERIMETER_CANARY_SECRET", "not-for-the-sandbox")
	s := start(t, sandboxd.Options{Env: map[string]string{"PATH": "/usr/bin:/bin", "ONLY": "this"}})
	s.hello(t)
	bookkeeping := map[string]bool{"PWD": true, "OLDPWD": true, "SHLVL": true, "_": true, "PS1": true, "PS2": true, "TERM": true, "HISTFILE": true}
	for i, tool := range []string{"bash", sandbox.ToolCommand} {
		t.Run(tool, func(t *testing.T) {
			s.exec(t, i+1, tool, map[string]string{"command": "env"})
			got := s.response(t)
			if got.Result == nil || got.Result.IsError {
				t.Fatalf("env: %+v", got)
			}
			seen := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(got.Result.Text), "\n") {
				k, _, _ := strings.Cut(line, "=")
				seen[k] = true
				if k != "PATH" && k != "ONLY" && !bookkeeping[k] {
					t.Errorf("unexpected variable %q", line)
				}
			}
			if !seen["ONLY"] || !seen["PATH"] {
				t.Errorf("env lacks ONLY or PATH:\n%s", got.Result.Text)
			}
		})
	}
}

func TestCommandTool(t *testing.T) {
	s := start(t, sandboxd.Options{Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	s.hello(t)
	tests := []struct {
		name    string
		command string
		stdin   string
		check   func(t *testing.T, r sandbox.Result)
	}{
		{"StdinReachesTheCommand", "cat", `{"a":1}`, wantResult(`{"a":1}`, false)},
		{"StderrIsMergedIntoStdout", "echo out; echo err >&2", "", wantResult("out\nerr\n", false)},
		{"NonZeroExitIsAnErrorWithTheCode", "echo partial; exit 3", "", wantResult("partial\n\nexit code: 3", true)},
		{"DeathBySignalIsAnErrorNamingIt", "kill -TERM $$", "", wantResult("\nkilled by signal SIGTERM", true)},
		{"RunsInTheWorkdir", "pwd", "", func(t *testing.T, r sandbox.Result) {
			if strings.TrimSpace(r.Text) != s.workdir {
				t.Errorf("pwd = %q, want %q", r.Text, s.workdir)
			}
		}},
		{"OutputOver100KiBKeepsTheTail", "head -c 200000 /dev/zero | tr '\\0' x; echo; echo TAIL", "", func(t *testing.T, r sandbox.Result) {
			if r.IsError || !strings.HasPrefix(r.Text, "[output truncated]\n") || !strings.HasSuffix(r.Text, "TAIL\n") {
				t.Errorf("result starts %q, ends %q", r.Text[:min(30, len(r.Text))], r.Text[max(0, len(r.Text)-10):])
			}
			if n := len(r.Text) - len("[output truncated]\n"); n != 100*1024 {
				t.Errorf("kept %d bytes, want 100 KiB", n)
			}
		}},
		{"EmptyCommandIsAnError", "", "", func(t *testing.T, r sandbox.Result) {
			if !r.IsError {
				t.Errorf("result = %+v, want an error", r)
			}
		}},
		{"LeftoverBackgroundProcessesDoNotHoldTheCall", "sleep 600 & echo started", "", wantResult("started\n", false)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s.exec(t, i+1, sandbox.ToolCommand, map[string]string{"command": tc.command, "stdin": tc.stdin})
			got := s.response(t)
			if got.Result == nil {
				t.Fatalf("response = %+v", got)
			}
			tc.check(t, *got.Result)
		})
	}
}

func wantResult(text string, isError bool) func(t *testing.T, r sandbox.Result) {
	return func(t *testing.T, r sandbox.Result) {
		t.Helper()
		if diff := cmp.Diff(sandbox.Result{Text: text, IsError: isError}, r); diff != "" {
			t.Errorf("result (-want +got):\n%s", diff)
		}
	}
}

// perimeter.configure adds variables for every command from then on: in
// the persistent shell that already runs, in a restarted one, and in custom
// commands. Values are taken literally.
func TestConfigureSetsTheEnvironmentOfLaterCommands(t *testing.T) {
	s := start(t, sandboxd.Options{Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	s.hello(t)
	s.exec(t, 1, "bash", map[string]string{"command": "echo before=$TOKEN"})
	if got := s.output(t); got != "before=" {
		t.Fatalf("before: %q", got)
	}
	value := `'perimeter-secret:gh:x'y"$(touch pwned) \n` + "\n`touch pwned`;'"
	s.exec(t, 2, sandbox.ToolConfigure, map[string]any{"env": map[string]string{"TOKEN": value, "HTTPS_PROXY": "http://127.0.0.1:3128"}})
	if got := s.response(t); got.Result == nil || got.Result.IsError {
		t.Fatalf("configure: %+v", got)
	}
	s.exec(t, 3, "bash", map[string]string{"command": `printf '%s|%s' "$TOKEN" "$HTTPS_PROXY"`})
	want := value + "|http://127.0.0.1:3128"
	if got := s.output(t); got != want {
		t.Fatalf("running shell: %q, want %q", got, want)
	}
	s.exec(t, 4, "bash", map[string]any{"restart": true, "command": `printf '%s' "$TOKEN"`})
	if got := s.output(t); got != value {
		t.Fatalf("restarted shell: %q", got)
	}
	s.exec(t, 5, sandbox.ToolCommand, map[string]string{"command": `printf '%s' "$TOKEN"`})
	if got := s.output(t); got != value {
		t.Fatalf("custom command: %q", got)
	}
	if _, err := os.Stat(filepath.Join(s.workdir, "pwned")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a value was run as a command (%v)", err)
	}
}

// TestConfigureLeavesTheShellItsPromptAndTerminal: the variables a new
// shell sets itself whatever its environment says (PS1, PS2, TERM,
// HISTFILE) are not exported into a running one either, so its output
// stays what a new shell's would be.
func TestConfigureLeavesTheShellItsPromptAndTerminal(t *testing.T) {
	s := start(t, sandboxd.Options{Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	s.hello(t)
	s.exec(t, 1, "bash", map[string]string{"command": "true"})
	s.output(t)
	s.exec(t, 2, sandbox.ToolConfigure, map[string]any{"env": map[string]string{"PS1": "PROMPT> ", "TERM": "xterm", "OTHER": "set"}})
	if got := s.response(t); got.Result == nil || got.Result.IsError || got.Result.Text != "set OTHER PS1 TERM" {
		t.Fatalf("configure: %+v", got)
	}
	s.exec(t, 3, "bash", map[string]string{"command": `echo "$OTHER|$PS1|$TERM"`})
	if got := s.output(t); got != "set||dumb" {
		t.Fatalf("running shell: %q, want %q", got, "set||dumb")
	}
}

func TestConfigureRefusesInvalidNames(t *testing.T) {
	s := start(t, sandboxd.Options{Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	s.hello(t)
	for i, name := range []string{"", "1X", "A-B", "A B", "X;touch /tmp/p"} {
		s.exec(t, i+1, sandbox.ToolConfigure, map[string]any{"env": map[string]string{name: "v"}})
		if got := s.response(t); got.Result == nil || !got.Result.IsError || !strings.Contains(got.Result.Text, "not a valid variable") {
			t.Errorf("name %q: %+v, want a refusal", name, got)
		}
	}
	s.exec(t, 9, "bash", map[string]string{"command": "env | grep -c =v$ || true"})
	if got := s.output(t); got != "0" {
		t.Fatalf("a refused variable was set: %q", got)
	}
}

// output is the text of the next response, which must be a successful
// result, without the trailing newlines the shell leaves.
func (s *server) output(t *testing.T) string {
	t.Helper()
	got := s.response(t)
	if got.Result == nil || got.Result.IsError {
		t.Fatalf("response %+v is not a successful result", got)
	}
	return strings.TrimRight(got.Result.Text, "\n")
}

// TestServeAdoptsThePrestartedShell: the slim sandboxd starts its shell
// while it initialises (package prestart); Serve, started in the same
// directory with the same environment, runs its bash calls in that shell
// rather than a new one. (spawn's tests cover a shell that does not fit.)
func TestServeAdoptsThePrestartedShell(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	spawn.Prestart()
	pid := spawn.PrestartedPID()
	if pid == 0 {
		t.Fatal("Prestart started no shell")
	}
	s := start(t, sandboxd.Options{Workdir: wd, Env: env})
	s.hello(t)
	s.exec(t, 1, "bash", map[string]string{"command": "echo $$"})
	if got, want := s.response(t), result(1, fmt.Sprintf("%d\n\n", pid), false); !cmp.Equal(got, want) {
		t.Fatalf("bash ran in another shell than the prestarted %d: %s", pid, cmp.Diff(want, got))
	}
}
