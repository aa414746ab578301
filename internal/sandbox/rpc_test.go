package sandbox_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// fake is a scripted sandboxd on the far side of a Conn.
type fake struct {
	t   *testing.T
	in  *bufio.Reader  // requests from the Conn
	out *io.PipeWriter // lines to the Conn
}

// pipes joins the Conn's read and write ends.
type pipes struct {
	*io.PipeReader
	w *io.PipeWriter
}

func (p pipes) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p pipes) Close() error                { _ = p.w.Close(); return p.PipeReader.Close() }

func newConn(t *testing.T, opts sandbox.ConnOptions) (*sandbox.Conn, *fake) {
	t.Helper()
	reqR, reqW := io.Pipe()
	respR, respW := io.Pipe()
	c := sandbox.NewConn(pipes{PipeReader: respR, w: reqW}, opts)
	t.Cleanup(func() {
		_ = respW.Close()
		_ = reqR.Close()
		_ = c.Close()
	})
	return c, &fake{t: t, in: bufio.NewReader(reqR), out: respW}
}

func (f *fake) say(line string) {
	f.t.Helper()
	if _, err := io.WriteString(f.out, line+"\n"); err != nil {
		f.t.Errorf("fake sandboxd: write: %v", err)
	}
}

func (f *fake) hello() {
	f.t.Helper()
	f.say(`{"hello":{"version":1,"workdir":"/workspace","pid":42}}`)
}

func (f *fake) request() sandbox.Request {
	f.t.Helper()
	line, err := f.in.ReadString('\n')
	if err != nil {
		f.t.Errorf("fake sandboxd: read: %v", err)
		return sandbox.Request{}
	}
	var r sandbox.Request
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		f.t.Errorf("fake sandboxd: request %q: %v", line, err)
	}
	return r
}

// execAsync runs Exec in the background.
func execAsync(ctx context.Context, c *sandbox.Conn, call sandbox.Call) <-chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		r, err := c.Exec(ctx, call)
		ch <- execResult{r, err}
	}()
	return ch
}

type execResult struct {
	res sandbox.Result
	err error
}

func wait(t *testing.T, ch <-chan execResult) execResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("Exec did not return within 30s")
		return execResult{}
	}
}

var echo = sandbox.Call{Tool: "bash", Input: json.RawMessage(`{"command":"echo hi"}`)}

func TestConnHelloReturnsWhatSandboxdAnnounced(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	h, err := c.Hello(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sandbox.Hello{Version: 1, Workdir: "/workspace", PID: 42}, h); diff != "" {
		t.Errorf("hello (-want +got):\n%s", diff)
	}
}

