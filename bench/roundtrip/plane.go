package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/perimeterhq/perimeter/internal/controlplane"
)

// The control plane's credentials. They only exist inside this process.
const (
	apiKey = "sk-ant-api-perimeter-bench"
	envKey = "sk-ant-oat01-perimeter-bench"
	envID  = controlplane.DefaultEnvironmentID
)

// plane is an embedded control plane served on 127.0.0.1, with an operator
// client.
type plane struct {
	cp    *controlplane.Server
	srv   *http.Server
	url   string
	op    anthropic.Client
	polls chan struct{} // gets a token when a work poll arrives
	// pollsOpen counts work polls being served. A poll whose worker has
	// gone may still claim the next item, which then waits out the
	// control plane's reclaim delay, so a new worker starts only once the
	// last one's polls are over.
	pollsOpen atomic.Int64
}

// startPlane serves a control plane whose agents are the scenario files in
// scenarioDir. Its state is in memory.
func startPlane(scenarioDir string) (*plane, error) {
	cp, err := controlplane.New(controlplane.Options{
		APIKey: apiKey, EnvironmentKey: envKey, ScenarioDir: scenarioDir,
		TTL: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cp.Close()
		return nil, err
	}
	p := &plane{cp: cp, url: "http://" + ln.Addr().String(), polls: make(chan struct{}, 1)}
	p.srv = &http.Server{Handler: p.notePolls(cp.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	p.op = anthropic.NewClient(option.WithBaseURL(p.url), option.WithAPIKey(apiKey))
	return p, nil
}

// notePolls signals p.polls when a worker's work poll arrives.
func (p *plane) notePolls(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/work/poll") {
			p.pollsOpen.Add(1)
			defer p.pollsOpen.Add(-1)
			select {
			case p.polls <- struct{}{}:
			default:
			}
		}
		next.ServeHTTP(w, r)
	})
}

// nextPoll waits for a work poll that arrives after it is called. Work
// created right then is claimed at once: the poll is a long poll the queue
// wakes, whereas an idle SDK WorkPoller sleeps 1–3 s between empty polls.
func (p *plane) nextPoll(ctx context.Context) error {
	select {
	case <-p.polls: // an earlier poll
	default:
	}
	select {
	case <-p.polls:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("no work poll within 30s")
	}
}

// waitPollsOver waits until no work poll is being served; a long poll
// lasts under a second.
func (p *plane) waitPollsOver(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for p.pollsOpen.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("a work poll is still open: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// close ends the streams, then the server.
func (p *plane) close() {
	_ = p.cp.Close()
	_ = p.srv.Close()
}

// workerClient is a client for an in-process worker, which authenticates
// with the environment key and the items' sessions tokens.
func (p *plane) workerClient() anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(p.url), option.WithMaxRetries(1))
}

// createSession starts a session of agent_<scenario>.
func (p *plane) createSession(ctx context.Context, scenario string) (string, error) {
	s, err := p.op.Beta.Sessions.New(ctx, anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: anthropic.String("agent_" + scenario)},
		EnvironmentID: envID,
	})
	if err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	return s.ID, nil
}

// outcome is a session's scenario summary.
type outcome struct {
	Status   string `json:"status"`
	Failures []struct {
		Step    int    `json:"step"`
		Message string `json:"message"`
	} `json:"failures"`
}

func (o outcome) String() string {
	var b strings.Builder
	b.WriteString(o.Status)
	for _, f := range o.Failures {
		fmt.Fprintf(&b, "; step %d: %s", f.Step, f.Message)
	}
	return b.String()
}

func (p *plane) outcome(ctx context.Context, sessionID string) (outcome, error) {
	s, err := p.op.Beta.Sessions.Get(ctx, sessionID, anthropic.BetaSessionGetParams{})
	if err != nil {
		return outcome{}, fmt.Errorf("get session %s: %w", sessionID, err)
	}
	var v struct {
		Scenario outcome `json:"scenario"`
	}
	if err := json.Unmarshal([]byte(s.RawJSON()), &v); err != nil {
		return outcome{}, fmt.Errorf("session %s: %w", sessionID, err)
	}
	return v.Scenario, nil
}

// errScenarioFailed marks a functional failure: the worker served the
// session, but not correctly.
var errScenarioFailed = errors.New("scenario did not pass")

// waitPassed polls the session until its scenario ends and returns an error
// unless it passed.
func (p *plane) waitPassed(ctx context.Context, sessionID string, every time.Duration) error {
	for {
		o, err := p.outcome(ctx, sessionID)
		if err != nil {
			return err
		}
		switch o.Status {
		case "", "running":
		case "passed":
			return nil
		default:
			return fmt.Errorf("session %s: %w: %s", sessionID, errScenarioFailed, o)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("session %s: scenario still %q: %w", sessionID, o.Status, ctx.Err())
		case <-time.After(every):
		}
	}
}

// event is the part of a session event the benchmark reads.
type event struct {
	Type        string    `json:"type"`
	ProcessedAt time.Time `json:"processed_at"`
}

// events returns the session's event log, oldest first.
func (p *plane) events(ctx context.Context, sessionID string) ([]event, error) {
	iter := p.op.Beta.Sessions.Events.ListAutoPaging(ctx, sessionID, anthropic.BetaSessionEventListParams{Limit: anthropic.Int(1000)})
	var out []event
	for iter.Next() {
		var e event
		if err := json.Unmarshal([]byte(iter.Current().RawJSON()), &e); err != nil {
			return nil, fmt.Errorf("events of %s: %w", sessionID, err)
		}
		out = append(out, e)
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("events of %s: %w", sessionID, err)
	}
	return out, nil
}

// waitStopped waits until the session's work item is stopped, so the next
// worker starts on an empty queue.
func (p *plane) waitStopped(ctx context.Context, sessionID string) error {
	for {
		state, err := p.workState(ctx, sessionID)
		if err != nil {
			return err
		}
		if state == anthropic.BetaSelfHostedWorkStateStopped {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("work item of %s still %q: %w", sessionID, state, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *plane) workState(ctx context.Context, sessionID string) (anthropic.BetaSelfHostedWorkState, error) {
	iter := p.op.Beta.Environments.Work.ListAutoPaging(ctx, envID, anthropic.BetaEnvironmentWorkListParams{Limit: anthropic.Int(100)},
		option.WithHeaderDel("X-Api-Key"), option.WithAuthToken(envKey))
	var state anthropic.BetaSelfHostedWorkState
	for iter.Next() {
		if w := iter.Current(); w.Data.ID == sessionID {
			state = w.State
		}
	}
	if err := iter.Err(); err != nil {
		return "", fmt.Errorf("list work: %w", err)
	}
	return state, nil
}

// writeScenario writes a scenario of calls `bash true` calls, then
// terminate, as <dir>/<name>.yaml.
func writeScenario(dir, name string, calls int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nname: %s\ndescription: %d trivial bash calls, then terminate.\nresult_timeout: 2m\nsteps:\n", name, calls)
	for range calls {
		b.WriteString("  - tool: bash\n    input: {command: \"true\"}\n    expect: {is_error: false}\n")
	}
	b.WriteString("  - end: terminate\n")
	return os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(b.String()), 0o600)
}
