package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/controlplane"
)

// Development keys, used only when no key is configured. They are well
// known, so the control plane logs a warning when it falls back to them.
const (
	devAPIKey         = "sk-ant-api-perimeter-dev"
	devEnvironmentKey = "sk-ant-oat01-perimeter-dev"
)

type controlPlaneFlags struct {
	listen, apiKey, environmentKey, scenarios, database string
	ttl                                                 time.Duration
}

func newControlPlaneCmd(g *globals) *cobra.Command {
	f := &controlPlaneFlags{}
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Run the embedded, API-compatible control plane with scripted agents",
		Long: `Serves the Managed Agents endpoints a self-hosted worker uses — environments,
the work queue with leases, sessions and their event stream — offline, on this
machine. Sessions are driven by scripted agents: every *.yaml file in the
scenario directory is an agent named agent_<file stem> (see docs/scenarios.md).
The unmodified official SDK works against it, as an operator and as a worker.

The environment env_default always exists. State is kept in SQLite and
survives a restart.

Keys come from the environment (or flags); without them well-known development
keys are used, with a warning:
  ANTHROPIC_API_KEY          operator calls     (default sk-ant-api-perimeter-dev)
  ANTHROPIC_ENVIRONMENT_KEY  worker calls       (default sk-ant-oat01-perimeter-dev)

Example:
  perimeter controlplane --scenarios examples/scenarios &
  ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_ENVIRONMENT_ID=env_default \
  ANTHROPIC_ENVIRONMENT_KEY=sk-ant-oat01-perimeter-dev perimeter worker --insecure-process-runtime`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			cp := cfg.ControlPlane
			listen := cmp.Or(cp.Listen, "127.0.0.1:8787")
			if fl.Changed("listen") {
				listen = f.listen
			}
			database := cmp.Or(cp.Database, "perimeter-controlplane.db")
			if fl.Changed("database") {
				database = f.database
			}
			scenarios := cp.Scenarios
			if fl.Changed("scenarios") {
				scenarios = f.scenarios
			}
			if scenarios == "" {
				log.Warn("no scenario directory (--scenarios or controlplane.scenarios): there are no agents, so no session can be created")
			}
			ttl := cp.TTL.D(30 * time.Second)
			if fl.Changed("ttl") {
				ttl = f.ttl
			}
			if ttl < 0 {
				return fmt.Errorf("--ttl %s is negative: give the work-item lease a positive duration, such as 30s", ttl)
			}
			opts := controlplane.Options{
				APIKey:         resolveKey(log, f.apiKey, "ANTHROPIC_API_KEY", devAPIKey, "API key"),
				EnvironmentKey: resolveKey(log, f.environmentKey, "ANTHROPIC_ENVIRONMENT_KEY", devEnvironmentKey, "environment key"),
				Database:       database,
				ScenarioDir:    scenarios,
				TTL:            ttl,
				Logger:         log,
			}
			return ignoreCanceled(runControlPlane(cmd.Context(), listen, opts, log))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:8787", "address to serve on; port 0 picks a free one")
	fl.StringVar(&f.apiKey, "api-key", "", "the operator API key (default $ANTHROPIC_API_KEY, else a development key)")
	fl.StringVar(&f.environmentKey, "environment-key", "", "the environment key workers use (default $ANTHROPIC_ENVIRONMENT_KEY, else a development key)")
	fl.StringVar(&f.scenarios, "scenarios", "", "directory of scenario files (*.yaml), each an agent")
	fl.DurationVar(&f.ttl, "ttl", 30*time.Second, "work-item lease TTL")
	fl.StringVar(&f.database, "database", "./perimeter-controlplane.db", `SQLite file holding the state; ":memory:" keeps it in memory`)
	return cmd
}

// resolveKey picks the flag, else the environment variable, else the
// development key with a warning. The key itself is never logged.
func resolveKey(log *slog.Logger, flag, envVar, dev, what string) string {
	if flag != "" {
		return flag
	}
	if v := os.Getenv(envVar); v != "" {
		return v
	}
	log.Warn("no "+what+" configured; using the well-known development key — do not expose this control plane",
		slog.String("set", envVar))
	return dev
}

// runControlPlane serves until ctx ends, then ends streams and long polls,
// lets in-flight requests finish, and closes the database.
func runControlPlane(ctx context.Context, listen string, opts controlplane.Options, log *slog.Logger) error {
	cp, err := controlplane.New(opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		cp.Close()
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	srv := &http.Server{Handler: cp.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("control plane listening", slog.String("addr", addr), slog.String("base_url", "http://"+addr),
		slog.String("environment_id", controlplane.DefaultEnvironmentID))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	log.Info("control plane shutting down")
	// Close ends the SSE streams and long polls (which would otherwise hold
	// Shutdown open) and waits for the rest before closing the database.
	closeErr := cp.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	if err := errors.Join(closeErr, shutdownErr); err != nil {
		return err
	}
	log.Info("control plane stopped")
	return nil
}
