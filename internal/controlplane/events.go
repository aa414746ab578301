package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
)

// sendable are the event types a client may post.
var sendable = []string{
	"user.message", "user.interrupt", "user.tool_confirmation", "user.tool_result",
	"user.custom_tool_result", "user.define_outcome", "system.message",
}

// incoming is a client event that passed validation.
type incoming struct {
	typ     string
	fields  map[string]any // as sent, without id, type and processed_at
	ref     string         // the tool-use event a result or confirmation names
	text    string         // the text of a message or result
	isError bool
	allow   bool
	// sessionWide is a user.interrupt without session_thread_id.
	sessionWide bool
}

// callState is what the log says about one tool call.
type callState struct {
	answered   string // id of the result event, if any
	confirmed  string // id of the confirmation event, if any
	allowed    bool   // the confirmation's verdict
	permission string // the call's evaluated_permission
}

// validateEvents checks client events against the session's log, including
// events earlier in the same batch. where names the list in messages.
func (s *Server) validateEvents(ctx context.Context, tx *sql.Tx, sess *sessionRow, raw []any, where string) ([]incoming, error) {
	batch := map[string]*callState{} // calls touched by this batch
	var out []incoming
	for i, r := range raw {
		at := fmt.Sprintf("%s[%d]", where, i)
		fields, ok := r.(map[string]any)
		if !ok {
			return nil, errInvalid("%s must be an object with a type, such as {\"type\":\"user.message\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}", at)
		}
		typ, _ := fields["type"].(string)
		if !slices.Contains(sendable, typ) {
			if typ == "" {
				return nil, errInvalid("%s.type is required; clients send %s", at, strings.Join(sendable, ", "))
			}
			return nil, errInvalid("%s.type %q cannot be sent; clients send %s", at, typ, strings.Join(sendable, ", "))
		}
		fields = stripServerFields(fields)
		in := incoming{typ: typ, fields: fields}
		var err error
		switch typ {
		case "user.message":
			in.text, err = contentText(fields, at, true)
		case "user.interrupt":
			_, threaded := fields["session_thread_id"]
			in.sessionWide = !threaded || fields["session_thread_id"] == nil
		case "system.message":
			_, err = contentText(fields, at, true)
		case "user.tool_result", "user.custom_tool_result":
			err = s.validateResult(ctx, tx, sess, &in, at, batch)
		case "user.tool_confirmation":
			err = s.validateConfirmation(ctx, tx, sess, &in, at, batch)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// stripServerFields drops what the server assigns.
func stripServerFields(f map[string]any) map[string]any {
	out := make(map[string]any, len(f))
	for k, v := range f {
		switch k {
		case "id", "type", "processed_at":
		default:
			out[k] = v
		}
	}
	return out
}

// contentText checks a content array and joins its text blocks.
func contentText(f map[string]any, at string, required bool) (string, error) {
	c, present := f["content"]
	if !present || c == nil {
		if required {
			return "", errInvalid("%s.content is required: an array of content blocks such as [{\"type\":\"text\",\"text\":\"hi\"}]", at)
		}
		return "", nil
	}
	blocks, ok := c.([]any)
	if !ok || (required && len(blocks) == 0) {
		return "", errInvalid("%s.content must be a non-empty array of content blocks such as [{\"type\":\"text\",\"text\":\"hi\"}]", at)
	}
	var texts []string
	for j, b := range blocks {
		m, ok := b.(map[string]any)
		typ, _ := m["type"].(string)
		if !ok || typ == "" {
			return "", errInvalid("%s.content[%d] must be a content block object with a type", at, j)
		}
		if typ == "text" {
			t, ok := m["text"].(string)
			if !ok || t == "" {
				return "", errInvalid("%s.content[%d].text must be a non-empty string", at, j)
			}
			texts = append(texts, t)
		}
	}
	return strings.Join(texts, "\n"), nil
}

// call loads the tool-use event id names and what the log says about it.
func (s *Server) call(ctx context.Context, tx *sql.Tx, sess *sessionRow, id, at, field string, batch map[string]*callState) (*eventRow, *callState, error) {
	if id == "" {
		return nil, nil, errInvalid("%s.%s is required: the id of the tool-use event it answers", at, field)
	}
	ev, err := getEvent(ctx, tx, sess.ID, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, errInvalid("%s.%s %s does not name an event of session %s", at, field, id, sess.ID)
	}
	if err != nil {
		return nil, nil, err
	}
	if st := batch[id]; st != nil {
		return ev, st, nil
	}
	var body struct {
		EvaluatedPermission string `json:"evaluated_permission"`
	}
	_ = json.Unmarshal(ev.Body, &body)
	st := &callState{permission: body.EvaluatedPermission}
	refs, err := eventsByRef(ctx, tx, sess.ID, id)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range refs {
		switch r.Type {
		case "user.tool_result", "user.custom_tool_result":
			st.answered = r.ID
		case "user.tool_confirmation":
			var c struct {
				Result string `json:"result"`
			}
			_ = json.Unmarshal(r.Body, &c)
			st.confirmed, st.allowed = r.ID, c.Result == "allow"
		}
	}
	batch[id] = st
	return ev, st, nil
}

func (s *Server) validateResult(ctx context.Context, tx *sql.Tx, sess *sessionRow, in *incoming, at string, batch map[string]*callState) error {
	field, want, other := "tool_use_id", "agent.tool_use", "user.custom_tool_result with custom_tool_use_id"
	if in.typ == "user.custom_tool_result" {
		field, want, other = "custom_tool_use_id", "agent.custom_tool_use", "user.tool_result with tool_use_id"
	}
	id, _ := in.fields[field].(string)
	ev, st, err := s.call(ctx, tx, sess, id, at, field, batch)
	if err != nil {
		return err
	}
	if ev.Type != want {
		if ev.Type == "agent.tool_use" || ev.Type == "agent.custom_tool_use" {
			return errInvalid("%s: %s is an %s event; answer it with %s", at, id, ev.Type, other)
		}
		return errInvalid("%s: %s is a %s event, not a tool call", at, id, ev.Type)
	}
	switch {
	case st.answered != "":
		return errConflict("%s: tool call %s already has a result (event %s); each call is answered once", at, id, st.answered)
	case st.permission == scenario.PermissionDeny:
		return errConflict("%s: tool call %s was denied by policy; it takes no result", at, id)
	case st.confirmed != "" && !st.allowed:
		return errConflict("%s: tool call %s was denied (event %s); it takes no result", at, id, st.confirmed)
	case st.permission == scenario.PermissionAsk && st.confirmed == "":
		return errInvalid("%s: tool call %s awaits a user.tool_confirmation; it may run, and be answered, only after an allow", at, id)
	}
	if v, ok := in.fields["is_error"]; ok && v != nil {
		b, ok := v.(bool)
		if !ok {
			return errInvalid("%s.is_error must be a boolean", at)
		}
		in.isError = b
	}
	text, err := contentText(in.fields, at, false)
	if err != nil {
		return err
	}
	in.ref, in.text = id, text
	st.answered = "(this request)"
	return nil
}

func (s *Server) validateConfirmation(ctx context.Context, tx *sql.Tx, sess *sessionRow, in *incoming, at string, batch map[string]*callState) error {
	id, _ := in.fields["tool_use_id"].(string)
	ev, st, err := s.call(ctx, tx, sess, id, at, "tool_use_id", batch)
	if err != nil {
		return err
	}
	if ev.Type != "agent.tool_use" && ev.Type != "agent.custom_tool_use" {
		return errInvalid("%s: %s is a %s event, not a tool call", at, id, ev.Type)
	}
	result, _ := in.fields["result"].(string)
	switch {
	case result != "allow" && result != "deny":
		return errInvalid("%s.result must be \"allow\" or \"deny\"", at)
	case st.permission != scenario.PermissionAsk:
		perm := st.permission
		if perm == "" {
			perm = scenario.PermissionAllow
		}
		return errInvalid("%s: tool call %s does not await confirmation (evaluated_permission %s)", at, id, perm)
	case st.confirmed != "":
		return errConflict("%s: tool call %s was already confirmed (event %s)", at, id, st.confirmed)
	case st.answered != "":
		return errConflict("%s: tool call %s already has a result (event %s)", at, id, st.answered)
	}
	if v, ok := in.fields["deny_message"]; ok && v != nil {
		if _, ok := v.(string); !ok {
			return errInvalid("%s.deny_message must be a string", at)
		}
	}
	in.ref, in.allow = id, result == "allow"
	st.confirmed, st.allowed = "(this request)", in.allow
	return nil
}

func (s *Server) sendEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	id := r.PathValue("session")
	if err := p.allow("sending session events", credOperator, credEnvironment, credItem); err != nil {
		return err
	}
	if err := p.forSession(id); err != nil {
		return err
	}
	var body struct {
		Events *[]any `json:"events"`
	}
	if err := decodeBody(r, &body, false); err != nil {
		return err
	}
	if body.Events == nil || len(*body.Events) == 0 {
		return errInvalid("events is required: {\"events\": [{\"type\": \"user.message\", \"content\": [{\"type\": \"text\", \"text\": \"hi\"}]}]}")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		row     *sessionRow
		stored  []json.RawMessage
		host    *agentHost
		results []scenario.Result
		queued  bool
		before  scenario.Status
	)
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		if row, err = s.sessionOr404(ctx, tx, id); err != nil {
			return err
		}
		if row.Status == sessionTerminated {
			return errInvalid("session %s is terminated and accepts no events; create a new session", id)
		}
		events, err := s.validateEvents(ctx, tx, row, *body.Events, "events")
		if err != nil {
			return err
		}
		before = row.Progress.Status
		host = &agentHost{s: s, ctx: ctx, tx: tx, sess: row}
		var run *scenario.Runner
		if sc := s.scenarioFor(row); sc != nil {
			run = scenario.NewRunner(sc, row.Progress, host, s.stamp())
		}
		for _, in := range events {
			ev, err := host.append(in.typ, in.fields)
			if err != nil {
				return err
			}
			stored = append(stored, ev.Body)
			if in.typ == "user.message" {
				if queued, err = s.ensureWork(ctx, tx, row); err != nil {
					return err
				}
			}
			if run != nil {
				if err := feed(run, in); err != nil {
					return err
				}
			}
		}
		if run != nil {
			results = run.Results()
		}
		return saveSession(ctx, tx, row)
	})
	if err != nil {
		return err
	}
	if queued {
		s.notifyQueue()
	}
	s.hub.publish(host.out)
	s.logResults(row, results, before)
	writeJSON(w, http.StatusOK, map[string]any{"data": stored})
	return nil
}