func TestConnHelloRejectsABadFirstLine(t *testing.T) {
	tests := []struct{ name, line string }{
		{"NotJSON", "Welcome to sandboxd!"},
		{"NotAHello", `{"id":1,"result":{"text":"","is_error":false}}`},
		{"AnotherProtocolVersion", `{"hello":{"version":99,"workdir":"/","pid":1}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, f := newConn(t, sandbox.ConnOptions{})
			f.say(tc.line)
			if _, err := c.Hello(context.Background()); !errors.Is(err, sandbox.ErrProtocol) {
				t.Fatalf("Hello: err = %v, want ErrProtocol", err)
			}
			if _, err := c.Exec(context.Background(), echo); !errors.Is(err, sandbox.ErrProtocol) {
				t.Errorf("Exec: err = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestConnHelloReportsWhySandboxdExited(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{ExitReason: func() string { return "exit status 2" }})
	_ = f.out.Close()
	_, err := c.Hello(context.Background())
	var exit *sandbox.ExitError
	if !errors.As(err, &exit) || exit.Reason != "exit status 2" {
		t.Fatalf("err = %v, want ExitError with exit status 2", err)
	}
}

func TestConnHelloGivesUpWhenItsContextEnds(t *testing.T) {
	c, _ := newConn(t, sandbox.ConnOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Hello(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestConnExecSendsTheCallAndReturnsItsResult(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	ch := execAsync(context.Background(), c, echo)
	req := f.request()
	if diff := cmp.Diff(sandbox.Request{ID: req.ID, Exec: &echo}, req); diff != "" || req.ID == 0 {
		t.Fatalf("request (-want +got):\n%s", diff)
	}
	f.say(`{"id":` + jsonNumber(req.ID) + `,"result":{"text":"hi\n","is_error":true}}`)
	r := wait(t, ch)
	if r.err != nil || r.res != (sandbox.Result{Text: "hi\n", IsError: true}) {
		t.Fatalf("Exec = %+v, %v", r.res, r.err)
	}
}

func TestConnExecMatchesRepliesByID(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	first := execAsync(context.Background(), c, sandbox.Call{Tool: "bash", Input: json.RawMessage(`{"command":"1"}`)})
	r1 := f.request()
	second := execAsync(context.Background(), c, sandbox.Call{Tool: "bash", Input: json.RawMessage(`{"command":"2"}`)})
	r2 := f.request()
	f.say(`{"id":` + jsonNumber(r2.ID) + `,"result":{"text":"two","is_error":false}}`)
	f.say(`{"id":` + jsonNumber(r1.ID) + `,"result":{"text":"one","is_error":false}}`)
	if got := wait(t, first); got.res.Text != "one" {
		t.Errorf("first = %+v", got)
	}
	if got := wait(t, second); got.res.Text != "two" {
		t.Errorf("second = %+v", got)
	}
}

func TestConnExecTurnsBadResponsesIntoErrProtocol(t *testing.T) {
	tests := []struct {
		name       string
		reply      string // %d is the request id
		connBroken bool
	}{
		{"ErrorResponse", `{"id":%d,"error":"unknown tool"}`, false},
		{"NeitherResultNorError", `{"id":%d}`, false},
		{"BothResultAndError", `{"id":%d,"result":{"text":""},"error":"x"}`, false},
		{"Garbage", `%d bottles of beer`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, f := newConn(t, sandbox.ConnOptions{})
			f.hello()
			ch := execAsync(context.Background(), c, echo)
			req := f.request()
			f.say(strings.ReplaceAll(tc.reply, "%d", jsonNumber(req.ID)))
			if r := wait(t, ch); !errors.Is(r.err, sandbox.ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", r.err)
			}
			if !tc.connBroken {
				return
			}
			if _, err := c.Exec(context.Background(), echo); !errors.Is(err, sandbox.ErrProtocol) {
				t.Errorf("next call: err = %v, want ErrProtocol (the channel cannot be trusted)", err)
			}
		})
	}
}

func TestConnExecFailsWithExitErrorWhenSandboxdsOutputEnds(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{ExitReason: func() string { return "killed by signal SIGKILL" }})
	f.hello()
	ch := execAsync(context.Background(), c, echo)
	f.request()
	_ = f.out.Close()
	var exit *sandbox.ExitError
	if r := wait(t, ch); !errors.As(r.err, &exit) || *exit != (sandbox.ExitError{Reason: "killed by signal SIGKILL", Sent: true}) {
		t.Fatalf("in-flight call: err = %v, want ExitError{SIGKILL, Sent}", r.err)
	}
	_, err := c.Exec(context.Background(), echo)
	if !errors.As(err, &exit) || *exit != (sandbox.ExitError{Reason: "killed by signal SIGKILL"}) {
		t.Fatalf("later call: err = %v, want ExitError{SIGKILL, not sent}", err)
	}
	if !errors.Is(err, sandbox.ErrExited) {
		t.Errorf("ExitError does not match ErrExited")
	}
}

func TestConnExecCancelsTheCallWhenItsContextEnds(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	ctx, cancel := context.WithCancel(context.Background())
	ch := execAsync(ctx, c, echo)
	req := f.request()
	cancel()
	cancelReq := f.request()
	if cancelReq.Cancel != req.ID || cancelReq.Exec != nil || cancelReq.ID == req.ID {
		t.Fatalf("after the context ended the Conn sent %+v, want a cancel of %d", cancelReq, req.ID)
	}
	f.say(`{"id":` + jsonNumber(req.ID) + `,"result":{"text":"bash: context canceled","is_error":true}}`)
	if r := wait(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", r.err)
	}
}

func TestConnExecGivesUpOnAnUnansweredCancelAndIgnoresTheLateReply(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{CancelGrace: time.Millisecond})
	f.hello()
	ctx, cancel := context.WithCancel(context.Background())
	ch := execAsync(ctx, c, echo)
	req := f.request()
	cancel()
	f.request() // the cancel
	if r := wait(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", r.err)
	}
	next := execAsync(context.Background(), c, echo)
	nextReq := f.request()
	f.say(`{"id":` + jsonNumber(req.ID) + `,"result":{"text":"late","is_error":false}}`)
	f.say(`{"id":` + jsonNumber(nextReq.ID) + `,"result":{"text":"on time","is_error":false}}`)
	if r := wait(t, next); r.err != nil || r.res.Text != "on time" {
		t.Fatalf("next call = %+v, %v", r.res, r.err)
	}
}

func TestConnExecAnswersAnOversizeCallWithoutSendingIt(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	big, _ := json.Marshal(map[string]string{"content": strings.Repeat("x", sandbox.MaxLineBytes)})
	res, err := c.Exec(context.Background(), sandbox.Call{Tool: "write", Input: big})
	if err != nil || !res.IsError || !strings.Contains(res.Text, "too large") {
		t.Fatalf("Exec = %+v, %v; want an is_error result", res, err)
	}
}

func TestConnCloseFailsCallsWithErrClosed(t *testing.T) {
	c, f := newConn(t, sandbox.ConnOptions{})
	f.hello()
	ch := execAsync(context.Background(), c, echo)
	f.request()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if r := wait(t, ch); !errors.Is(r.err, sandbox.ErrClosed) {
		t.Errorf("in-flight call: err = %v, want ErrClosed", r.err)
	}
	if _, err := c.Exec(context.Background(), echo); !errors.Is(err, sandbox.ErrClosed) {
		t.Errorf("later call: err = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestReadLine(t *testing.T) {
	type step struct {
		line    string
		tooLong bool
		eof     bool
	}
	tests := []struct {
		name  string
		input string
		limit int
		want  []step
	}{
		{"LinesThenEOF", "a\nbc\n", 4, []step{{line: "a"}, {line: "bc"}, {eof: true}}},
		{"LastLineWithoutNewline", "a\nbc", 4, []step{{line: "a"}, {line: "bc"}, {eof: true}}},
		{"ExactlyTheLimit", "abcd\n", 4, []step{{line: "abcd"}, {eof: true}}},
		{"OverTheLimitIsSkipped", "abcde\nok\n", 4, []step{{tooLong: true}, {line: "ok"}, {eof: true}}},
		{"OverTheLimitAtEOF", "abcde", 4, []step{{tooLong: true}, {eof: true}}},
		{"LongerThanTheBuffer", strings.Repeat("x", 100) + "\nok\n", 50, []step{{tooLong: true}, {line: "ok"}, {eof: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.input), 16)
			for i, want := range tc.want {
				line, err := sandbox.ReadLine(br, tc.limit)
				switch {
				case want.eof && err != io.EOF,
					want.tooLong && !errors.Is(err, sandbox.ErrLineTooLong),
					!want.eof && !want.tooLong && (err != nil || string(line) != want.line):
					t.Fatalf("read %d = %q, %v; want %+v", i, line, err, want)
				}
			}
		})
	}
}

func TestExitReasonNamesTheStatusOrSignal(t *testing.T) {
	tests := []struct{ name, script, want string }{
		{"ExitStatus", "exit 3", "exit status 3"},
		{"Success", "true", "exit status 0"},
		{"Signal", "kill -KILL $$", "killed by signal SIGKILL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", tc.script)
			_ = cmd.Run()
			if got := sandbox.ExitReason(cmd.ProcessState); got != tc.want {
				t.Errorf("ExitReason = %q, want %q", got, tc.want)
			}
		})
	}
}

func jsonNumber(id uint64) string {
	b, _ := json.Marshal(id)
	return string(b)
}

func TestValidEnvName(t *testing.T) {
	for name, want := range map[string]bool{
		"PATH": true, "_x1": true, "GITHUB_TOKEN": true,
		"": false, "1X": false, "A-B": false, "A=B": false, "A B": false, "É": false,
	} {
		if got := sandbox.ValidEnvName(name); got != want {
			t.Errorf("ValidEnvName(%q) = %v, want %v", name, got, want)
		}
	}
}
