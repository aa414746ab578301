package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
)

// scenarioStatusKey is the session metadata key mirroring the scenario status.
const scenarioStatusKey = "perimeter.scenario.status"

// Session statuses.
const (
	sessionIdle       = "idle"
	sessionRunning    = "running"
	sessionTerminated = "terminated"
)

type sessionJSON struct {
	ID                 string            `json:"id"`
	Type               string            `json:"type"`
	Status             string            `json:"status"`
	EnvironmentID      string            `json:"environment_id"`
	Agent              json.RawMessage   `json:"agent"`
	Title              *string           `json:"title"`
	Metadata           map[string]string `json:"metadata"`
	Resources          []any             `json:"resources"`
	VaultIDs           []string          `json:"vault_ids"`
	Usage              map[string]any    `json:"usage"`
	Stats              map[string]any    `json:"stats"`
	OutcomeEvaluations []any             `json:"outcome_evaluations"`
	Budget             any               `json:"budget"`
	DeploymentID       *string           `json:"deployment_id"`
	CreatedAt          string            `json:"created_at"`
	UpdatedAt          string            `json:"updated_at"`
	ArchivedAt         *string           `json:"archived_at"`
	// Scenario is Perimeter's addition: how the scripted agent's run stands.
	Scenario scenario.Summary `json:"scenario"`
}

