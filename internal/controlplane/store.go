package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
	"github.com/perimeterhq/perimeter/internal/sqlitedb"
)

// tsLayout is every timestamp the control plane stores and returns: RFC 3339
// in UTC with fixed-width nanoseconds, so that text order is time order.
const tsLayout = "2006-01-02T15:04:05.000000000Z"

func formatTime(t time.Time) string { return t.UTC().Format(tsLayout) }

// nullTime is a nullable timestamp column: zero is NULL.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return formatTime(t)
}

func parseTime(s sql.NullString) (time.Time, error) {
	if !s.Valid || s.String == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s.String)
	if err != nil {
		return time.Time{}, fmt.Errorf("stored timestamp %q: %w", s.String, err)
	}
	return t, nil
}

// timeJSON renders a nullable timestamp for a response.
func timeJSON(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := formatTime(t)
	return &s
}

const schema = `
CREATE TABLE IF NOT EXISTS environments (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	id          TEXT NOT NULL UNIQUE,
	name        TEXT NOT NULL,
	description TEXT NOT NULL,
	config_type TEXT NOT NULL,
	scope       TEXT NOT NULL,
	metadata    TEXT NOT NULL,
	created_at  TEXT NOT NULL,
	updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
	seq            INTEGER PRIMARY KEY AUTOINCREMENT,
	id             TEXT NOT NULL UNIQUE,
	environment_id TEXT NOT NULL,
	agent_id       TEXT NOT NULL,
	agent          TEXT NOT NULL, -- JSON snapshot of the agent at creation
	title          TEXT,
	metadata       TEXT NOT NULL,
	vault_ids      TEXT NOT NULL,
	status         TEXT NOT NULL,
	progress       TEXT NOT NULL, -- scenario.Progress JSON
	deadline       TEXT,          -- when the outstanding call times out
	created_at     TEXT NOT NULL,
	updated_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_deadline ON sessions(deadline) WHERE deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         TEXT NOT NULL UNIQUE,
	session_id TEXT NOT NULL,
	type       TEXT NOT NULL,
	ref        TEXT,          -- the tool-use event id a result or confirmation answers
	body       TEXT NOT NULL  -- the whole event as served
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, seq);
CREATE INDEX IF NOT EXISTS events_ref ON events(session_id, ref) WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS work (
	seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
	id                  TEXT NOT NULL UNIQUE,
	environment_id      TEXT NOT NULL,
	session_id          TEXT NOT NULL,
	state               TEXT NOT NULL,
	sessions_token      TEXT NOT NULL UNIQUE,
	metadata            TEXT NOT NULL,
	heartbeat           TEXT,             -- the lease's compare token
	ttl_seconds         INTEGER NOT NULL,
	created_at          TEXT NOT NULL,
	polled_at           TEXT,             -- set while pending (polled, not acked)
	acknowledged_at     TEXT,
	started_at          TEXT,
	latest_heartbeat_at TEXT,
	lease_updated_at    TEXT,
	stop_requested_at   TEXT,
	stopped_at          TEXT
);
CREATE INDEX IF NOT EXISTS work_queue ON work(environment_id, state, seq);
CREATE INDEX IF NOT EXISTS work_session ON work(session_id);
`

// openDB opens (creating if needed) the SQLite database at path; "" or
// ":memory:" is a private in-memory database.
//
// One connection serves every query: SQLite has a single writer anyway, an
// in-memory database exists only on its connection, and it rules out
// SQLITE_BUSY. Callers must therefore finish a query (close its rows) before
// starting another outside the same transaction.
func openDB(path string) (*sql.DB, error) {
	var db *sql.DB
	var err error
	if path == "" || path == ":memory:" {
		db, err = sql.Open("sqlite", ":memory:")
	} else {
		db, err = sqlitedb.Open(path, 5000, "foreign_keys(ON)")
	}
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema in %s: %w", path, err)
	}
	return db, nil
}

