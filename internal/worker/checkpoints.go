package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/checkpoint"
)

// readOnlyTools cannot change the workspace; every other tool (write,
// edit, bash, custom and MCP tools) may.
var readOnlyTools = map[string]bool{"read": true, "glob": true, "grep": true}

// checkpoint records the workspace as it is just before c runs, keyed by
// c's tool-use id, so that an operator can roll back to "just before c". A
// checkpoint that fails is logged and recorded; the call still runs.
func (s *session) checkpoint(ctx context.Context, c *Call) (id string) {
	cp := s.w.opts.Checkpoints
	if cp == nil || readOnlyTools[c.Tool] || c.Decision.ReadOnly {
		return ""
	}
	ctx, span := s.w.tracer.Start(ctx, "perimeter.checkpoint", trace.WithAttributes(
		attribute.String("perimeter.tool_use.id", c.ToolUseID),
	))
	defer span.End()
	start := time.Now()
	res, err := cp.Checkpoint(ctx, s.workspace, checkpoint.Key{Session: s.sessionID, ToolUseID: c.ToolUseID})
	took := time.Since(start)
	s.w.metrics.checkpointSeconds.Observe(took.Seconds())
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		s.log.Warn("checkpoint failed; the call runs without one", slog.String("tool_use_id", c.ToolUseID), slog.Any("error", err))
		return ""
	}
	span.SetAttributes(
		attribute.String("perimeter.checkpoint.id", res.ID),
		attribute.Int("perimeter.checkpoint.files", res.Files),
		attribute.Int("perimeter.checkpoint.hashed", res.Hashed),
		attribute.Int("perimeter.checkpoint.visited_dirs", res.Visited),
		attribute.Int64("perimeter.checkpoint.new_bytes", res.NewBytes),
		attribute.Int("perimeter.checkpoint.skipped", len(res.Skipped)),
	)
	if len(res.Skipped) > 0 {
		first := res.Skipped[0]
		s.log.Warn("checkpoint left entries out", slog.String("tool_use_id", c.ToolUseID), slog.Int("count", len(res.Skipped)),
			slog.String("first", first.Path), slog.String("reason", first.Reason))
	}
	s.audit(ctx, c.ToolUseID, audit.Checkpoint{ID: res.ID, Bytes: res.NewBytes, DurationMS: took.Milliseconds()}, nil)
	return res.ID
}

// RestoreCheckpoint rolls a session's workspace back in place to the
// checkpoint taken just before the tool call before, or to the checkpoint
// id. The session's sandbox sees the files change under it; the model is
// told in the next tool result of the session this worker runs.
func (w *Worker) RestoreCheckpoint(ctx context.Context, sessionID, before, id, by string) (checkpoint.Checkpoint, checkpoint.RestoreReport, error) {
	store := w.opts.Checkpoints
	if store == nil {
		return checkpoint.Checkpoint{}, checkpoint.RestoreReport{}, errors.New("this worker takes no checkpoints")
	}
	cp, err := findCheckpoint(store, sessionID, before, id)
	if err != nil {
		return cp, checkpoint.RestoreReport{}, err
	}
	root, err := w.workspace(sessionID)
	if err != nil {
		return cp, checkpoint.RestoreReport{}, err
	}
	_, span := w.tracer.Start(ctx, "perimeter.checkpoint.restore", trace.WithAttributes(
		attribute.String("perimeter.session.id", sessionID),
		attribute.String("perimeter.checkpoint.id", cp.ID),
		attribute.String("perimeter.tool_use.id", cp.ToolUseID),
	))
	defer span.End()
	rep, err := store.Restore(ctx, root, cp.ID)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return cp, rep, err
	}
	w.rollbacks.Store(sessionID, fmt.Sprintf("[perimeter] An operator rolled the workspace back to how it was just before tool call %s; "+
		"changes made since then are gone. Re-read files before relying on earlier results.\n", cp.ToolUseID))
	w.audit(ctx, audit.Record{
		SessionID: sessionID, ToolUseID: cp.ToolUseID,
		Data: audit.Restore{CheckpointID: cp.ID, By: by, Reason: "operator restore"},
	})
	w.log.Info("workspace restored", slog.String("session_id", sessionID), slog.String("checkpoint", cp.ID),
		slog.String("before", cp.ToolUseID), slog.String("by", by), slog.Int("written", rep.Written), slog.Int("removed", rep.Removed))
	return cp, rep, nil
}

