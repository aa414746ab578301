package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/examples"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/controlplane"
)

type demoFlags struct {
	scenario, scenarios, stateDir string
	verbose                       bool
	timeout                       time.Duration
}

func newDemoCmd(g *globals) *cobra.Command {
	f := &demoFlags{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a scripted session end to end on this machine, offline",
		Long: `Starts the embedded control plane on loopback and a worker, creates a session
from a scenario (examples/scenarios/quickstart.yaml by default, built into the
binary), prints a live timeline of its tool calls and a final summary.

The control plane's and the worker's logs go to perimeter.log in the state
directory (and to standard error with --verbose), at --log-level and in
--log-format.

Exits 0 when every expectation in the scenario held.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			newLog, err := g.newLogger()
			if err != nil {
				return err
			}
			return runDemo(cmd.Context(), cfg, f, newLog, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.scenario, "scenario", "quickstart", "scenario to run (file stem)")
	fl.StringVar(&f.scenarios, "scenarios", "", "directory of scenarios (default: the examples built into the binary)")
	fl.StringVar(&f.stateDir, "state-dir", "", "keep the control plane database, worker state and logs here (default: a temporary directory, removed afterwards)")
	fl.BoolVar(&f.verbose, "verbose", false, "print the worker's and control plane's logs to stderr")
	fl.DurationVar(&f.timeout, "timeout", 3*time.Minute, "give up after this long")
	return cmd
}

func runDemo(ctx context.Context, cfg *config.Config, f *demoFlags, newLog func(io.Writer) *slog.Logger, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	dir := f.stateDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "perimeter-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	scenarios := f.scenarios
	if scenarios == "" {
		scenarios = filepath.Join(dir, "scenarios")
		if err := os.CopyFS(scenarios, mustSub(examples.Scenarios, "scenarios")); err != nil {
			return fmt.Errorf("unpack the built-in scenarios: %w", err)
		}
	}

	logFile, err := os.Create(filepath.Join(dir, "perimeter.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	var logOut io.Writer = logFile
	if f.verbose {
		logOut = io.MultiWriter(logFile, os.Stderr)
	}
	log := newLog(logOut)

	apiKey, envKey := "sk-ant-api-demo-"+randomHex(16), "sk-ant-oat01-demo-"+randomHex(16)
	cp, err := controlplane.New(controlplane.Options{
		APIKey: apiKey, EnvironmentKey: envKey,
		Database:    filepath.Join(dir, "controlplane.db"),
		ScenarioDir: scenarios,
		TTL:         10 * time.Second,
		Logger:      log.With(slog.String("component", "controlplane")),
	})
	if err != nil {
		return err
	}
	defer cp.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: cp.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	baseURL := "http://" + ln.Addr().String()

	// The worker: the runtime is picked as for `perimeter worker`; the demo
	// accepts the process runtime when nothing stronger exists, and says so.
	cfg.Anthropic.BaseURL, cfg.Anthropic.EnvironmentID = baseURL, controlplane.DefaultEnvironmentID
	cfg.Worker.StateDir = filepath.Join(dir, "worker")
	// The demo's terminal is the user's: its calls are not put to them.
	cfg.Approvals.NoPrompt = true
	if cfg.Policy.File == "" {
		// Nobody is there to approve: the demo's calls are allowed, and
		// still each decided and recorded by the gate.
		b, err := examples.Policies.ReadFile("policies/allow-all.yaml")
		if err != nil {
			return err
		}
		cfg.Policy.File = filepath.Join(dir, "allow-all.yaml")
		if err := os.WriteFile(cfg.Policy.File, b, 0o600); err != nil {
			return err
		}
	}
	cfg.Worker.MaxIdle = config.Duration(5 * time.Second)
	if cfg.Sandbox.Runtime == "" {
		// The demo falls back to the process runtime when the host offers
		// nothing stronger, and says so.
		cfg.Sandbox.InsecureProcessRuntime = true
	}
	fmt.Fprintln(out, "Picking the strongest sandbox runtime this host offers…")
	w, _, closeWorker, err := newWorker(ctx, cfg, envKey, log.With(slog.String("component", "worker")), observability{})
	if err != nil {
		return err
	}
	defer closeWorker()
	wctx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(wctx) }()
	defer func() {
		stopWorker()
		if werr := <-workerDone; werr != nil && err == nil {
			err = fmt.Errorf("worker: %w", werr)
		}
	}()

	client := anthropic.NewClient(option.WithBaseURL(baseURL), option.WithAPIKey(apiKey))
	agentID := "agent_" + f.scenario
	fmt.Fprintf(out, "Perimeter demo\n  control plane  %s (embedded, offline)\n  sandbox        %s\n  scenario       %s\n  logs           %s\n\n",
		baseURL, runtimeBlurb(w.RuntimeName()), agentID, logFile.Name())

	sess, err := client.Beta.Sessions.New(ctx, anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: anthropic.String(agentID)},
		EnvironmentID: controlplane.DefaultEnvironmentID,
		Title:         anthropic.String("perimeter demo"),
	})
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	tl := &timeline{out: out, started: map[string]toolStart{}}
	if err := tl.follow(ctx, client, sess.ID); err != nil {
		return err
	}
	return tl.summary(ctx, client, sess.ID)
}

func runtimeBlurb(name string) string {
	switch name {
	case "process":
		return "process — NO isolation: nothing stronger works on this host (see `perimeter doctor`)"
	case "docker-runsc":
		return "docker-runsc — a hardened container on gVisor's user-space kernel"
	case "docker":
		return "docker — a hardened container (runc)"
	case "bwrap":
		return "bwrap — bubblewrap namespaces and seccomp"
	}
	return name
}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// event is the part of a session event the timeline reads.
type event struct {
	ID                  string          `json:"id"`
	Type                string          `json:"type"`
	Name                string          `json:"name"`
	Input               json.RawMessage `json:"input"`
	EvaluatedPermission string          `json:"evaluated_permission"`
	ToolUseID           string          `json:"tool_use_id"`
	CustomToolUseID     string          `json:"custom_tool_use_id"`
	IsError             bool            `json:"is_error"`
	Result              string          `json:"result"`
	Content             []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	StopReason *struct {
		Type string `json:"type"`
	} `json:"stop_reason"`
}

type toolStart struct {
	name, permission string
	at               time.Time
}

type timeline struct {
	out     io.Writer
	seen    map[string]bool
	started map[string]toolStart
	calls   int
	errors  int
}

// follow prints the session's events until it terminates or its turn ends:
// stream first, then the history, as the SDK's runner does, so nothing is
// missed between the two.
func (t *timeline) follow(ctx context.Context, client anthropic.Client, sessionID string) error {
	t.seen = map[string]bool{}
	stream := client.Beta.Sessions.Events.StreamEvents(ctx, sessionID, anthropic.BetaSessionEventStreamParams{})
	defer stream.Close()
	page, err := client.Beta.Sessions.Events.List(ctx, sessionID, anthropic.BetaSessionEventListParams{Limit: anthropic.Int(1000)})
	if err != nil {
		return fmt.Errorf("list events: %w", err)
	}
	for _, e := range page.Data {
		if t.show(e.RawJSON()) {
			return nil
		}
	}
	for stream.Next() {
		if t.show(stream.Current().RawJSON()) {
			return nil
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	return errors.New("event stream ended before the session did")
}

// show prints one event and reports whether the session is done.
func (t *timeline) show(raw string) bool {
	var e event
	if json.Unmarshal([]byte(raw), &e) != nil || t.seen[e.ID] {
		return false
	}
	t.seen[e.ID] = true
	switch e.Type {
	case "agent.message":
		fmt.Fprintf(t.out, "  agent   %s\n", oneLine(e.text(), 100))
	case "agent.tool_use", "agent.custom_tool_use":
		perm := e.EvaluatedPermission
		if perm == "" {
			perm = "allow"
		}
		t.started[e.ID] = toolStart{name: e.Name, permission: perm, at: time.Now()}
		fmt.Fprintf(t.out, "  call    %-6s %-7s %s\n", e.Name, perm, oneLine(string(e.Input), 80))
	case "user.tool_confirmation":
		fmt.Fprintf(t.out, "  human   %-6s %s\n", t.started[e.ToolUseID].name, e.Result)
	case "user.tool_result", "user.custom_tool_result":
		id := e.ToolUseID + e.CustomToolUseID
		s := t.started[id]
		mark := "ok "
		t.calls++
		if e.IsError {
			mark = "err"
			t.errors++
		}
		fmt.Fprintf(t.out, "  %s     %-6s %6s  %s\n", mark, s.name, time.Since(s.at).Round(time.Millisecond), oneLine(e.text(), 80))
	case "session.status_terminated":
		return true
	case "session.status_idle":
		return e.StopReason != nil && e.StopReason.Type == "end_turn"
	}
	return false
}

func (e event) text() string {
	var b strings.Builder
	for _, c := range e.Content {
		b.WriteString(c.Text)
	}
	return b.String()
}

// summary prints the scenario's outcome and fails when an expectation failed.
func (t *timeline) summary(ctx context.Context, client anthropic.Client, sessionID string) error {
	sess, err := client.Beta.Sessions.Get(ctx, sessionID, anthropic.BetaSessionGetParams{})
	if err != nil {
		return fmt.Errorf("get session: %w", err)
	}
	var v struct {
		Scenario struct {
			Status     string `json:"status"`
			StepsTotal int    `json:"steps_total"`
			StepsDone  int    `json:"steps_done"`
			Failures   []struct {
				Step    int    `json:"step"`
				Message string `json:"message"`
			} `json:"failures"`
		} `json:"scenario"`
	}
	if err := json.Unmarshal([]byte(sess.RawJSON()), &v); err != nil {
		return fmt.Errorf("read the session's scenario outcome: %w", err)
	}
	sc := v.Scenario
	fmt.Fprintf(t.out, "\n%d tool calls (%d returned errors), %d/%d steps, scenario %s\n", t.calls, t.errors, sc.StepsDone, sc.StepsTotal, strings.ToUpper(sc.Status))
	for _, f := range sc.Failures {
		fmt.Fprintf(t.out, "  step %d: %s\n", f.Step, f.Message)
	}
	if sc.Status != "passed" {
		return fmt.Errorf("scenario %s: %d expectation(s) failed", sc.Status, len(sc.Failures))
	}
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	return s
}