// querier is a *sql.DB or a *sql.Tx.
// collect scans every row with scan.
func collect[T any](rows *sql.Rows, scan func(sc interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func marshalString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only plain maps and slices reach here
	}
	return string(b)
}

// --- environments ---

type environment struct {
	ID, Name, Description, ConfigType, Scope string
	Metadata                                 map[string]string
	CreatedAt, UpdatedAt                     time.Time
}

func insertEnvironment(ctx context.Context, q querier, e *environment) error {
	_, err := q.ExecContext(ctx, `INSERT INTO environments (id, name, description, config_type, scope, metadata, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.Name, e.Description, e.ConfigType, e.Scope, marshalString(e.Metadata), formatTime(e.CreatedAt), formatTime(e.UpdatedAt))
	if err != nil {
		return fmt.Errorf("insert environment %s: %w", e.ID, err)
	}
	return nil
}

func updateEnvironment(ctx context.Context, q querier, e *environment) error {
	_, err := q.ExecContext(ctx, `UPDATE environments SET name = ?, description = ?, metadata = ?, updated_at = ? WHERE id = ?`,
		e.Name, e.Description, marshalString(e.Metadata), formatTime(e.UpdatedAt), e.ID)
	if err != nil {
		return fmt.Errorf("update environment %s: %w", e.ID, err)
	}
	return nil
}

const envColumns = `seq, id, name, description, config_type, scope, metadata, created_at, updated_at`

func scanEnvironment(sc interface{ Scan(...any) error }) (int64, *environment, error) {
	var (
		e        environment
		seq      int64
		md       string
		cat, uat sql.NullString
	)
	if err := sc.Scan(&seq, &e.ID, &e.Name, &e.Description, &e.ConfigType, &e.Scope, &md, &cat, &uat); err != nil {
		return 0, nil, err
	}
	var err error
	if e.CreatedAt, err = parseTime(cat); err != nil {
		return 0, nil, err
	}
	if e.UpdatedAt, err = parseTime(uat); err != nil {
		return 0, nil, err
	}
	if err := json.Unmarshal([]byte(md), &e.Metadata); err != nil {
		return 0, nil, fmt.Errorf("environment %s metadata: %w", e.ID, err)
	}
	return seq, &e, nil
}

func getEnvironment(ctx context.Context, q querier, id string) (*environment, error) {
	_, e, err := scanEnvironment(q.QueryRowContext(ctx, `SELECT `+envColumns+` FROM environments WHERE id = ?`, id))
	if err != nil {
		return nil, fmt.Errorf("get environment %s: %w", id, err)
	}
	return e, nil
}

// listEnvironments returns up to limit environments after seq, oldest first.
func listEnvironments(ctx context.Context, q querier, after int64, limit int) ([]int64, []*environment, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+envColumns+` FROM environments WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("list environments: %w", err)
	}
	defer rows.Close()
	var (
		seqs []int64
		out  []*environment
	)
	for rows.Next() {
		seq, e, err := scanEnvironment(rows)
		if err != nil {
			return nil, nil, fmt.Errorf("list environments: %w", err)
		}
		seqs, out = append(seqs, seq), append(out, e)
	}
	return seqs, out, rows.Err()
}

// --- sessions ---

type sessionRow struct {
	Seq                        int64
	ID, EnvironmentID, AgentID string
	Agent                      json.RawMessage
	Title                      *string
	Metadata                   map[string]string
	VaultIDs                   []string
	Status                     string
	Progress                   *scenario.Progress
	CreatedAt, UpdatedAt       time.Time
}

