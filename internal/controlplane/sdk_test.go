package controlplane

// Conformance: the unmodified official Go SDK, as an operator and as a
// worker (EnvironmentWorker.Run, and WorkPoller + HandleItem), completes
// scripted sessions against this control plane.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/lib/environments"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/param"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"
	"gopkg.in/yaml.v3"
)

// operator is an SDK client holding the API key.
func (c *testCP) operator() anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(c.url), option.WithAPIKey(testAPIKey))
}

// workerClient is the SDK client a worker builds. Its own credential is a
// placeholder: the worker helpers authorize every call with the environment
// key or the item's sessions token, so a call that leaked it would get 401.
func (c *testCP) workerClient() anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(c.url), option.WithAuthToken("placeholder-not-a-credential"))
}

func (c *testCP) newSession(ctx context.Context, agent string, initial ...string) string {
	c.t.Helper()
	params := anthropic.BetaSessionNewParams{
		Agent:         anthropic.BetaSessionNewParamsAgentUnion{OfString: param.NewOpt(agent)},
		EnvironmentID: DefaultEnvironmentID,
		Title:         param.NewOpt("conformance " + agent),
	}
	for _, text := range initial {
		params.InitialEvents = append(params.InitialEvents, anthropic.BetaSessionNewParamsInitialEventUnion{
			OfUserMessage: &anthropic.BetaManagedAgentsUserMessageEventParams{
				Content: []anthropic.BetaManagedAgentsUserMessageEventParamsContentUnion{{OfText: &anthropic.BetaManagedAgentsTextBlockParam{Text: text}}},
			},
		})
	}
	client := c.operator()
	sess, err := client.Beta.Sessions.New(ctx, params)
	if err != nil {
		c.t.Fatalf("Sessions.New(%s): %v", agent, err)
	}
	return sess.ID
}

// sdkScenario reads the scenario object off Sessions.Get's raw JSON.
type sdkScenario struct {
	Status     string `json:"status"`
	StepsDone  int    `json:"steps_done"`
	StepsTotal int    `json:"steps_total"`
	WaitingFor string `json:"waiting_for"`
	Failures   []struct {
		Step    int    `json:"step"`
		Message string `json:"message"`
	} `json:"failures"`
}

func (c *testCP) sdkSession(ctx context.Context, id string) (*anthropic.BetaManagedAgentsSession, sdkScenario) {
	c.t.Helper()
	client := c.operator()
	sess, err := client.Beta.Sessions.Get(ctx, id, anthropic.BetaSessionGetParams{})
	if err != nil {
		c.t.Fatalf("Sessions.Get: %v", err)
	}
	var v struct {
		Scenario sdkScenario `json:"scenario"`
	}
	if err := json.Unmarshal([]byte(sess.RawJSON()), &v); err != nil {
		c.t.Fatal(err)
	}
	return sess, v.Scenario
}

// waitScenario waits until the session's scenario has finished and passed.
func (c *testCP) waitPassed(ctx context.Context, id string) {
	c.t.Helper()
	var sc sdkScenario
	eventually(c.t, 45*time.Second, "scenario of "+id+" to finish", func() bool {
		_, sc = c.sdkSession(ctx, id)
		return sc.Status != "running"
	})
	if sc.Status != "passed" {
		c.t.Fatalf("scenario %s: %d/%d steps, failures: %+v", sc.Status, sc.StepsDone, sc.StepsTotal, sc.Failures)
	}
}

// waitWorkStopped waits until every work item of the session is stopped.
func (c *testCP) waitWorkStopped(ctx context.Context, sessionID string) []anthropic.BetaSelfHostedWork {
	c.t.Helper()
	var items []anthropic.BetaSelfHostedWork
	client := c.operator()
	eventually(c.t, 30*time.Second, "the work of "+sessionID+" to stop", func() bool {
		page, err := client.Beta.Environments.Work.List(ctx, DefaultEnvironmentID, anthropic.BetaEnvironmentWorkListParams{Limit: param.NewOpt(int64(100))})
		if err != nil {
			c.t.Fatalf("Work.List: %v", err)
		}
		items = items[:0]
		for _, w := range page.Data {
			if w.Data.ID == sessionID {
				items = append(items, w)
				if w.State != anthropic.BetaSelfHostedWorkStateStopped {
					return false
				}
			}
		}
		return len(items) > 0
	})
	return items
}

