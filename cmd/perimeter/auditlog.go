package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

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
	w, dir, err := openOwn(auditDir(cfg), cfg.Worker.ID, "audit log", log,
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

// resolveConfig is the config `perimeter worker` would run with, as far
// as where it keeps things goes: the config file, with flag (--state-dir)
// over its worker.state_dir (default ./perimeter-state).
func resolveConfig(cmd *cobra.Command, flag string) (*config.Config, error) {
	g := &globals{}
	if fl := cmd.Flag("config"); fl != nil {
		g.configPath = fl.Value.String()
	}
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	(&workerFlags{stateDir: flag}).apply(cfg)
	return cfg, nil
}
