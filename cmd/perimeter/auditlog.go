package main

import (
	"cmp"
	"errors"
	"fmt"
	"github.com/spf13/cobra"
	"log/slog"

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
	sync, err := cfg.Audit.SyncEvery()
	if err != nil {
		return nil, err
	}
	opts := audit.Options{SyncInterval: sync, MaxFileBytes: int64(cfg.Audit.MaxFile), KeepPayload: cfg.Audit.KeepPayload}
	w, dir, err := openOwn(cmp.Or(cfg.Audit.Dir, auditDir(cfg.Worker.StateDir)), cfg.Worker.ID, "audit log", log,
		audit.ErrLocked, func(dir string) (*audit.Writer, error) { return audit.Open(dir, opts) })
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	seq, _ := w.Last()
	log.Info("audit log open", slog.String("dir", dir), slog.Uint64("records", seq))
	return w, nil
}

// openOwn opens what a worker keeps in dir under its state directory, which
// one process at a time may hold. Workers sharing a state directory cannot
// share it: when another holds it (locked), this one opens dir.<worker id>
// and says so.
func openOwn[T any](dir, workerID, what string, log *slog.Logger, locked error, open func(dir string) (T, error)) (T, string, error) {
	v, err := open(dir)
	if errors.Is(err, locked) {
		alt := dir + "." + workerID
		log.Warn("another worker holds the "+what+" here; using this worker's own", slog.String("busy", dir), slog.String("dir", alt))
		dir = alt
		v, err = open(dir)
	}
	return v, dir, err
}

// resolveStateDir is the state directory `perimeter worker` would use:
// flag (--state-dir), else the config file's worker.state_dir, else
// ./perimeter-state.
func resolveStateDir(cmd *cobra.Command, flag string) (string, error) {
	g := &globals{}
	if fl := cmd.Flag("config"); fl != nil {
		g.configPath = fl.Value.String()
	}
	cfg, err := g.load()
	if err != nil {
		return "", err
	}
	(&workerFlags{stateDir: flag}).apply(cfg)
	return cfg.Worker.StateDir, nil
}
