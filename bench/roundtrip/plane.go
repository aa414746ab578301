package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/perimeterhq/perimeter/bench/internal/plane"
)

// The control plane's credentials, shared with the in-process workers.
const (
	apiKey = plane.APIKey
	envKey = plane.EnvKey
	envID  = plane.EnvID
)

// benchPlane is the embedded control plane with what this bench asks of it.
type benchPlane struct{ *plane.Plane }

func startPlane(scenarioDir string) (*benchPlane, error) {
	p, err := plane.Start(scenarioDir)
	if err != nil {
		return nil, err
	}
	return &benchPlane{p}, nil
}

// createSession starts a session of agent_<scenario>.
func (p *benchPlane) createSession(ctx context.Context, scenario string) (string, error) {
	s, err := p.Op.Beta.Sessions.New(ctx, anthropic.BetaSessionNewParams{
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

func (p *benchPlane) outcome(ctx context.Context, sessionID string) (outcome, error) {
	s, err := p.Op.Beta.Sessions.Get(ctx, sessionID, anthropic.BetaSessionGetParams{})
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
func (p *benchPlane) waitPassed(ctx context.Context, sessionID string, every time.Duration) error {
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
func (p *benchPlane) events(ctx context.Context, sessionID string) ([]event, error) {
	iter := p.Op.Beta.Sessions.Events.ListAutoPaging(ctx, sessionID, anthropic.BetaSessionEventListParams{Limit: anthropic.Int(1000)})
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
func (p *benchPlane) waitStopped(ctx context.Context, sessionID string) error {
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

func (p *benchPlane) workState(ctx context.Context, sessionID string) (anthropic.BetaSelfHostedWorkState, error) {
	iter := p.Op.Beta.Environments.Work.ListAutoPaging(ctx, envID, anthropic.BetaEnvironmentWorkListParams{Limit: anthropic.Int(100)},
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
