// Command perimeter is the production environment worker for Claude Managed
// Agents self-hosted sandboxes, with an embedded API-compatible control
// plane for running everything offline on one machine.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// globals are the flags every subcommand shares.
type globals struct {
	configPath string
	logLevel   string
	logFormat  string
}

func main() {
	ctx, stop := stopContext()
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "perimeter:", err)
		os.Exit(1)
	}
}

// stopContext is cancelled by the first SIGINT or SIGTERM, which asks for
// a graceful stop (a worker drains its sessions). After it, those signals
// have their default action again: a second one ends the process at once.
func stopContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "perimeter",
		Short: "A hardened self-hosted environment worker for Claude Managed Agents",
		Long: `Perimeter claims work from a Managed Agents environment queue and runs each
session's tool calls in an isolated sandbox, with no credential inside it,
every call passing one gate, and every action traced.

Quick start (everything offline, on this machine):
  perimeter demo

Production:
  export ANTHROPIC_ENVIRONMENT_ID=env_...  ANTHROPIC_ENVIRONMENT_KEY=sk-ant-oat01-...
  perimeter worker --config /etc/perimeter/perimeter.yaml

Offline control plane for development and tests:
  perimeter controlplane --scenarios examples/scenarios`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "path to the YAML config file (default $PERIMETER_CONFIG; see examples/perimeter.yaml)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		newWorkerCmd(g),
		newControlPlaneCmd(g),
		newSandboxdCmd(),
		newDemoCmd(g),
		newDoctorCmd(),
		newImageCmd(g),
		newApprovalsCmd(),
		newPolicyCmd(),
		newAuditCmd(),
		newCheckpointsCmd(),
	)
	return root
}

// load reads the config file named by --config, else by $PERIMETER_CONFIG.
func (g *globals) load() (*config.Config, error) {
	return config.Load(cmp.Or(g.configPath, os.Getenv("PERIMETER_CONFIG")))
}

// logger builds the process logger, on standard error, from --log-level
// and --log-format.
func (g *globals) logger() (*slog.Logger, error) {
	newLog, err := g.newLogger()
	if err != nil {
		return nil, err
	}
	return newLog(os.Stderr), nil
}

// newLogger checks --log-level and --log-format and returns what builds a
// logger with them that writes to w.
func (g *globals) newLogger() (func(w io.Writer) *slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(g.logFormat) {
	case "text":
		return func(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, opts)) }, nil
	case "json":
		return func(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, opts)) }, nil
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", g.logFormat)
	}
}

// ignoreCanceled treats a cancelled context (a signal) as a clean exit.
func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