func insertSession(ctx context.Context, q querier, s *sessionRow) error {
	res, err := q.ExecContext(ctx, `INSERT INTO sessions (id, environment_id, agent_id, agent, title, metadata, vault_ids, status, progress, deadline, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.EnvironmentID, s.AgentID, string(s.Agent), s.Title, marshalString(s.Metadata), marshalString(s.VaultIDs),
		s.Status, marshalString(s.Progress), nullTime(s.Progress.Deadline), formatTime(s.CreatedAt), formatTime(s.UpdatedAt))
	if err != nil {
		return fmt.Errorf("insert session %s: %w", s.ID, err)
	}
	s.Seq, err = res.LastInsertId()
	return err
}

// saveSession writes the parts of a session that change after creation.
func saveSession(ctx context.Context, q querier, s *sessionRow) error {
	_, err := q.ExecContext(ctx, `UPDATE sessions SET status = ?, progress = ?, deadline = ?, updated_at = ? WHERE id = ?`,
		s.Status, marshalString(s.Progress), nullTime(s.Progress.Deadline), formatTime(s.UpdatedAt), s.ID)
	if err != nil {
		return fmt.Errorf("save session %s: %w", s.ID, err)
	}
	return nil
}

const sessionColumns = `seq, id, environment_id, agent_id, agent, title, metadata, vault_ids, status, progress, created_at, updated_at`

func scanSession(sc interface{ Scan(...any) error }) (*sessionRow, error) {
	var (
		s                       sessionRow
		agent, md, vaults, prog string
		title, cat, uat         sql.NullString
	)
	if err := sc.Scan(&s.Seq, &s.ID, &s.EnvironmentID, &s.AgentID, &agent, &title, &md, &vaults, &s.Status, &prog, &cat, &uat); err != nil {
		return nil, err
	}
	s.Agent = json.RawMessage(agent)
	if title.Valid {
		s.Title = &title.String
	}
	var err error
	if s.CreatedAt, err = parseTime(cat); err != nil {
		return nil, err
	}
	if s.UpdatedAt, err = parseTime(uat); err != nil {
		return nil, err
	}
	if err := errors.Join(
		json.Unmarshal([]byte(md), &s.Metadata),
		json.Unmarshal([]byte(vaults), &s.VaultIDs),
		json.Unmarshal([]byte(prog), &s.Progress),
	); err != nil {
		return nil, fmt.Errorf("session %s: %w", s.ID, err)
	}
	return &s, nil
}

func getSession(ctx context.Context, q querier, id string) (*sessionRow, error) {
	s, err := scanSession(q.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = ?`, id))
	if err != nil {
		return nil, fmt.Errorf("get session %s: %w", id, err)
	}
	return s, nil
}

