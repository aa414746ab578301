// Package e2e drives the real perimeter binary: the control plane and
// workers as separate processes, spoken to only through their CLI, their
// HTTP APIs and signals, the way an operator would.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

const (
	apiKey = "sk-ant-api-e2e"
	envKey = "sk-ant-oat01-e2e"
	envID  = "env_default"
)

// proc is a perimeter process with its combined output captured.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
	err  error
}

func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	return startProcStdin(t, name, nil, env, args...)
}

// startProcStdin is startProc with stdin (a terminal, say) as the
// process's standard input.
func startProcStdin(t *testing.T, name string, stdin *os.File, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	p := &proc{t: t, name: name, cmd: cmd, out: &testenv.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s did not exit within %s", p.name, d)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitLog waits for an output line matching re and returns its submatches.
func (p *proc) waitLog(re *regexp.Regexp) []string {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before logging %s", p.name, p.err, re)
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s never logged %s", p.name, re)
	return nil
}

var (
	listenRe = regexp.MustCompile(`listening.*addr=(\S+)`)
	adminRe  = regexp.MustCompile(`admin listening.*addr=(\S+)`)
)

// controlPlane is a running `perimeter controlplane`.
type controlPlane struct {
	*proc
	url, dir, listen string
}

func startControlPlane(t *testing.T, dir, listen string) *controlPlane {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	p := startProc(t, "controlplane", nil, "controlplane",
		"--listen", listen, "--database", filepath.Join(dir, "controlplane.db"),
		"--scenarios", scenarioDir(t), "--ttl", "3s",
		"--api-key", apiKey, "--environment-key", envKey)
	m := p.waitLog(listenRe)
	return &controlPlane{proc: p, url: "http://" + m[1], dir: dir, listen: m[1]}
}

// scenarioDir is the shipped examples plus the e2e test scenarios.
func scenarioDir(t *testing.T) string {
	dir := t.TempDir()
	for _, src := range []string{"../examples/scenarios", "testdata/scenarios"} {
		entries, err := os.ReadDir(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// worker is a running `perimeter worker`.
type worker struct {
	*proc
	admin string
}

func startWorker(t *testing.T, baseURL, stateDir string, extra ...string) *worker {
	t.Helper()
	return startWorkerEnv(t, baseURL, stateDir, nil, extra...)
}

func startWorkerEnv(t *testing.T, baseURL, stateDir string, env []string, extra ...string) *worker {
	t.Helper()
	// The shipped example config (it declares the ticket_lookup custom
	// tool), with flags for what a test must change.
	args := append([]string{"worker", "--config", "../examples/perimeter.yaml",
		"--state-dir", stateDir, "--admin-listen", "127.0.0.1:0", "--runtime", "process", "--insecure-process-runtime",
		"--max-sessions", "8", "--max-idle", "2s", "--tool-timeout", "10s", "--drain-timeout", "15s",
		// Tests that exercise the gate pass their own --policy (the last wins).
		"--policy", "../examples/policies/allow-all.yaml"}, extra...)
	// A test that fails midway kills the worker (startProc's cleanup, which
	// runs first), leaving its sandbox containers; remove them after.
	if i := slices.Index(args, "--worker-id"); i >= 0 && i+1 < len(args) {
		id := args[i+1]
		t.Cleanup(func() { removeContainers(containersOf(id)) })
	}
	p := startProc(t, "worker", append([]string{
		"ANTHROPIC_BASE_URL=" + baseURL,
		"ANTHROPIC_ENVIRONMENT_ID=" + envID,
		"ANTHROPIC_ENVIRONMENT_KEY=" + envKey,
	}, env...), args...)
	m := p.waitLog(adminRe)
	return &worker{proc: p, admin: "http://" + m[1]}
}

func operator(url string) anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(url), option.WithAPIKey(apiKey))
}

func newSession(t *testing.T, c anthropic.Client, agent string) string {
	t.Helper()
	return newSessionWith(t, c, agent, nil)
}

// newSessionWith creates a session of agent_<agent> with metadata.
func newSessionWith(t *testing.T, c anthropic.Client, agent string, metadata map[string]string) string {
	t.Helper()
	s, err := c.Beta.Sessions.New(context.Background(), anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: anthropic.String("agent_" + agent)},
		EnvironmentID: envID,
		Metadata:      metadata,
	})
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	return s.ID
}

type outcome struct {
	Status   string `json:"status"`
	Failures []struct {
		Step    int    `json:"step"`
		Message string `json:"message"`
	} `json:"failures"`
}

func scenarioOf(t *testing.T, c anthropic.Client, id string) outcome {
	t.Helper()
	s, err := c.Beta.Sessions.Get(context.Background(), id, anthropic.BetaSessionGetParams{})
	if err != nil {
		t.Fatalf("get session: %v", err)
	}
	var v struct {
		Scenario outcome `json:"scenario"`
	}
	if err := json.Unmarshal([]byte(s.RawJSON()), &v); err != nil {
		t.Fatal(err)
	}
	return v.Scenario
}

func waitPassed(t *testing.T, c anthropic.Client, id string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		o := scenarioOf(t, c, id)
		switch o.Status {
		case "passed":
			return
		case "failed":
			t.Fatalf("session %s failed: %+v", id, o.Failures)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("session %s did not finish: %+v", id, scenarioOf(t, c, id))
}

func events(t *testing.T, c anthropic.Client, id string) []map[string]any {
	t.Helper()
	page, err := c.Beta.Sessions.Events.List(context.Background(), id, anthropic.BetaSessionEventListParams{Limit: anthropic.Int(1000)})
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, e := range page.Data {
		var m map[string]any
		if err := json.Unmarshal([]byte(e.RawJSON()), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func waitEvent(t *testing.T, c anthropic.Client, id string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range events(t, c, id) {
			if match(e) {
				return e
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no matching event in %s", id)
	return nil
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func countLines(t *testing.T, path, want string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == want {
			n++
		}
	}
	return n
}

var (
	sigterm = syscall.SIGTERM
	sighup  = syscall.SIGHUP
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
