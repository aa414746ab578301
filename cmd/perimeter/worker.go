package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// workerFlags are the flags of `perimeter worker` that override the config.
type workerFlags struct {
	baseURL, environmentID, workerID, stateDir, adminListen, runtime, policy string
	maxSessions                                                              int
	maxIdle, toolTimeout, drainTimeout                                       time.Duration
	insecureProcess                                                          bool
}

func (f *workerFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.baseURL, "base-url", "", "control plane URL (default $ANTHROPIC_BASE_URL, else the Anthropic API)")
	fl.StringVar(&f.environmentID, "environment-id", "", "environment whose queue to serve (default $ANTHROPIC_ENVIRONMENT_ID)")
	fl.StringVar(&f.workerID, "worker-id", "", "worker id reported to the control plane and put on its sandboxes (default <hostname>-<hash of the state dir>, stable across restarts)")
	fl.StringVar(&f.stateDir, "state-dir", "", "directory for the call journal and session workspaces; share it between workers on one host (default ./perimeter-state)")
	fl.StringVar(&f.adminListen, "admin-listen", "", `address of /healthz, /readyz and /metrics (default 127.0.0.1:9464; "off" disables)`)
	fl.StringVar(&f.policy, "policy", "", "policy file every tool call is decided by; SIGHUP reloads it (default: the built-in policy, see 'perimeter policy default')")
	fl.StringVar(&f.runtime, "runtime", "", "sandbox runtime: docker-runsc, docker, bwrap or process (default: the strongest this host offers)")
	fl.IntVar(&f.maxSessions, "max-sessions", 0, "sessions served at once (default 4)")
	fl.DurationVar(&f.maxIdle, "max-idle", 0, "how long a session stays attached after its turn ends (default 60s; negative disables)")
	fl.DurationVar(&f.toolTimeout, "tool-timeout", 0, "limit for one tool call (default 120s)")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 0, "on SIGTERM, how long in-flight tool calls may finish (default 30s)")
	fl.BoolVar(&f.insecureProcess, "insecure-process-runtime", false, "allow the process runtime, which runs tool calls as plain child processes with NO isolation")
}

// apply overrides cfg: a flag wins over the ecosystem's environment
// variable, which wins over the file.
func (f *workerFlags) apply(cfg *config.Config) {
	a, w, s := &cfg.Anthropic, &cfg.Worker, &cfg.Sandbox
	a.BaseURL = cmp.Or(f.baseURL, os.Getenv("ANTHROPIC_BASE_URL"), a.BaseURL)
	a.EnvironmentID = cmp.Or(f.environmentID, os.Getenv("ANTHROPIC_ENVIRONMENT_ID"), a.EnvironmentID)
	w.ID = cmp.Or(f.workerID, os.Getenv("ANTHROPIC_WORKER_ID"), w.ID)
	w.StateDir = cmp.Or(f.stateDir, w.StateDir, "perimeter-state")
	w.AdminListen = cmp.Or(f.adminListen, w.AdminListen, "127.0.0.1:9464")
	w.MaxSessions = cmp.Or(f.maxSessions, w.MaxSessions)
	w.MaxIdle = cmp.Or(config.Duration(f.maxIdle), w.MaxIdle)
	w.ToolTimeout = cmp.Or(config.Duration(f.toolTimeout), w.ToolTimeout)
	w.DrainTimeout = cmp.Or(config.Duration(f.drainTimeout), w.DrainTimeout)
	s.Runtime = cmp.Or(f.runtime, s.Runtime)
	cfg.Policy.File = cmp.Or(f.policy, cfg.Policy.File)
	s.InsecureProcessRuntime = s.InsecureProcessRuntime || f.insecureProcess
}

