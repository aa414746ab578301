package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/config"
)

// openAuditLog opens the worker's audit log: <state>/audit unless the
// config says otherwise. Workers sharing a state directory cannot share a
// log (it has one writer); a second one writes <dir>.<worker id> and says so.
func openAuditLog(cfg *config.Config, log *slog.Logger) (*audit.Writer, error) {
	if cfg.Audit.Disabled {
		log.Warn("the audit log is disabled (audit.disabled)")
		return nil, nil
	}
	opts := audit.Options{SyncInterval: time.Second, MaxFileBytes: int64(cfg.Audit.MaxFile), KeepPayload: cfg.Audit.KeepPayload}
	switch si := cfg.Audit.SyncInterval; si {
	case "":
	case "every":
		opts.SyncInterval = 0
	default:
		opts.SyncInterval, _ = time.ParseDuration(si) // checked by config.Parse
	}
	dir := cmp.Or(cfg.Audit.Dir, auditDir(cfg.Worker.StateDir))
	w, err := audit.Open(dir, opts)
	if errors.Is(err, audit.ErrLocked) {
		alt := dir + "." + cfg.Worker.ID
		log.Warn("another worker writes the audit log here; using this worker's own", slog.String("busy", dir), slog.String("dir", alt))
		dir = alt
		w, err = audit.Open(dir, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	seq, _ := w.Last()
	log.Info("audit log open", slog.String("dir", dir), slog.Uint64("records", seq))
	return w, nil
}
