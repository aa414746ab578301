// Package approval is the policy gate's durable side: every decision about
// a tool call, recorded before the call runs; the approval requests that
// wait for a human; the channels that reach one; and the API reviewers
// decide through.
package approval

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/perimeterhq/perimeter/internal/sqlitedb"
)

// State is where a decision stands.
type State string

const (
	Pending State = "pending"
	Allowed State = "allowed"
	Denied  State = "denied"
)

// Record is one decision about one tool call, keyed by its tool-use event
// id. Input is the exact input the model sent and InputSHA256 its hash; an
// approval is bound to that hash and is used once.
type Record struct {
	ToolUseID   string          `json:"tool_use_id"`
	SessionID   string          `json:"session_id"`
	WorkID      string          `json:"work_id"`
	WorkerID    string          `json:"worker_id"`
	Tool        string          `json:"tool"`
	Input       json.RawMessage `json:"input"`
	InputSHA256 string          `json:"input_sha256"`
	// Policy is what the policy asked for: allow, deny, ask or defer.
	Policy    string   `json:"policy"`
	Rule      string   `json:"rule"`
	Message   string   `json:"message,omitempty"`
	Channels  []string `json:"channels,omitempty"`
	AllowEdit bool     `json:"allow_edit"`

	State State `json:"state"`
	// DecidedBy is "rule:<name>", "default", "platform", "human:<who>" or
	// "timeout".
	DecidedBy string `json:"decided_by,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// EditedInput is the input an approver replaced the model's with.
	EditedInput  json.RawMessage `json:"edited_input,omitempty"`
	EditedSHA256 string          `json:"edited_sha256,omitempty"`

	RequestedAt time.Time `json:"requested_at"`
	Deadline    time.Time `json:"deadline,omitzero"`
	DecidedAt   time.Time `json:"decided_at,omitzero"`
	NotifiedAt  time.Time `json:"notified_at,omitzero"`
	UsedAt      time.Time `json:"used_at,omitzero"`
}

// Errors a decision can meet.
var (
	ErrNotFound        = errors.New("no such approval request")
	ErrNotPending      = errors.New("the request is already decided")
	ErrEditNotAllowed  = errors.New("the rule that asked does not allow approving with an edited input")
	ErrUsed            = errors.New("the approval was already used")
	ErrInputMismatch   = errors.New("the approval was given for a different input")
	ErrDeadlineNotPast = errors.New("the deadline has not passed")
)

// Store keeps the records: SQLite in a worker's state directory, shared by
// the workers on one host, or PostgreSQL, shared by workers anywhere. It is
// safe for concurrent use by goroutines and processes; each state change is
// one conditional UPDATE, so a decision and a timeout racing each other
// cannot both win.
type Store struct {
	db       *sql.DB
	postgres bool
	where    string // for messages: the file or the database
}

const schema = `CREATE TABLE IF NOT EXISTS decisions (
	tool_use_id   TEXT PRIMARY KEY,
	session_id    TEXT NOT NULL,
	work_id       TEXT NOT NULL,
	worker_id     TEXT NOT NULL,
	tool          TEXT NOT NULL,
	input         TEXT NOT NULL,
	input_sha256  TEXT NOT NULL,
	policy        TEXT NOT NULL,
	rule          TEXT NOT NULL,
	message       TEXT NOT NULL DEFAULT '',
	channels      TEXT NOT NULL DEFAULT '',
	allow_edit    BOOLEAN NOT NULL DEFAULT FALSE,
	state         TEXT NOT NULL,
	decided_by    TEXT NOT NULL DEFAULT '',
	reason        TEXT NOT NULL DEFAULT '',
	edited_input  TEXT NOT NULL DEFAULT '',
	edited_sha256 TEXT NOT NULL DEFAULT '',
	requested_at  BIGINT NOT NULL,
	deadline      BIGINT NOT NULL DEFAULT 0,
	decided_at    BIGINT NOT NULL DEFAULT 0,
	notified_at   BIGINT NOT NULL DEFAULT 0,
	used_at       BIGINT NOT NULL DEFAULT 0
)`

// pageIndex serves the list pages (Store.Page) in order.
const pageIndex = `CREATE INDEX IF NOT EXISTS decisions_by_request ON decisions (requested_at, tool_use_id)`

// createSchema creates the table and its index where they are missing.
func createSchema(ctx context.Context, db *sql.DB) error {
	for _, stmt := range []string{schema, pageIndex} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// IsPostgres reports whether a store location is a PostgreSQL URL
// (postgres:// or postgresql://) rather than a directory.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

// OpenAt opens the store at location: a PostgreSQL URL, or a directory
// holding approvals.db.
func OpenAt(ctx context.Context, location string) (*Store, error) {
	if IsPostgres(location) {
		return OpenPostgres(ctx, location)
	}
	return Open(location)
}

// Open opens (creating if needed) the SQLite store in dir/approvals.db.
func Open(dir string) (*Store, error) {
	path := filepath.Join(dir, "approvals.db")
	db, err := sqlitedb.Open(path, 10000)
	if err != nil {
		return nil, fmt.Errorf("open approvals store %s: %w", path, err)
	}
	if err := createSchema(context.Background(), db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open approvals store %s: %w", path, err)
	}
	return &Store{db: db, where: path}, nil
}

// OpenPostgres opens the store in a PostgreSQL database, creating its table
// if needed. The URL's password may instead come from PGPASSWORD or
// ~/.pgpass, as for libpq.
func OpenPostgres(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("approvals store: %w", err)
	}
	where := fmt.Sprintf("postgres %s/%s", cfg.Host, cfg.Database)
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(8)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := createSchema(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open approvals store %s: %w", where, err)
	}
	return &Store{db: db, postgres: true, where: where}, nil
}

// String names where the store is.
func (s *Store) String() string { return s.where }

// exec and query take SQL with ? placeholders, numbered for PostgreSQL.
func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return s.db.ExecContext(ctx, s.rebind(q), args...)
}

func (s *Store) rebind(q string) string {
	if !s.postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Create stores r unless a record for its call exists; it returns the
// stored record and whether it is r. A record created already used (an
// allow decided at once) costs one statement: the gate's every call.
func (s *Store) Create(ctx context.Context, r Record) (Record, bool, error) {
	res, err := s.exec(ctx, `INSERT INTO decisions (tool_use_id, session_id, work_id, worker_id, tool,
		input, input_sha256, policy, rule, message, channels, allow_edit, state, decided_by, reason,
		requested_at, deadline, decided_at, used_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tool_use_id) DO NOTHING`,
		r.ToolUseID, r.SessionID, r.WorkID, r.WorkerID, r.Tool, string(r.Input), r.InputSHA256,
		r.Policy, r.Rule, r.Message, strings.Join(r.Channels, ","), r.AllowEdit, r.State, r.DecidedBy, r.Reason,
		nanos(r.RequestedAt), nanos(r.Deadline), nanos(r.DecidedAt), nanos(r.UsedAt))
	if err != nil {
		return Record{}, false, fmt.Errorf("record decision %s: %w", r.ToolUseID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return r, true, nil
	}
	stored, err := s.Get(ctx, r.ToolUseID)
	return stored, false, err
}

// Get returns the record of a call.
func (s *Store) Get(ctx context.Context, id string) (Record, error) {
	rows, err := s.query(ctx, `WHERE tool_use_id = ?`, id)
	if err != nil {
		return Record{}, err
	}
	if len(rows) == 0 {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return rows[0], nil
}

// List returns the records in a state (all when state is empty), oldest
// first.
func (s *Store) List(ctx context.Context, state State) ([]Record, error) {
	if state == "" {
		return s.query(ctx, `ORDER BY requested_at, tool_use_id`)
	}
	return s.query(ctx, `WHERE state = ? ORDER BY requested_at, tool_use_id`, state)
}

// Page returns at most limit requests in a state ("" for all) in List's
// order, starting after the request afterID ("" for the first), and
// whether more follow. An afterID that names no request is ErrNotFound.
func (s *Store) Page(ctx context.Context, state State, afterID string, limit int) ([]Record, bool, error) {
	var (
		where []string
		args  []any
	)
	if state != "" {
		where, args = append(where, "state = ?"), append(args, state)
	}
	if afterID != "" {
		after, err := s.Get(ctx, afterID)
		if err != nil {
			return nil, false, err
		}
		at := nanos(after.RequestedAt)
		where = append(where, "(requested_at > ? OR (requested_at = ? AND tool_use_id > ?))")
		args = append(args, at, at, afterID)
	}
	q := "ORDER BY requested_at, tool_use_id LIMIT ?"
	if len(where) > 0 {
		q = "WHERE " + strings.Join(where, " AND ") + " " + q
	}
	recs, err := s.query(ctx, q, append(args, limit+1)...)
	if err != nil || len(recs) <= limit {
		return recs, false, err
	}
	return recs[:limit], true, nil
}

// Decide settles a pending request: allowed or denied by a human, with an
// optional edited input (a JSON object) when the rule allows edits. A
// request past its deadline is denied by the timeout instead, and Decide
// fails with ErrNotPending.
func (s *Store) Decide(ctx context.Context, id string, allow bool, by, reason string, edited json.RawMessage, now time.Time) (Record, error) {
	r, err := s.Get(ctx, id)
	if err != nil {
		return Record{}, err
	}
	if r.State != Pending {
		return r, fmt.Errorf("%w: %s was %s by %s", ErrNotPending, id, r.State, r.DecidedBy)
	}
	if !r.Deadline.IsZero() && !now.Before(r.Deadline) {
		// Past the deadline the request is denied, whether or not a
		// worker was waiting to expire it: a late answer must not let
		// the call run when the next worker picks it up.
		if r, err = s.Expire(ctx, id, now); err != nil {
			return r, err
		}
		return r, fmt.Errorf("%w: %s was not decided before its deadline (%s) and is %s by %s",
			ErrNotPending, id, r.Deadline.Format(time.RFC3339), r.State, r.DecidedBy)
	}
	var editedSum string
	if len(edited) > 0 {
		if !allow {
			return r, errors.New("an edited input only goes with an approval")
		}
		if !r.AllowEdit {
			return r, fmt.Errorf("%w (rule %q)", ErrEditNotAllowed, r.Rule)
		}
		var obj map[string]any
		if err := json.Unmarshal(edited, &obj); err != nil || obj == nil {
			return r, errors.New("the edited input must be a JSON object")
		}
		editedSum = sha256Hex(edited)
	}
	state := Denied
	if allow {
		state = Allowed
	}
	res, err := s.exec(ctx, `UPDATE decisions SET state = ?, decided_by = ?, reason = ?, edited_input = ?,
		edited_sha256 = ?, decided_at = ? WHERE tool_use_id = ? AND state = ?`,
		state, by, reason, string(edited), editedSum, nanos(now), id, Pending)
	if err != nil {
		return r, fmt.Errorf("decide %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		r, _ = s.Get(ctx, id)
		return r, fmt.Errorf("%w: %s was %s by %s", ErrNotPending, id, r.State, r.DecidedBy)
	}
	return s.Get(ctx, id)
}

// Expire denies a pending request whose deadline has passed.
func (s *Store) Expire(ctx context.Context, id string, now time.Time) (Record, error) {
	res, err := s.exec(ctx, `UPDATE decisions SET state = ?, decided_by = 'timeout', reason = 'no decision before the deadline',
		decided_at = ? WHERE tool_use_id = ? AND state = ? AND deadline > 0 AND deadline <= ?`,
		Denied, nanos(now), id, Pending, nanos(now))
	if err != nil {
		return Record{}, fmt.Errorf("expire %s: %w", id, err)
	}
	r, err := s.Get(ctx, id)
	if err != nil {
		return r, err
	}
	if n, _ := res.RowsAffected(); n == 0 && r.State == Pending {
		return r, ErrDeadlineNotPast
	}
	return r, nil
}

// Notified marks a request's notifications sent; it reports false when
// they already were.
func (s *Store) Notified(ctx context.Context, id string, now time.Time) (bool, error) {
	res, err := s.exec(ctx, `UPDATE decisions SET notified_at = ? WHERE tool_use_id = ? AND notified_at = 0`, nanos(now), id)
	if err != nil {
		return false, fmt.Errorf("mark %s notified: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// Use consumes an allowed decision for the input hash it was given for.
// An approval runs one call once: a second Use fails with ErrUsed.
func (s *Store) Use(ctx context.Context, id, inputSHA256 string, now time.Time) error {
	res, err := s.exec(ctx, `UPDATE decisions SET used_at = ? WHERE tool_use_id = ? AND state = ? AND used_at = 0 AND input_sha256 = ?`,
		nanos(now), id, Allowed, inputSHA256)
	if err != nil {
		return fmt.Errorf("use approval %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	r, err := s.Get(ctx, id)
	switch {
	case err != nil:
		return err
	case r.State != Allowed:
		return fmt.Errorf("%w: %s is %s", ErrNotPending, id, r.State)
	case r.InputSHA256 != inputSHA256:
		return ErrInputMismatch
	default:
		return ErrUsed
	}
}

func (s *Store) query(ctx context.Context, where string, args ...any) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind(`SELECT tool_use_id, session_id, work_id, worker_id, tool, input, input_sha256,
		policy, rule, message, channels, allow_edit, state, decided_by, reason, edited_input, edited_sha256,
		requested_at, deadline, decided_at, notified_at, used_at FROM decisions `+where), args...)
	if err != nil {
		return nil, fmt.Errorf("read approvals: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var input, channels, edited string
		var requested, deadline, decided, notified, used int64
		if err := rows.Scan(&r.ToolUseID, &r.SessionID, &r.WorkID, &r.WorkerID, &r.Tool, &input, &r.InputSHA256,
			&r.Policy, &r.Rule, &r.Message, &channels, &r.AllowEdit, &r.State, &r.DecidedBy, &r.Reason, &edited, &r.EditedSHA256,
			&requested, &deadline, &decided, &notified, &used); err != nil {
			return nil, fmt.Errorf("read approvals: %w", err)
		}
		r.Input = json.RawMessage(input)
		if edited != "" {
			r.EditedInput = json.RawMessage(edited)
		}
		if channels != "" {
			r.Channels = strings.Split(channels, ",")
		}
		r.RequestedAt, r.Deadline, r.DecidedAt, r.NotifiedAt, r.UsedAt = unnanos(requested), unnanos(deadline), unnanos(decided), unnanos(notified), unnanos(used)
		out = append(out, r)
	}
	return out, rows.Err()
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unnanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