// runWorker runs EnvironmentWorker.Run until the test ends.
func (c *testCP) runWorker(opts environments.EnvironmentWorkerOptions) {
	c.t.Helper()
	log, _ := newTestLogger(c.t)
	opts.EnvironmentID, opts.EnvironmentKey, opts.Logger = DefaultEnvironmentID, testEnvKey, log
	if opts.Workdir == "" {
		opts.Workdir = c.t.TempDir()
	}
	if opts.MaxIdle == nil {
		idle := 500 * time.Millisecond
		opts.MaxIdle = &idle
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- environments.NewEnvironmentWorker(c.workerClient(), opts).Run(ctx) }()
	c.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("EnvironmentWorker.Run: %v", err)
		}
	})
}

// ticketTool is the custom ticket_lookup tool, in process, printing what
// examples/perimeter.yaml's command prints.
type ticketTool struct{}

func (ticketTool) Name() string        { return "ticket_lookup" }
func (ticketTool) Description() string { return "Look up a support ticket by id and print its status." }
func (ticketTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{Properties: map[string]any{"id": map[string]any{"type": "string"}}, Required: []string{"id"}}
}

func (ticketTool) Execute(_ context.Context, input json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	var in struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(input, &in); err != nil {
		return nil, err
	}
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: fmt.Sprintf("ticket %s status: open", in.ID)}}}, nil
}

func withTicketTool(env *agenttoolset.AgentToolContext) []anthropic.BetaTool {
	return append(agenttoolset.BetaAgentToolset20260401(env), ticketTool{})
}