func newWorkerCmd(g *globals) *cobra.Command {
	f := &workerFlags{}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Claim sessions from an environment queue and run their tool calls in sandboxes",
		Long: `Long-polls a self-hosted environment's work queue and serves each claimed
session: holds the work-item lease, runs the session's tool calls in a
per-session sandbox, posts the results, and stops the item at the end.

Credentials come from the environment, never from flags:
  ANTHROPIC_ENVIRONMENT_ID    the environment to serve
  ANTHROPIC_ENVIRONMENT_KEY   its environment key (sk-ant-oat01-…)
  ANTHROPIC_BASE_URL          optional; point at 'perimeter controlplane' for offline use

Every tool call is decided by the policy (--policy; default: the built-in
one, which asks a human about write, edit and bash: see 'perimeter policy
default' and 'perimeter approvals'). SIGHUP reloads the policy file.

SIGTERM drains: no new claims, in-flight calls finish (up to --drain-timeout),
items are released for another worker, and the process exits 0.

Example, against the embedded control plane:
  perimeter controlplane --scenarios examples/scenarios &
  ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_ENVIRONMENT_ID=env_default \
  ANTHROPIC_ENVIRONMENT_KEY=sk-ant-oat01-perimeter-dev \
  perimeter worker --insecure-process-runtime --policy examples/policies/allow-all.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// SIGHUP reloads the policy once there is one; until then it
			// is taken and dropped, where its default action would end
			// the worker. A handler rather than SIG_IGN: sandboxes started
			// meanwhile (the warm pool's) would inherit an ignored SIGHUP.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			cfg, err := g.load()
			if err != nil {
				return err
			}
			f.apply(cfg)
			if err := cfg.Worker.Check(); err != nil {
				return err
			}
			if err := cfg.Anthropic.Check(os.Getenv("ANTHROPIC_ENVIRONMENT_KEY")); err != nil {
				return err
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			return runWorker(cmd.Context(), cfg, log, hup)
		},
	}
	f.register(cmd)
	return cmd
}

// runWorker runs a worker with its admin listener until ctx ends; hup
// receives SIGHUP.
func runWorker(ctx context.Context, cfg *config.Config, log *slog.Logger, hup <-chan os.Signal) error {
	// Export failures go to the process log as it is written to stderr,
	// not to the OpenTelemetry log exporter that may be what fails.
	reportExportErrors(log)
	tp, shutdownTracing, err := audit.Tracing(ctx, audit.TracingOptions{ServiceName: "perimeter-worker", Version: version, Enabled: cfg.Telemetry.Enabled, Logger: log})
	if err != nil {
		return err
	}
	defer flushTelemetry(ctx, log, "spans", shutdownTracing)
	// Logs and metrics go out over OTLP too, under the same switches; the
	// process log fans out to the log exporter.
	reg := prometheus.NewRegistry()
	tel, err := audit.StartTelemetry(ctx, audit.TelemetryOptions{
		ServiceName: "perimeter-worker", Version: version, Enabled: cfg.Telemetry.Enabled, Metrics: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	defer flushTelemetry(ctx, log, "logs and metrics", tel.Shutdown)
	if tel.Handler != nil {
		log = withOTelLogs(log, tel.Handler)
	}
	w, gate, closeWorker, err := newWorker(ctx, cfg, os.Getenv("ANTHROPIC_ENVIRONMENT_KEY"), log, observability{tp: tp, reg: reg, events: tel.Logger()})
	if err != nil {
		return err
	}
	defer closeWorker()
	stopReload := reloadOnHUP(hup, cfg, gate, log)
	defer stopReload()

	if addr := cfg.Worker.AdminListen; addr != "off" {
		token, err := adminToken(cfg.Worker.StateDir)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("admin listener: %w (set --admin-listen to a free address, or off)", err)
		}
		mux := http.NewServeMux()
		approvals, checkpoints := approval.Handler(gate, token), checkpointsAPI(w, w.Checkpoints(), token)
		mux.Handle("/v1/approvals", approvals)
		mux.Handle("/v1/approvals/", approvals)
		mux.Handle("/v1/checkpoints", checkpoints)
		mux.Handle("/v1/checkpoints/", checkpoints)
		mux.Handle("/", w.AdminHandler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed", slog.Any("error", err))
			}
		}()
		defer srv.Close()
		log.Info("admin listening", slog.String("addr", ln.Addr().String()))
	}
	notifyReady(log)
	return w.Run(audit.ParentFromEnv(ctx))
}

// notifyReady tells systemd, when it started the worker as a Type=notify
// service, that the worker is up: from now on SIGHUP reloads the policy,
// and `systemctl reload` may send it. Outside systemd it does nothing.
func notifyReady(log *slog.Logger) {
	addr := os.Getenv("NOTIFY_SOCKET") // a leading @ is an abstract socket, as Go reads it
	if addr == "" {
		return
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte("READY=1"))
		c.Close()
	}
	if err != nil {
		log.Warn("could not tell systemd that the worker is ready", slog.String("NOTIFY_SOCKET", addr), slog.Any("error", err))
	}
}

// telemetryFlushTimeout bounds the export of what telemetry holds when the
// worker exits.
const telemetryFlushTimeout = 5 * time.Second

// flushTelemetry shuts an exporter down, which sends what it holds, and
// says so in log when that fails: the operator learns that the collector
// lacks the end of the run.
func flushTelemetry(ctx context.Context, log *slog.Logger, what string, shutdown func(context.Context) error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), telemetryFlushTimeout)
	defer cancel()
	if err := shutdown(sctx); err != nil {
		log.Warn("telemetry: the last "+what+" may not have been exported", slog.Any("error", err))
	}
}

// reportExportErrors makes OpenTelemetry's errors (an export that fails,
// a collector that refuses) structured lines of log.
func reportExportErrors(log *slog.Logger) {
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("telemetry: export failed", slog.Any("error", err))
	}))
}

// withOTelLogs fans the process log out to the OpenTelemetry log handler,
// at the process log's level (--log-level): what the process log leaves
// out is not exported either.
func withOTelLogs(log *slog.Logger, otel slog.Handler) *slog.Logger {
	return slog.New(slog.NewMultiHandler(log.Handler(), leveled{Handler: otel, level: log.Handler()}))
}

// leveled is a handler that is enabled only where level is.
type leveled struct {
	slog.Handler
	level slog.Handler
}

func (h leveled) Enabled(ctx context.Context, l slog.Level) bool {
	return h.level.Enabled(ctx, l) && h.Handler.Enabled(ctx, l)
}

func (h leveled) WithAttrs(attrs []slog.Attr) slog.Handler {
	return leveled{Handler: h.Handler.WithAttrs(attrs), level: h.level}
}

func (h leveled) WithGroup(name string) slog.Handler {
	return leveled{Handler: h.Handler.WithGroup(name), level: h.level}
}

// observability is where a worker's spans, metrics and audit events go;
// zero fields mean none (and a private metrics registry).
type observability struct {
	tp     trace.TracerProvider
	reg    *prometheus.Registry
	events *slog.Logger // OpenTelemetry log records of the audit events
}

// newWorker builds a worker, and its sandbox runtime, from cfg and the
// environment key. The returned close releases the runtime after the
// worker is done.
func newWorker(ctx context.Context, cfg *config.Config, envKey string, log *slog.Logger, obs observability) (*worker.Worker, *approval.Gate, func(), error) {
	if cfg.Worker.ID == "" {
		cfg.Worker.ID = defaultWorkerID(cfg.Worker.StateDir)
	}
	if err := worker.PrepareStateDir(cfg.Worker.StateDir); err != nil {
		return nil, nil, nil, err
	}
	// closers release what is opened below, the last opened first.
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (*worker.Worker, *approval.Gate, func(), error) {
		closeAll()
		return nil, nil, nil, err
	}
	auditW, err := openAuditLog(cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	var auditLog worker.AuditLog
	if auditW != nil || obs.events != nil {
		auditLog = audit.Events{Log: auditW, OTel: obs.events}
	}
	if auditW != nil {
		closers = append(closers, func() {
			if err := auditW.Close(); err != nil {
				log.Error("closing the audit log", slog.Any("error", err))
			}
		})
	}
	reg := obs.reg
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	gate, err := newGate(ctx, cfg, reg, auditLog, log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { gate.Store().Close() })
	rs, err := setupRuntime(ctx, cfg, log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, rs.Close)
	eg, closeEgress, err := newEgress(ctx, cfg, gate, rs.rt.Name(), auditW, log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, closeEgress)
	cps, closeCheckpoints, err := openCheckpoints(ctx, cfg, log)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, closeCheckpoints)
	remote, err := openRemote(ctx, cfg, log)
	if err != nil {
		return fail(err)
	}
	var clientOpts []option.RequestOption
	if cfg.Anthropic.BaseURL != "" {
		clientOpts = append(clientOpts, option.WithBaseURL(cfg.Anthropic.BaseURL))
	}
	w, err := worker.New(worker.Options{
		Client:            anthropic.NewClient(clientOpts...),
		EnvironmentID:     cfg.Anthropic.EnvironmentID,
		EnvironmentKey:    envKey,
		WorkerID:          cfg.Worker.ID,
		Runtime:           rs.rt,
		RuntimeWarning:    rs.warning,
		Limits:            limits(cfg.Sandbox.Limits),
		NoSandboxRestart:  cfg.Sandbox.Restart == "never",
		StateDir:          cfg.Worker.StateDir,
		MaxSessions:       cfg.Worker.MaxSessions,
		MaxIdle:           time.Duration(cfg.Worker.MaxIdle),
		ToolTimeout:       time.Duration(cfg.Worker.ToolTimeout),
		DrainTimeout:      time.Duration(cfg.Worker.DrainTimeout),
		MaxOutputBytes:    cfg.Worker.MaxOutputBytes,
		SandboxEnv:        cfg.Sandbox.Env,
		Egress:            eg,
		Checkpoints:       cps,
		PersistKey:        cfg.Checkpoints.PersistKey,
		PersistRemote:     remote,
		CustomTools:       cfg.CustomTools,
		TracerProvider:    obs.tp,
		Logger:            log,
		Hooks:             []worker.Hook{gate},
		Audit:             auditLog,
		SessionAttributes: cfg.Telemetry.SessionAttributes,
		DecisionWait:      policy.MaxDeadlineAllowed,
		Metrics:           worker.NewMetrics(reg),
	})
	if err != nil {
		return fail(err)
	}
	return w, gate, func() {
		w.Close()
		closeAll()
	}, nil
}

// reloadOnHUP reloads the policy file on each SIGHUP hup receives. A
// policy that does not load is logged and the one in force is kept;
// sessions are not touched.
func reloadOnHUP(hup <-chan os.Signal, cfg *config.Config, gate *approval.Gate, log *slog.Logger) (stop func()) {
	// A SIGHUP that came while the worker started is dropped: the policy
	// in force was loaded during the start.
	select {
	case <-hup:
	default:
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
			}
			p, err := loadPolicy(cfg)
			if err == nil {
				err = gate.SetPolicy(p)
			}
			if err != nil {
				log.Error("policy reload failed; keeping the policy in force", slog.String("policy", gate.Policy().Source()), slog.Any("error", err))
				continue
			}
			log.Info("policy reloaded", slog.String("policy", p.Source()), slog.String("sha256", p.Digest()))
		}
	}()
	// Once stopped (the worker is exiting), SIGHUP still arrives at hup,
	// unread, rather than ending the process before it has flushed what
	// it holds.
	return func() { close(done) }
}

// defaultWorkerID is stable across restarts of a worker on one host with
// one state directory, so a restarted worker finds and removes the
// sandboxes its crashed predecessor left behind.
func defaultWorkerID(stateDir string) string {
	host, _ := os.Hostname()
	abs, _ := filepath.Abs(stateDir)
	sum := sha256.Sum256([]byte(abs))
	return host + "-" + hex.EncodeToString(sum[:4])
}
