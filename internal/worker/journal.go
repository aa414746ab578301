package worker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/perimeterhq/perimeter/internal/sqlitedb"
)

// journal is the worker's durable record of tool calls, keyed by the
// tool-use event id. It is what makes a call's effect happen once: a call
// found finished is answered from the record instead of running again, and a
// call found started but unfinished (its worker died mid-call) is answered
// with an error instead of being re-run blind. Workers on one host share it
// through the state directory (SQLite in WAL mode serialises writers).
//
// Durability: each record is committed before the call runs and again when
// it ends, in WAL mode with synchronous=NORMAL. A commit survives the worker
// process dying at any point (SIGKILL, OOM kill, panic) — the failure this
// record exists for. A power loss or kernel crash may lose the last few
// commits; the sandboxes and their effects die with the host then too.
// Full fsync per commit doubled the cost of a trivial call (see bench/).
type journal struct {
	db *sql.DB
}

// callState is how far a recorded call got.
type callState string

const (
	callStarted  callState = "started"
	callFinished callState = "finished"
)

// record is one journalled call.
type record struct {
	ToolUseID   string
	SessionID   string
	WorkID      string
	WorkerID    string
	Tool        string
	InputSHA256 string
	State       callState
	Output      string
	IsError     bool
	StartedAt   time.Time
	FinishedAt  time.Time
}

func openJournal(stateDir string) (*journal, error) {
	path := filepath.Join(stateDir, "journal.db")
	db, err := sqlitedb.Open(path, 10000)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS calls (
		tool_use_id  TEXT PRIMARY KEY,
		session_id   TEXT NOT NULL,
		work_id      TEXT NOT NULL,
		worker_id    TEXT NOT NULL,
		tool         TEXT NOT NULL,
		input_sha256 TEXT NOT NULL,
		state        TEXT NOT NULL,
		output       TEXT NOT NULL DEFAULT '',
		is_error     INTEGER NOT NULL DEFAULT 0,
		started_at   INTEGER NOT NULL,
		finished_at  INTEGER NOT NULL DEFAULT 0
	)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return &journal{db: db}, nil
}

// begin records that a call is about to run. If the call is already in the
// journal, begin returns the existing record and ok=false: the caller must
// not run it.
func (j *journal) begin(ctx context.Context, r record) (existing record, ok bool, err error) {
	res, err := j.db.ExecContext(ctx, `INSERT INTO calls
		(tool_use_id, session_id, work_id, worker_id, tool, input_sha256, state, started_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tool_use_id) DO NOTHING`,
		r.ToolUseID, r.SessionID, r.WorkID, r.WorkerID, r.Tool, r.InputSHA256, callStarted, r.StartedAt.UnixNano())
	if err != nil {
		return record{}, false, fmt.Errorf("journal begin %s: %w", r.ToolUseID, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return record{}, true, nil
	}
	existing, err = j.lookup(ctx, r.ToolUseID)
	return existing, false, err
}

// finish records a call's result.
func (j *journal) finish(ctx context.Context, id, output string, isError bool, at time.Time) error {
	_, err := j.db.ExecContext(ctx, `UPDATE calls SET state = ?, output = ?, is_error = ?, finished_at = ? WHERE tool_use_id = ?`,
		callFinished, output, isError, at.UnixNano(), id)
	if err != nil {
		return fmt.Errorf("journal finish %s: %w", id, err)
	}
	return nil
}

// lookup returns the record of id; a missing record is errNoRecord.
func (j *journal) lookup(ctx context.Context, id string) (record, error) {
	var r record
	var started, finished int64
	err := j.db.QueryRowContext(ctx, `SELECT tool_use_id, session_id, work_id, worker_id, tool, input_sha256,
		state, output, is_error, started_at, finished_at FROM calls WHERE tool_use_id = ?`, id).
		Scan(&r.ToolUseID, &r.SessionID, &r.WorkID, &r.WorkerID, &r.Tool, &r.InputSHA256,
			&r.State, &r.Output, &r.IsError, &started, &finished)
	if errors.Is(err, sql.ErrNoRows) {
		return record{}, errNoRecord
	}
	if err != nil {
		return record{}, fmt.Errorf("journal lookup %s: %w", id, err)
	}
	r.StartedAt = time.Unix(0, started)
	if finished != 0 {
		r.FinishedAt = time.Unix(0, finished)
	}
	return r, nil
}

var errNoRecord = errors.New("no journal record")

func (j *journal) close() error { return j.db.Close() }