// findCheckpoint is the checkpoint a restore names: the one before a tool
// call, or one of the session's by id.
func findCheckpoint(store *checkpoint.Store, sessionID, before, id string) (checkpoint.Checkpoint, error) {
	if before != "" {
		return store.Before(sessionID, before)
	}
	list, err := store.List(sessionID)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	for _, cp := range list {
		if cp.ID == id {
			return cp, nil
		}
	}
	return checkpoint.Checkpoint{}, fmt.Errorf("session %s has no checkpoint %s", sessionID, id)
}

// takeRollbackNote returns, once, the note telling the model that its
// workspace was rolled back.
func (s *session) takeRollbackNote() string {
	if v, ok := s.w.rollbacks.LoadAndDelete(s.sessionID); ok {
		return v.(string)
	}
	return ""
}

// Checkpoints is the worker's checkpoint store; nil when it takes none.
func (w *Worker) Checkpoints() *checkpoint.Store { return w.opts.Checkpoints }

// persistedName is the checkpoint store's name for the workspaces saved
// under one persistence key.
func persistedName(key string) string { return "persist:" + key }

// loadPersisted starts a fresh session from the workspace last saved under
// its persistence key, if any: the one the remote store names, or else
// the latest this worker saved. When a saved workspace exists but cannot
// be loaded, the session starts empty and persistLost is set, so that its
// end does not save over the one that failed to load.
func (s *session) loadPersisted(ctx context.Context) {
	key := s.metadata[s.w.opts.PersistKey]
	if key == "" {
		return
	}
	if entries, err := os.ReadDir(s.workspace); err != nil || len(entries) > 0 {
		return // a session that already has files keeps them
	}
	ctx, span := s.w.tracer.Start(ctx, "perimeter.workspace.load")
	defer span.End()
	fail := func(msg string, err error) {
		span.SetStatus(codes.Error, err.Error())
		s.log.Error(msg+"; starting empty, and this session's workspace will not be saved over it", slog.Any("error", err))
		s.persistLost = true
	}
	last, ok, err := s.pullPersisted(ctx, key)
	if err != nil {
		fail("could not fetch the saved workspace from the object store", err)
		return
	}
	if !ok {
		list, err := s.w.opts.Checkpoints.List(persistedName(key))
		if err != nil || len(list) == 0 {
			s.log.Info("no saved workspace for this persistence key yet", slog.String("persist_key", s.w.opts.PersistKey))
			return
		}
		last = list[len(list)-1]
	}
	span.SetAttributes(attribute.String("perimeter.checkpoint.id", last.ID))
	rep, err := s.w.opts.Checkpoints.Restore(ctx, s.workspace, last.ID)
	if err != nil {
		fail("could not load the saved workspace", err)
		return
	}
	s.audit(ctx, "", audit.Restore{CheckpointID: last.ID, By: "worker", Reason: "workspace persisted by an earlier session (" + last.ToolUseID + ")"}, nil)
	s.log.Info("started from the saved workspace", slog.String("checkpoint", last.ID), slog.String("saved_by", last.ToolUseID), slog.Int("files", rep.Written))
}

// pullPersisted fetches the workspace the remote store names for key into
// the local store. ok is false when there is no remote or it names none.
func (s *session) pullPersisted(ctx context.Context, key string) (checkpoint.Checkpoint, bool, error) {
	remote := s.w.opts.PersistRemote
	if remote == nil {
		return checkpoint.Checkpoint{}, false, nil
	}
	ctx, span := s.w.tracer.Start(ctx, "perimeter.workspace.pull")
	defer span.End()
	cp, tr, ok, err := s.w.opts.Checkpoints.PullRef(ctx, remote, key, checkpoint.Key{Session: persistedName(key)})
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return cp, false, err
	}
	if ok {
		span.SetAttributes(attribute.String("perimeter.checkpoint.id", cp.ID), attribute.Int("perimeter.transfer.objects", tr.Copied), attribute.Int64("perimeter.transfer.bytes", tr.CopiedBytes))
		s.log.Info("fetched the saved workspace from the object store", slog.String("checkpoint", cp.ID), slog.Int("objects", tr.Copied), slog.Int64("bytes", tr.CopiedBytes))
	}
	return cp, ok, nil
}