// errorsWithoutUnknownTool copies the examples, dropping from errors.yaml
// the step that calls a tool nobody has: the SDK's runner leaves a name it
// does not own unanswered, by design, for another client to serve, so it
// can never complete that step (Perimeter's worker answers it with an
// error instead).
func errorsWithoutUnknownTool(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(examplesDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(examplesDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "errors.yaml" {
			b = dropUnknownToolSteps(t, b)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func dropUnknownToolSteps(t *testing.T, src []byte) []byte {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		t.Fatal(err)
	}
	root := doc.Content[0]
	for i := 0; i < len(root.Content); i += 2 {
		if root.Content[i].Value != "steps" {
			continue
		}
		steps := root.Content[i+1]
		var kept []*yaml.Node
		for _, st := range steps.Content {
			unknown := false
			for j := 0; j < len(st.Content); j += 2 {
				unknown = unknown || (st.Content[j].Value == "unknown_tool" && st.Content[j+1].Value == "true")
			}
			if !unknown {
				kept = append(kept, st)
			}
		}
		if len(kept) == len(steps.Content) {
			t.Fatal("errors.yaml has no unknown_tool step to drop")
		}
		steps.Content = kept
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSDKWorkerRunCompletesScenarios(t *testing.T) {
	tests := []struct {
		agent string
		// drive plays the operator while the worker runs, if the scenario
		// needs one.
		drive func(ctx context.Context, t *testing.T, cp *testCP, sessionID string)
		tools func(env *agenttoolset.AgentToolContext) []anthropic.BetaTool
		first string // the user's first message, in initial_events
	}{
		{agent: "agent_quickstart"},
		{agent: "agent_custom-tools", tools: withTicketTool},
		{agent: "agent_errors"},
		{agent: "agent_confirmation", drive: confirmWhenAsked},
		{agent: "agent_conversation", first: "Please prepare the release.", drive: answerAfterWorkStops},
	}
	for _, tt := range tests {
		t.Run(tt.agent, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			cp := startCP(t, Options{ScenarioDir: errorsWithoutUnknownTool(t), TTL: 2 * time.Second})
			var initial []string
			if tt.first != "" {
				initial = append(initial, tt.first)
			}
			id := cp.newSession(ctx, tt.agent, initial...)
			cp.runWorker(environments.EnvironmentWorkerOptions{ToolsFunc: tt.tools})
			if tt.drive != nil {
				tt.drive(ctx, t, cp, id)
			}
			cp.waitPassed(ctx, id)
			cp.waitWorkStopped(ctx, id)
			assertNoSecretsLogged(t, cp)
		})
	}
}

// confirmWhenAsked allows, through the SDK, each call the scenario leaves
// to the operator.
func confirmWhenAsked(ctx context.Context, t *testing.T, cp *testCP, id string) {
	client := cp.operator()
	eventually(t, 30*time.Second, "a call awaiting the operator", func() bool {
		_, sc := cp.sdkSession(ctx, id)
		return sc.WaitingFor == "tool_confirmation"
	})
	page, err := client.Beta.Sessions.Events.List(ctx, id, anthropic.BetaSessionEventListParams{Limit: param.NewOpt(int64(1000))})
	if err != nil {
		t.Fatal(err)
	}
	var pending string
	for _, ev := range page.Data {
		if ev.Type == "agent.tool_use" && ev.EvaluatedPermission == "ask" {
			pending = ev.ID // the last ask-gated call is the one waiting
		}
	}
	_, err = client.Beta.Sessions.Events.Send(ctx, id, anthropic.BetaSessionEventSendParams{
		Events: []anthropic.BetaManagedAgentsEventParamsUnion{{OfUserToolConfirmation: &anthropic.BetaManagedAgentsUserToolConfirmationEventParams{
			ToolUseID: pending, Result: anthropic.BetaManagedAgentsUserToolConfirmationEventParamsResultAllow,
		}}},
	})
	if err != nil {
		t.Fatalf("send confirmation: %v", err)
	}
}

// answerAfterWorkStops waits for the turn to end and the worker to let go of
// the item, then answers; the session must get a new work item.
func answerAfterWorkStops(ctx context.Context, t *testing.T, cp *testCP, id string) {
	eventually(t, 30*time.Second, "the agent's question", func() bool {
		_, sc := cp.sdkSession(ctx, id)
		return sc.WaitingFor == "user_message"
	})
	first := cp.waitWorkStopped(ctx, id)
	client := cp.operator()
	_, err := client.Beta.Sessions.Events.Send(ctx, id, anthropic.BetaSessionEventSendParams{
		Events: []anthropic.BetaManagedAgentsEventParamsUnion{{OfUserMessage: &anthropic.BetaManagedAgentsUserMessageEventParams{
			Content: []anthropic.BetaManagedAgentsUserMessageEventParamsContentUnion{{OfText: &anthropic.BetaManagedAgentsTextBlockParam{Text: "Call it NOTES.md"}}},
		}}},
	})
	if err != nil {
		t.Fatalf("send message: %v", err)
	}
	cp.waitPassed(ctx, id)
	if all := cp.waitWorkStopped(ctx, id); len(all) != len(first)+1 {
		t.Errorf("work items: %d before the message, %d after; want one new item", len(first), len(all))
	}
}

func assertNoSecretsLogged(t *testing.T, cp *testCP) {
	t.Helper()
	logs := cp.log.String()
	for _, secret := range []string{testAPIKey, testEnvKey, "sk-ant-sess-"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the control plane logged a secret (%s…)", secret[:10])
		}
	}
}

// TestSDKHandleItemCompletesAScenarioWithTheSessionsTokenAlone claims with
// WorkPoller (AutoStop off) and runs HandleItem with no environment key at
// all: the secret's sessions token authorizes every per-item call.
func TestSDKHandleItemCompletesAScenarioWithTheSessionsTokenAlone(t *testing.T) {
	t.Setenv("ANTHROPIC_ENVIRONMENT_KEY", "")
	t.Setenv("ANTHROPIC_WORK_SECRET", "")
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cp := startCP(t, Options{ScenarioDir: examplesDir(), TTL: 2 * time.Second})
	id := cp.newSession(ctx, "agent_quickstart")
	log, _ := newTestLogger(t)

	poller := environments.NewWorkPoller(ctx, cp.workerClient(), environments.WorkPollerOptions{
		EnvironmentID: DefaultEnvironmentID, EnvironmentKey: testEnvKey, AutoStop: param.NewOpt(false), Logger: log,
	})
	defer poller.Close()
	if !poller.Next() {
		t.Fatalf("poller: %v", poller.Err())
	}
	work := poller.Current()
	if work.Secret == "" || work.Data.ID != id {
		t.Fatalf("claimed %+v", work)
	}
	idle := 500 * time.Millisecond
	w := environments.NewEnvironmentWorker(cp.workerClient(), environments.EnvironmentWorkerOptions{Workdir: t.TempDir(), MaxIdle: &idle, Logger: log})
	err := w.HandleItem(ctx, environments.HandleItemOptions{
		WorkID: work.ID, EnvironmentID: work.EnvironmentID, SessionID: work.Data.ID, WorkSecret: work.Secret,
	})
	if err != nil {
		t.Fatalf("HandleItem: %v", err)
	}
	cp.waitPassed(ctx, id)
	client := cp.operator()
	got, err := client.Beta.Environments.Work.Get(ctx, work.ID, anthropic.BetaEnvironmentWorkGetParams{EnvironmentID: DefaultEnvironmentID})
	if err != nil {
		t.Fatal(err)
	}
	if got.State != anthropic.BetaSelfHostedWorkStateStopped || got.Secret != "" {
		t.Errorf("work after HandleItem = %s (secret set: %t)", got.State, got.Secret != "")
	}
}

// countingTool wraps a tool and counts its executions.
type countingTool struct {
	anthropic.BetaTool
	n *atomic.Int32
}

func (c countingTool) Execute(ctx context.Context, in json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	c.n.Add(1)
	return c.BetaTool.Execute(ctx, in)
}

// gateTool blocks each call until the test releases it.
type gateTool struct {
	started chan struct{}
	release chan struct{}
}

func (gateTool) Name() string        { return "gate" }
func (gateTool) Description() string { return "waits for the test" }
func (gateTool) InputSchema() anthropic.BetaToolInputSchemaParam {
	return anthropic.BetaToolInputSchemaParam{}
}
func (g gateTool) Execute(ctx context.Context, _ json.RawMessage) ([]anthropic.BetaToolResultBlockParamContentUnion, error) {
	g.started <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return []anthropic.BetaToolResultBlockParamContentUnion{{OfText: &anthropic.BetaTextBlockParam{Text: "opened"}}}, nil
}

const dropScenario = `version: 1
result_timeout: 1m
custom_tools:
  - name: gate
steps:
  - custom_tool: gate
    expect: {contains: opened}
  - tool: bash
    input: {command: echo between}
    expect: {contains: between}
  - custom_tool: gate
    expect: {contains: opened}
  - end: terminate
`

func TestSDKStreamAndReconnectAfterDroppedStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cp := startCP(t, Options{ScenarioDir: scenarioDir(t, map[string]string{"drop.yaml": dropScenario}), TTL: 2 * time.Second, PingInterval: 100 * time.Millisecond})
	id := cp.newSession(ctx, "agent_drop")

	// The operator watches the stream.
	client := cp.operator()
	var (
		mu   sync.Mutex
		seen []string
	)
	watch := func() <-chan error {
		stream := client.Beta.Sessions.Events.StreamEvents(ctx, id, anthropic.BetaSessionEventStreamParams{})
		ended := make(chan error, 1)
		go func() {
			for stream.Next() {
				mu.Lock()
				seen = append(seen, stream.Current().Type)
				mu.Unlock()
			}
			ended <- stream.Err()
			stream.Close()
		}()
		return ended
	}
	streamed := watch()

	gate := gateTool{started: make(chan struct{}), release: make(chan struct{})}
	var gates, bashes atomic.Int32
	cp.runWorker(environments.EnvironmentWorkerOptions{ToolsFunc: func(env *agenttoolset.AgentToolContext) []anthropic.BetaTool {
		var tools []anthropic.BetaTool
		for _, tool := range agenttoolset.BetaAgentToolset20260401(env) {
			if tool.Name() == "bash" {
				tool = countingTool{tool, &bashes}
			}
			tools = append(tools, tool)
		}
		return append(tools, countingTool{gate, &gates})
	}})

	for i := range 2 {
		select {
		case <-gate.started:
		case <-ctx.Done():
			t.Fatalf("gate call %d never started", i+1)
		}
		// Every stream ends while the call runs; the result still lands
		// and the worker reconnects, reconciles and does not run it again.
		cp.srv.DropStreams()
		select {
		case err := <-streamed:
			if err != nil {
				t.Errorf("operator stream ended with %v, want a clean end", err)
			}
		case <-ctx.Done():
			t.Fatal("the operator's stream did not end")
		}
		streamed = watch()
		gate.release <- struct{}{}
	}
	cp.waitPassed(ctx, id)
	cp.waitWorkStopped(ctx, id)
	if g, b := gates.Load(), bashes.Load(); g != 2 || b != 1 {
		t.Errorf("executions: gate %d, bash %d; want 2 and 1", g, b)
	}
	mu.Lock()
	defer mu.Unlock()
	got := strings.Join(seen, ",")
	for _, want := range []string{"user.custom_tool_result", "agent.tool_use", "user.tool_result", "session.status_terminated"} {
		if !strings.Contains(got, want) {
			t.Errorf("the operator's streams saw %v, want %s among them", seen, want)
		}
	}
}

// TestSDKOperatorCalls exercises the operator side of the SDK.
func TestSDKOperatorCalls(t *testing.T) {
	ctx := context.Background()
	cp := startCP(t, Options{ScenarioDir: examplesDir()})
	client := cp.operator()

	env, err := client.Beta.Environments.New(ctx, anthropic.BetaEnvironmentNewParams{
		Name:   "team",
		Config: anthropic.BetaEnvironmentNewParamsConfigUnion{OfSelfHosted: &anthropic.BetaSelfHostedConfigParams{}},
	})
	if err != nil {
		t.Fatalf("Environments.New: %v", err)
	}
	if !strings.HasPrefix(env.ID, "env_") || env.Config.Type != "self_hosted" || env.Name != "team" {
		t.Errorf("environment = %+v", env)
	}
	got, err := client.Beta.Environments.Get(ctx, DefaultEnvironmentID, anthropic.BetaEnvironmentGetParams{})
	if err != nil || got.ID != DefaultEnvironmentID {
		t.Errorf("Environments.Get = %v, %v", got, err)
	}
	envs, err := client.Beta.Environments.List(ctx, anthropic.BetaEnvironmentListParams{})
	if err != nil || len(envs.Data) != 2 {
		t.Errorf("Environments.List = %v, %v", envs, err)
	}

	agents, err := client.Beta.Agents.List(ctx, anthropic.BetaAgentListParams{Limit: param.NewOpt(int64(2))})
	if err != nil || len(agents.Data) != 2 || agents.NextPage == "" {
		t.Fatalf("Agents.List = %v, %v", agents, err)
	}
	var all []string
	for a := range client.Beta.Agents.ListAutoPaging(ctx, anthropic.BetaAgentListParams{Limit: param.NewOpt(int64(2))}).All() {
		all = append(all, a.ID)
	}
	if len(all) != 5 {
		t.Errorf("agents = %v", all)
	}
	agent, err := client.Beta.Agents.Get(ctx, "agent_custom-tools", anthropic.BetaAgentGetParams{})
	if err != nil || agent.Version != 1 || len(agent.Tools) != 2 || agent.Tools[1].Name != "ticket_lookup" {
		t.Errorf("Agents.Get = %+v, %v", agent, err)
	}
	_, err = client.Beta.Agents.Get(ctx, "agent_nope", anthropic.BetaAgentGetParams{})
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("Agents.Get(unknown) = %v", err)
	}

	id := cp.newSession(ctx, "agent_quickstart")
	sess, sc := cp.sdkSession(ctx, id)
	if sess.Agent.ID != "agent_quickstart" || sess.EnvironmentID != DefaultEnvironmentID || sess.Status != anthropic.BetaManagedAgentsSessionStatusIdle ||
		sess.Metadata["perimeter.scenario.status"] != "running" || sc.StepsTotal != 11 {
		t.Errorf("session = %+v, scenario %+v", sess, sc)
	}
	list, err := client.Beta.Sessions.List(ctx, anthropic.BetaSessionListParams{})
	if err != nil || len(list.Data) != 1 || list.Data[0].ID != id {
		t.Errorf("Sessions.List = %v, %v", list, err)
	}
	evs, err := client.Beta.Sessions.Events.List(ctx, id, anthropic.BetaSessionEventListParams{Order: anthropic.BetaSessionEventListParamsOrderAsc})
	if err != nil || len(evs.Data) == 0 || evs.Data[0].Type != "session.status_running" {
		t.Errorf("Events.List = %v, %v", evs, err)
	}

	stats, err := client.Beta.Environments.Work.Stats(ctx, DefaultEnvironmentID, anthropic.BetaEnvironmentWorkStatsParams{})
	if err != nil || stats.Depth != 1 || stats.Pending != 0 || stats.OldestQueuedAt == "" {
		t.Errorf("Work.Stats = %+v, %v", stats, err)
	}
	work, err := client.Beta.Environments.Work.List(ctx, DefaultEnvironmentID, anthropic.BetaEnvironmentWorkListParams{})
	if err != nil || len(work.Data) != 1 || work.Data[0].Data.ID != id || work.Data[0].State != anthropic.BetaSelfHostedWorkStateQueued {
		t.Fatalf("Work.List = %v, %v", work, err)
	}
	wid := work.Data[0].ID
	updated, err := client.Beta.Environments.Work.Update(ctx, wid, anthropic.BetaEnvironmentWorkUpdateParams{
		EnvironmentID: DefaultEnvironmentID, BetaSelfHostedWorkUpdateRequest: anthropic.BetaSelfHostedWorkUpdateRequestParam{Metadata: map[string]string{"owner": "ops"}},
	})
	if err != nil || updated.Metadata["owner"] != "ops" {
		t.Errorf("Work.Update = %+v, %v", updated, err)
	}
	// Stop answers 204 with no body, like the real API; the generated method
	// declares a work object, so read the raw response as the SDK's own
	// worker does.
	var raw *http.Response
	_, err = client.Beta.Environments.Work.Stop(ctx, wid, anthropic.BetaEnvironmentWorkStopParams{EnvironmentID: DefaultEnvironmentID}, option.WithResponseBodyInto(&raw))
	if err != nil || raw.StatusCode != http.StatusNoContent {
		t.Errorf("Work.Stop = %v, %v", raw, err)
	}
	if raw != nil {
		raw.Body.Close()
	}
	w, err := client.Beta.Environments.Work.Get(ctx, wid, anthropic.BetaEnvironmentWorkGetParams{EnvironmentID: DefaultEnvironmentID})
	if err != nil || w.State != anthropic.BetaSelfHostedWorkStateStopped {
		t.Errorf("Work.Get = %+v, %v", w, err)
	}
	_, err = client.Beta.Environments.Work.Stop(ctx, wid, anthropic.BetaEnvironmentWorkStopParams{EnvironmentID: DefaultEnvironmentID}, option.WithResponseBodyInto(&raw))
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Errorf("second Work.Stop = %v", err)
	}
}