func renderSession(row *sessionRow) sessionJSON {
	sum := row.Progress.Summary()
	md := maps.Clone(row.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	md[scenarioStatusKey] = string(sum.Status)
	vaults := row.VaultIDs
	if vaults == nil {
		vaults = []string{}
	}
	return sessionJSON{
		ID: row.ID, Type: "session", Status: row.Status, EnvironmentID: row.EnvironmentID,
		Agent: row.Agent, Title: row.Title, Metadata: md, Resources: []any{}, VaultIDs: vaults,
		Usage: map[string]any{
			"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
			"cache_creation": map[string]int{"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
		},
		Stats:              map[string]any{"active_seconds": 0, "duration_seconds": row.UpdatedAt.Sub(row.CreatedAt).Seconds()},
		OutcomeEvaluations: []any{},
		CreatedAt:          formatTime(row.CreatedAt), UpdatedAt: formatTime(row.UpdatedAt),
		Scenario: sum,
	}
}

func (s *Server) sessionOr404(ctx context.Context, q querier, id string) (*sessionRow, error) {
	row, err := getSession(ctx, q, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound("session %s not found", id)
	}
	return row, err
}

type createSessionBody struct {
	Agent         json.RawMessage   `json:"agent"`
	EnvironmentID string            `json:"environment_id"`
	Title         *string           `json:"title"`
	Metadata      map[string]string `json:"metadata"`
	Resources     []json.RawMessage `json:"resources"`
	VaultIDs      []string          `json:"vault_ids"`
	InitialEvents []map[string]any  `json:"initial_events"`
	Budget        json.RawMessage   `json:"budget"`
}

// agentRef reads the agent field: an id, or {type:"agent", id, version}.
func (s *Server) agentRef(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", errInvalid("agent is required: an agent id such as %q, or {\"type\":\"agent\",\"id\":…}; %s", firstAgent(s.agents), s.agentList())
	}
	var id string
	if json.Unmarshal(raw, &id) == nil {
		return id, nil
	}
	var ref struct {
		Type    string          `json:"type"`
		ID      string          `json:"id"`
		Version json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		return "", errInvalid("agent must be an agent id string or {\"type\":\"agent\",\"id\":…,\"version\":1}")
	}
	switch {
	case ref.ID == "":
		return "", errInvalid("agent.id is required; inline agent definitions are not supported by the Perimeter control plane (%s)", s.agentList())
	case ref.Type != "" && ref.Type != "agent":
		return "", errInvalid("agent.type is %q; use \"agent\"", ref.Type)
	case len(ref.Version) > 0 && string(ref.Version) != "null" && string(ref.Version) != "1":
		return "", errInvalid("agent %s has only version 1", ref.ID)
	}
	return ref.ID, nil
}

func firstAgent(agents []agentJSON) string {
	if len(agents) == 0 {
		return "agent_quickstart"
	}
	return agents[0].ID
}

func (s *Server) createSession(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("creating a session", credOperator); err != nil {
		return err
	}
	var body createSessionBody
	if err := decodeBody(r, &body, false); err != nil {
		return err
	}
	agentID, err := s.agentRef(body.Agent)
	if err != nil {
		return err
	}
	agent, ok := s.findAgent(agentID)
	if !ok {
		return errNotFound("agent %s not found; %s", agentID, s.agentList())
	}
	if body.EnvironmentID == "" {
		return errInvalid("environment_id is required (%s always exists)", DefaultEnvironmentID)
	}
	if len(body.Resources) > 0 {
		return errInvalid("resources are not supported by the Perimeter control plane; create the session without them")
	}
	initial := make([]any, len(body.InitialEvents))
	for i, e := range body.InitialEvents {
		initial[i] = e
	}
	sc := s.scenarios[agentID]
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		row     *sessionRow
		emitted []*eventRow
		results []scenario.Result
	)
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := s.selfHostedOr404(ctx, tx, body.EnvironmentID); err != nil {
			return err
		}
		now := s.stamp()
		row = &sessionRow{
			ID: newID("sesn"), EnvironmentID: body.EnvironmentID, AgentID: agentID,
			Agent: mustJSON(agent), Title: body.Title, Metadata: body.Metadata, VaultIDs: body.VaultIDs,
			Status: sessionIdle, Progress: scenario.NewProgress(sc), CreatedAt: now, UpdatedAt: now,
		}
		if row.Metadata == nil {
			row.Metadata = map[string]string{}
		}
		if row.VaultIDs == nil {
			row.VaultIDs = []string{}
		}
		if err := insertSession(ctx, tx, row); err != nil {
			return err
		}
		events, err := s.validateEvents(ctx, tx, row, initial, "initial_events")
		if err != nil {
			return err
		}
		host := &agentHost{s: s, ctx: ctx, tx: tx, sess: row}
		var first *string
		for _, in := range events {
			if _, err := host.append(in.typ, in.fields); err != nil {
				return err
			}
			if in.typ == "user.message" && first == nil {
				first = &in.text
			}
		}
		run := scenario.NewRunner(sc, row.Progress, host, now)
		if err := run.Start(first); err != nil {
			return err
		}
		if _, err := s.queueWork(ctx, tx, row); err != nil {
			return err
		}
		emitted, results = host.out, run.Results()
		return saveSession(ctx, tx, row)
	})
	if err != nil {
		return err
	}
	s.notifyQueue()
	s.hub.publish(emitted)
	s.logResults(row, results, scenario.StatusRunning)
	s.log.Info("session created", slog.String("session_id", row.ID), slog.String("agent", agentID), slog.String("environment_id", row.EnvironmentID))
	writeJSON(w, http.StatusOK, renderSession(row))
	return nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err))
	}
	return b
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	id := r.PathValue("session")
	if err := p.allow("reading a session", credOperator, credEnvironment, credItem); err != nil {
		return err
	}
	if err := p.forSession(id); err != nil {
		return err
	}
	row, err := s.sessionOr404(ctx, s.db, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderSession(row))
	return nil
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("listing sessions", credOperator); err != nil {
		return err
	}
	limit, before, err := pageParams(r, 20, 100)
	if err != nil {
		return err
	}
	rows, err := listSessions(ctx, s.db, before, limit+1)
	if err != nil {
		return err
	}
	data := []sessionJSON{}
	for _, row := range rows[:min(limit, len(rows))] {
		data = append(data, renderSession(row))
	}
	var next *string
	if len(rows) > limit {
		c := encodeCursor(rows[limit-1].Seq)
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_page": next, "prev_page": nil})
	return nil
}

// agentHost is the scenario.Host of one transaction: it appends events to
// the session's log and keeps the session's status in step with them.
type agentHost struct {
	s    *Server
	ctx  context.Context
	tx   *sql.Tx
	sess *sessionRow
	out  []*eventRow // appended, to publish after the commit
}

// Emit appends an event the agent (or the simulated user) produced.
func (h *agentHost) Emit(typ string, fields map[string]any) (string, error) {
	ev, err := h.append(typ, fields)
	if err != nil {
		return "", err
	}
	return ev.ID, nil
}