// listSessions returns up to limit sessions, newest first, older than
// before (0 = from the newest).
func listSessions(ctx context.Context, q querier, before int64, limit int) ([]*sessionRow, error) {
	if before <= 0 {
		before = 1 << 62
	}
	rows, err := q.QueryContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE seq < ? ORDER BY seq DESC LIMIT ?`, before, limit)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	defer rows.Close()
	return collect(rows, scanSession)
}

// sessionsDue returns the ids of sessions whose outstanding call's deadline
// is at or before now.
func sessionsDue(ctx context.Context, q querier, now time.Time) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT id FROM sessions WHERE deadline IS NOT NULL AND deadline <= ? ORDER BY seq`, formatTime(now))
	if err != nil {
		return nil, fmt.Errorf("sessions due: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// --- events ---

type eventRow struct {
	Seq                      int64
	ID, SessionID, Type, Ref string
	Body                     json.RawMessage
}

func insertEvent(ctx context.Context, q querier, e *eventRow) error {
	var ref any
	if e.Ref != "" {
		ref = e.Ref
	}
	res, err := q.ExecContext(ctx, `INSERT INTO events (id, session_id, type, ref, body) VALUES (?, ?, ?, ?, ?)`,
		e.ID, e.SessionID, e.Type, ref, string(e.Body))
	if err != nil {
		return fmt.Errorf("insert event %s: %w", e.ID, err)
	}
	e.Seq, err = res.LastInsertId()
	return err
}

const eventColumns = `seq, id, session_id, type, COALESCE(ref, ''), body`

func scanEvent(sc interface{ Scan(...any) error }) (*eventRow, error) {
	var (
		e    eventRow
		body string
	)
	if err := sc.Scan(&e.Seq, &e.ID, &e.SessionID, &e.Type, &e.Ref, &body); err != nil {
		return nil, err
	}
	e.Body = json.RawMessage(body)
	return &e, nil
}

// getEvent returns event id of a session, or sql.ErrNoRows.
func getEvent(ctx context.Context, q querier, sessionID, id string) (*eventRow, error) {
	return scanEvent(q.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM events WHERE session_id = ? AND id = ?`, sessionID, id))
}

// eventsByRef returns the events of a session that answer or confirm the
// tool-use event ref, oldest first.
func eventsByRef(ctx context.Context, q querier, sessionID, ref string) ([]*eventRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+eventColumns+` FROM events WHERE session_id = ? AND ref = ? ORDER BY seq`, sessionID, ref)
	if err != nil {
		return nil, fmt.Errorf("events answering %s: %w", ref, err)
	}
	defer rows.Close()
	return collect(rows, scanEvent)
}

// eventQuery selects a page of a session's log.
type eventQuery struct {
	SessionID string
	Desc      bool
	Cursor    int64 // exclusive bound on seq in the direction of travel; 0 = from the start
	Limit     int   // most events in the page
	MaxBytes  int   // the page ends before the event that would take its bodies past this, but holds at least one; 0 = no bound
	Types     []string
}

// listEvents returns a page of a session's log and whether more follow. It
// reads at most one event beyond the page.
func listEvents(ctx context.Context, q querier, eq eventQuery) ([]*eventRow, bool, error) {
	var (
		where = []string{"session_id = ?"}
		args  = []any{eq.SessionID}
		order = "ASC"
	)
	switch {
	case eq.Desc:
		order = "DESC"
		if eq.Cursor > 0 {
			where, args = append(where, "seq < ?"), append(args, eq.Cursor)
		}
	case eq.Cursor > 0:
		where, args = append(where, "seq > ?"), append(args, eq.Cursor)
	}
	if len(eq.Types) > 0 {
		where = append(where, "type IN (?"+strings.Repeat(", ?", len(eq.Types)-1)+")")
		for _, t := range eq.Types {
			args = append(args, t)
		}
	}
	args = append(args, eq.Limit+1)
	rows, err := q.QueryContext(ctx, `SELECT `+eventColumns+` FROM events WHERE `+strings.Join(where, " AND ")+` ORDER BY seq `+order+` LIMIT ?`, args...)
	if err != nil {
		return nil, false, fmt.Errorf("list events of %s: %w", eq.SessionID, err)
	}
	defer rows.Close()
	var (
		page []*eventRow
		size int
	)
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, false, fmt.Errorf("list events of %s: %w", eq.SessionID, err)
		}
		if len(page) == eq.Limit || (len(page) > 0 && eq.MaxBytes > 0 && size+len(e.Body) > eq.MaxBytes) {
			return page, true, nil
		}
		page, size = append(page, e), size+len(e.Body)
	}
	return page, false, rows.Err()
}

// --- work ---

type workRow struct {
	Seq                                 int64
	ID, EnvironmentID, SessionID, State string
	Token                               string // the sessions token in the item's secret
	Metadata                            map[string]string
	Heartbeat                           string // the lease's compare token; "" = never heartbeated
	TTLSeconds                          int64
	CreatedAt, PolledAt, AcknowledgedAt time.Time
	StartedAt, LatestHeartbeatAt        time.Time
	LeaseUpdatedAt                      time.Time
	StopRequestedAt, StoppedAt          time.Time
}

func insertWork(ctx context.Context, q querier, w *workRow) error {
	res, err := q.ExecContext(ctx, `INSERT INTO work (id, environment_id, session_id, state, sessions_token, metadata, ttl_seconds, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		w.ID, w.EnvironmentID, w.SessionID, w.State, w.Token, marshalString(w.Metadata), w.TTLSeconds, formatTime(w.CreatedAt))
	if err != nil {
		return fmt.Errorf("insert work %s: %w", w.ID, err)
	}
	w.Seq, err = res.LastInsertId()
	return err
}

// saveWork writes every mutable column of w.
func saveWork(ctx context.Context, q querier, w *workRow) error {
	var hb any
	if w.Heartbeat != "" {
		hb = w.Heartbeat
	}
	_, err := q.ExecContext(ctx, `UPDATE work SET state = ?, metadata = ?, heartbeat = ?, ttl_seconds = ?, polled_at = ?, acknowledged_at = ?,
		started_at = ?, latest_heartbeat_at = ?, lease_updated_at = ?, stop_requested_at = ?, stopped_at = ? WHERE id = ?`,
		w.State, marshalString(w.Metadata), hb, w.TTLSeconds, nullTime(w.PolledAt), nullTime(w.AcknowledgedAt),
		nullTime(w.StartedAt), nullTime(w.LatestHeartbeatAt), nullTime(w.LeaseUpdatedAt), nullTime(w.StopRequestedAt), nullTime(w.StoppedAt), w.ID)
	if err != nil {
		return fmt.Errorf("save work %s: %w", w.ID, err)
	}
	return nil
}

const workColumns = `seq, id, environment_id, session_id, state, sessions_token, metadata, COALESCE(heartbeat, ''), ttl_seconds,
	created_at, polled_at, acknowledged_at, started_at, latest_heartbeat_at, lease_updated_at, stop_requested_at, stopped_at`

func scanWork(sc interface{ Scan(...any) error }) (*workRow, error) {
	var (
		w  workRow
		md string
		ts [8]sql.NullString
	)
	if err := sc.Scan(&w.Seq, &w.ID, &w.EnvironmentID, &w.SessionID, &w.State, &w.Token, &md, &w.Heartbeat, &w.TTLSeconds,
		&ts[0], &ts[1], &ts[2], &ts[3], &ts[4], &ts[5], &ts[6], &ts[7]); err != nil {
		return nil, err
	}
	dst := []*time.Time{&w.CreatedAt, &w.PolledAt, &w.AcknowledgedAt, &w.StartedAt, &w.LatestHeartbeatAt, &w.LeaseUpdatedAt, &w.StopRequestedAt, &w.StoppedAt}
	for i, d := range dst {
		t, err := parseTime(ts[i])
		if err != nil {
			return nil, fmt.Errorf("work %s: %w", w.ID, err)
		}
		*d = t
	}
	if err := json.Unmarshal([]byte(md), &w.Metadata); err != nil {
		return nil, fmt.Errorf("work %s metadata: %w", w.ID, err)
	}
	return &w, nil
}

func getWork(ctx context.Context, q querier, id string) (*workRow, error) {
	w, err := scanWork(q.QueryRowContext(ctx, `SELECT `+workColumns+` FROM work WHERE id = ?`, id))
	if err != nil {
		return nil, fmt.Errorf("get work %s: %w", id, err)
	}
	return w, nil
}

func workByToken(ctx context.Context, q querier, token string) (*workRow, error) {
	return scanWork(q.QueryRowContext(ctx, `SELECT `+workColumns+` FROM work WHERE sessions_token = ?`, token))
}

// workWhere returns the work items matching tail, the rest of the query
// after WHERE (conditions, ORDER BY, LIMIT).
func workWhere(ctx context.Context, q querier, tail string, args ...any) ([]*workRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+workColumns+` FROM work WHERE `+tail, args...)
	if err != nil {
		return nil, fmt.Errorf("query work: %w", err)
	}
	defer rows.Close()
	return collect(rows, scanWork)
}