// TestSDKWorkerFinishesASessionAfterAControlPlaneRestart restarts the
// control plane mid-session; a worker started afterwards finishes it.
func TestSDKWorkerFinishesASessionAfterAControlPlaneRestart(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "cp.db")
	cp := startCP(t, Options{ScenarioDir: examplesDir(), Database: db, TTL: 2 * time.Second})
	id := cp.newSession(ctx, "agent_quickstart")
	// A worker claims the item and answers the first call, then everything
	// goes down.
	_, tok := cp.claim()
	evs := cp.events(id)
	use := lastOfType(t, evs, "agent.tool_use")
	workdir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(workdir, "hello"), 0o700); err != nil {
		t.Fatal(err)
	}
	content := use["input"].(map[string]any)["content"].(string)
	if err := os.WriteFile(filepath.Join(workdir, "hello", "greet.sh"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cp.mustDo(200, "POST", "/v1/sessions/"+id+"/events", tokenCred(tok), sendEvents(textResult(use["id"].(string), "wrote 32 bytes to hello/greet.sh", false)))
	if err := cp.srv.Close(); err != nil {
		t.Fatal(err)
	}
	cp.ts.Close()

	cp2 := startCP(t, Options{ScenarioDir: examplesDir(), Database: db, TTL: 2 * time.Second})
	// The old lease lapses (nobody heartbeats it) and a new worker takes over.
	cp2.runWorker(environments.EnvironmentWorkerOptions{Workdir: workdir})
	cp2.waitPassed(ctx, id)
	cp2.waitWorkStopped(ctx, id)
}