// append stores one event, stamped with a fresh id and processed_at.
func (h *agentHost) append(typ string, fields map[string]any) (*eventRow, error) {
	now := h.s.stamp()
	body := make(map[string]any, len(fields)+3)
	maps.Copy(body, fields)
	ev := &eventRow{ID: newID("sevt"), SessionID: h.sess.ID, Type: typ}
	body["id"], body["type"], body["processed_at"] = ev.ID, typ, formatTime(now)
	switch typ {
	case "user.tool_result", "user.tool_confirmation":
		ev.Ref, _ = fields["tool_use_id"].(string)
	case "user.custom_tool_result":
		ev.Ref, _ = fields["custom_tool_use_id"].(string)
	case "session.status_running":
		h.sess.Status = sessionRunning
	case "session.status_idle":
		h.sess.Status = sessionIdle
	case "session.status_terminated":
		h.sess.Status = sessionTerminated
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s event: %w", typ, err)
	}
	ev.Body = b
	if err := insertEvent(h.ctx, h.tx, ev); err != nil {
		return nil, err
	}
	h.sess.UpdatedAt = now
	h.out = append(h.out, ev)
	return ev, nil
}

// logResults logs each decided step, and the run's end if it ended now.
func (s *Server) logResults(row *sessionRow, results []scenario.Result, before scenario.Status) {
	for _, res := range results {
		level := slog.LevelInfo
		if !res.Passed {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "scenario step",
			slog.String("session_id", row.ID), slog.String("agent", row.AgentID), slog.Int("step", res.Step),
			slog.String("kind", string(res.Kind)), slog.String("name", res.Name), slog.Bool("passed", res.Passed),
			slog.String("message", res.Message))
	}
	p := row.Progress
	if before == scenario.StatusRunning && p.Status != scenario.StatusRunning {
		msgs := make([]string, len(p.Failures))
		for i, f := range p.Failures {
			msgs[i] = fmt.Sprintf("step %d: %s", f.Step, f.Message)
		}
		s.log.Info("scenario finished", slog.String("session_id", row.ID), slog.String("agent", row.AgentID),
			slog.String("status", string(p.Status)), slog.Int("steps_done", p.StepsDone), slog.Int("steps_total", p.StepsTotal),
			slog.Int("failures", len(p.Failures)), slog.String("failure_messages", strings.Join(msgs, " | ")))
	}
}

// sweep expires leases and result deadlines until Close.
func (s *Server) sweep() {
	defer close(s.done)
	for {
		select {
		case <-s.closing:
			return
		case <-s.sweeper.C:
			if err := s.sweepOnce(context.Background()); err != nil {
				s.log.Error("sweep failed", slog.Any("error", err))
			}
		}
	}
}

func (s *Server) sweepOnce(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	type ended struct {
		row     *sessionRow
		results []scenario.Result
	}
	var (
		emitted  []*eventRow
		endings  []ended
		requeued bool
	)
	err := s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := s.stamp()
		var err error
		if requeued, err = s.expireLeases(ctx, tx, now); err != nil {
			return err
		}
		ids, err := sessionsDue(ctx, tx, now)
		if err != nil {
			return err
		}
		for _, id := range ids {
			row, err := getSession(ctx, tx, id)
			if err != nil {
				return err
			}
			sc := s.scenarioFor(row)
			if sc == nil {
				row.Progress.Deadline = time.Time{}
				if err := saveSession(ctx, tx, row); err != nil {
					return err
				}
				continue
			}
			host := &agentHost{s: s, ctx: ctx, tx: tx, sess: row}
			run := scenario.NewRunner(sc, row.Progress, host, now)
			if err := run.Expire(); err != nil {
				return err
			}
			if err := saveSession(ctx, tx, row); err != nil {
				return err
			}
			emitted = append(emitted, host.out...)
			endings = append(endings, ended{row, run.Results()})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if requeued {
		s.notifyQueue()
	}
	s.hub.publish(emitted)
	for _, e := range endings {
		s.logResults(e.row, e.results, scenario.StatusRunning)
	}
	return nil
}

// scenarioFor returns the scenario of a session, nil if it is no longer
// loaded (then the session's log still works but its agent stays silent).
func (s *Server) scenarioFor(row *sessionRow) *scenario.Scenario {
	sc := s.scenarios[row.AgentID]
	if sc == nil {
		s.log.Warn("session's scenario is not loaded; its agent will not act", slog.String("session_id", row.ID), slog.String("agent", row.AgentID))
	}
	return sc
}