// feed hands one client event to the session's scripted agent.
func feed(run *scenario.Runner, in incoming) error {
	switch in.typ {
	case "user.message":
		return run.UserMessage(in.text)
	case "user.tool_result", "user.custom_tool_result":
		return run.ToolResult(in.ref, in.isError, in.text)
	case "user.tool_confirmation":
		return run.Confirmation(in.ref, in.allow)
	case "user.interrupt":
		if in.sessionWide {
			return run.Interrupt()
		}
	}
	return nil
}

// ensureWork queues a new work item for a session that has none live, as
// the real service does when a dormant session receives a message.
func (s *Server) ensureWork(ctx context.Context, tx *sql.Tx, row *sessionRow) (bool, error) {
	live, err := workWhere(ctx, tx, `session_id = ? AND state IN (?, ?, ?) ORDER BY seq LIMIT 1`, row.ID, stateQueued, stateStarting, stateActive)
	if err != nil || len(live) > 0 {
		return false, err
	}
	_, err = s.queueWork(ctx, tx, row)
	return err == nil, err
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	id := r.PathValue("session")
	if err := p.allow("listing session events", credOperator, credEnvironment, credItem); err != nil {
		return err
	}
	if err := p.forSession(id); err != nil {
		return err
	}
	limit, cursor, err := pageParams(r, 100, 1000)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	eq := eventQuery{SessionID: id, Cursor: cursor, Limit: limit, MaxBytes: maxPageBytes}
	switch q.Get("order") {
	case "", "asc":
	case "desc":
		eq.Desc = true
	default:
		return errInvalid("order is %q; use asc or desc", q.Get("order"))
	}
	eq.Types = append(q["types[]"], q["types"]...)
	if _, err := s.sessionOr404(ctx, s.db, id); err != nil {
		return err
	}
	evs, more, err := listEvents(ctx, s.db, eq)
	if err != nil {
		return err
	}
	data := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		data = append(data, ev.Body)
	}
	var next *string
	if more {
		c := encodeCursor(evs[len(evs)-1].Seq)
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_page": next})
	return nil
}

// maxPageBytes bounds the events of one list page: a page ends before the
// event that would take it past this, but always holds one event. The SDK
// reads a session's whole log with limit=1000 and follows next_page, so a
// long session of large tool results costs more pages, not one response of
// unbounded size.
const maxPageBytes = 8 << 20