// savePersisted saves the session's workspace under its persistence key,
// here and in the remote store if there is one.
func (s *session) savePersisted(ctx context.Context) {
	if s.w.opts.Checkpoints == nil || s.w.opts.PersistKey == "" {
		return
	}
	key := s.metadata[s.w.opts.PersistKey]
	if key == "" {
		return
	}
	if s.persistLost {
		s.log.Warn("not saving the workspace: the one saved under its persistence key could not be loaded, and stays as it was", slog.String("persist_key", s.w.opts.PersistKey))
		return
	}
	ctx = context.WithoutCancel(ctx)
	ctx, span := s.w.tracer.Start(ctx, "perimeter.workspace.save")
	defer span.End()
	savedBy := "session " + s.sessionID
	// The key's next save is of another session's workspace.
	defer s.w.opts.Checkpoints.Forget(persistedName(key))
	cp, err := s.w.opts.Checkpoints.Checkpoint(ctx, s.workspace, checkpoint.Key{Session: persistedName(key), ToolUseID: savedBy})
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		s.log.Error("could not save the workspace for later sessions", slog.Any("error", err))
		return
	}
	span.SetAttributes(attribute.String("perimeter.checkpoint.id", cp.ID))
	s.audit(ctx, "", audit.Checkpoint{ID: cp.ID, Bytes: cp.NewBytes}, nil)
	s.log.Info("saved the workspace for later sessions", slog.String("checkpoint", cp.ID), slog.Int("files", cp.Files))
	if remote := s.w.opts.PersistRemote; remote != nil {
		tr, err := s.w.opts.Checkpoints.PushRef(ctx, remote, checkpoint.Ref{Name: key, ID: cp.ID, SavedBy: savedBy})
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
			s.log.Error("could not copy the saved workspace to the object store; only this worker has it", slog.Any("error", err))
			return
		}
		span.SetAttributes(attribute.Int("perimeter.transfer.objects", tr.Copied), attribute.Int64("perimeter.transfer.bytes", tr.CopiedBytes))
		s.log.Info("copied the saved workspace to the object store", slog.String("checkpoint", cp.ID), slog.Int("objects", tr.Copied), slog.Int64("bytes", tr.CopiedBytes))
	}
}

// rollbackFailed restores the workspace to the checkpoint taken before a
// call that failed, or that the egress proxy refused a request of, as its
// rule asked, and says so in the result.
func (s *session) rollbackFailed(ctx context.Context, c *Call, id string, o *Outcome) {
	why := "The call failed"
	if !o.IsError {
		why = fmt.Sprintf("The egress proxy refused %d of the call's requests", o.EgressBlocked)
	}
	ctx, span := s.w.tracer.Start(ctx, "perimeter.checkpoint.restore", trace.WithAttributes(
		attribute.String("perimeter.checkpoint.id", id), attribute.String("perimeter.tool_use.id", c.ToolUseID)))
	_, err := s.w.opts.Checkpoints.Restore(ctx, s.workspace, id)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	if err != nil {
		s.log.Error("could not roll back after a failed call", slog.String("tool_use_id", c.ToolUseID), slog.Any("error", err))
		o.Text += "\n[perimeter] " + why + " and rolling the workspace back failed too; files may be half changed."
		return
	}
	s.audit(ctx, c.ToolUseID, audit.Restore{CheckpointID: id, By: "worker", Reason: strings.ToLower(why[:1]) + why[1:] + "; its rule says rollback: on_error"}, nil)
	o.Text += "\n[perimeter] " + why + ", so the workspace was rolled back to how it was before it."
}
