// Package config is Perimeter's one typed configuration: a versioned YAML
// file, overridden by flags (applied by the commands), with secrets and the
// ecosystem's standard names taken from the environment (ANTHROPIC_*,
// OTEL_*). Zero values are documented and useful.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/docker/go-units"
	"gopkg.in/yaml.v3"

	"github.com/perimeterhq/perimeter/internal/s3"
	"github.com/perimeterhq/perimeter/internal/secrets"
)

// Version is the only config file version this build understands.
const Version = 1

// Config is the whole file.
type Config struct {
	Version      int          `yaml:"version"`
	Anthropic    Anthropic    `yaml:"anthropic"`
	Worker       Worker       `yaml:"worker"`
	Sandbox      Sandbox      `yaml:"sandbox"`
	CustomTools  []CustomTool `yaml:"custom_tools"`
	ControlPlane ControlPlane `yaml:"controlplane"`
	Telemetry    Telemetry    `yaml:"telemetry"`
	Policy       Policy       `yaml:"policy"`
	Approvals    Approvals    `yaml:"approvals"`
	// Secrets are the values the egress proxy substitutes for credential
	// placeholders (the policy's egress credentials name them), each read
	// from one backend: env, file, vault or kubernetes. Values are fetched
	// when a request needs them and kept in memory briefly, never on disk.
	Secrets []secrets.Spec `yaml:"secrets"`
	// SecretBackends connect the backends that Secrets name: vault (a
	// KV version 2 engine; the token from VAULT_TOKEN or an AppRole
	// login) and kubernetes (in-cluster, or a kubeconfig).
	SecretBackends secrets.Backends `yaml:"secret_backends"`
	// Audit is the tamper-evident local audit log.
	Audit Audit `yaml:"audit"`
	// Checkpoints snapshot each workspace before every call that may write.
	Checkpoints Checkpoints `yaml:"checkpoints"`
}

// Checkpoints configures workspace checkpoints (see `perimeter checkpoints`).
type Checkpoints struct {
	// Disabled takes none.
	Disabled bool `yaml:"disabled"`
	// Dir holds the content-addressed store; empty means
	// <state_dir>/checkpoints.
	Dir string `yaml:"dir"`
	// MaxCount keeps each session's newest checkpoints; 0 means 200.
	MaxCount int `yaml:"max_count"`
	// MaxAge drops older checkpoints; 0 means 7 days.
	MaxAge Duration `yaml:"max_age"`
	// MaxBytes bounds the store; 0 means 10GiB.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// PersistKey is the session metadata key whose value keeps a
	// workspace across sessions: saved when a session ends, loaded by the
	// next session with the same value. Empty keeps nothing.
	PersistKey string `yaml:"persist_key"`
	// Remote, when its bucket is set, keeps the persisted workspaces in an
	// S3-compatible object store as well, so that a session on any worker
	// sharing the bucket starts from the workspace its key saved. The
	// credentials come from the standard chain (AWS_* or MINIO_*
	// variables, the shared credentials file, an instance or pod role),
	// never from this file.
	Remote s3.Config `yaml:"remote"`
	// FullScan stats every entry of the workspace at each checkpoint
	// instead of tracking changes with inotify. Tracking makes a
	// checkpoint cost what changed, not the workspace's size, but cannot
	// see writes through a shared writable mapping (mmap) that a process
	// keeps across tool calls until that mapping is released.
	FullScan bool `yaml:"full_scan"`
	// MaxEntries is the most files, directories and symlinks a workspace
	// may hold to be checkpointed; a call in a larger one runs without a
	// checkpoint. 0 means 1 million.
	MaxEntries int `yaml:"max_entries"`
}

// SyncEvery is how often audit records are fsynced: 0 for each record
// ("every"), 1s when unset.
func (a Audit) SyncEvery() (time.Duration, error) {
	switch a.SyncInterval {
	case "":
		return time.Second, nil
	case "every":
		return 0, nil
	}
	d, err := time.ParseDuration(a.SyncInterval)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("audit.sync_interval is %q: use a positive duration such as 1s, or every", a.SyncInterval)
	}
	return d, nil
}

// Audit configures the audit log (see `perimeter audit`).
type Audit struct {
	// Disabled writes no audit log.
	Disabled bool `yaml:"disabled"`
	// Dir holds the log; empty means <state_dir>/audit.
	Dir string `yaml:"dir"`
	// SyncInterval is how often records reach the disk: 0 means 1s (a
	// machine crash loses at most that much; a worker crash loses
	// nothing); "every" fsyncs each record before its call goes on.
	SyncInterval string `yaml:"sync_interval"`
	// MaxFile starts a new file past this size; empty means 64MiB.
	MaxFile ByteSize `yaml:"max_file"`
	// KeepPayload names the content fields written to the log (input,
	// output, path); empty writes none. Secret values never are.
	KeepPayload []string `yaml:"keep_payload"`
}

// Policy configures the gate every tool call passes.
type Policy struct {
	// File is the policy (see examples/policies and `perimeter policy`);
	// empty means the built-in default: read, glob and grep pass; write,
	// edit, bash and every other tool ask a human, denied after 2m.
	// SIGHUP reloads it.
	File string `yaml:"file"`
	// Labels are the environment labels policy conditions see as
	// environment.labels.
	Labels map[string]string `yaml:"labels"`
}

// Approvals configures how a human is reached and decides.
type Approvals struct {
	// Store is where decisions are kept: empty means SQLite in the state
	// directory (shared by the workers on one host); a postgres:// URL
	// shares them between workers anywhere (its password may come from
	// PGPASSWORD instead).
	Store string `yaml:"store"`
	// NoPrompt stops the worker from asking at its terminal about calls a
	// rule says ask for (it does when standard input is a terminal).
	NoPrompt bool `yaml:"no_prompt"`
	// Channels are the notification channels policy rules name.
	Channels map[string]Channel `yaml:"channels"`
}

// Channel is one way to reach reviewers.
type Channel struct {
	// Type is webhook (a signed Standard Webhooks POST) or slack (an
	// incoming-webhook message).
	Type string `yaml:"type"`
	// URL to post to, or URLEnv: the variable holding it (a Slack webhook
	// URL is a secret).
	URL    string `yaml:"url"`
	URLEnv string `yaml:"url_env"`
	// SecretEnv is the variable holding a webhook channel's signing secret
	// (whsec_…).
	SecretEnv string `yaml:"secret_env"`
}

// Anthropic says where the control plane is. Secrets never live here: the
// environment key comes from ANTHROPIC_ENVIRONMENT_KEY only.
type Anthropic struct {
	// BaseURL of the API; empty means the real API (or ANTHROPIC_BASE_URL).
	BaseURL string `yaml:"base_url"`
	// EnvironmentID whose queue the worker serves (or ANTHROPIC_ENVIRONMENT_ID).
	EnvironmentID string `yaml:"environment_id"`
}

// Check refuses a worker that has no environment to serve or no key for
// it, naming where each comes from. The key is passed in because it is
// never part of the file.
func (a Anthropic) Check(environmentKey string) error {
	switch {
	case a.EnvironmentID == "":
		return errors.New("no environment id: set ANTHROPIC_ENVIRONMENT_ID, --environment-id or anthropic.environment_id in the config")
	case environmentKey == "":
		return errors.New("no environment key: set ANTHROPIC_ENVIRONMENT_KEY (generated in the Console for the environment)")
	}
	return nil
}

// Worker configures `perimeter worker`.
type Worker struct {
	// ID reported to the control plane and put on the worker's sandboxes
	// (or ANTHROPIC_WORKER_ID); empty means <hostname>-<hash of the state
	// directory>, stable across restarts so that a restarted worker finds
	// the sandboxes its predecessor left behind.
	ID string `yaml:"id"`
	// StateDir holds the durable call journal and session workspaces. It may
	// be shared by workers on one host so a re-claimed session finds the
	// record of calls another worker ran. Empty means ./perimeter-state.
	StateDir string `yaml:"state_dir"`
	// MaxSessions is how many sessions run at once; zero means 4.
	MaxSessions int `yaml:"max_sessions"`
	// MaxIdle is how long a session stays attached after its turn ends;
	// zero means 60s, negative disables the idle timeout.
	MaxIdle Duration `yaml:"max_idle"`
	// ToolTimeout bounds one tool call; zero means 120s.
	ToolTimeout Duration `yaml:"tool_timeout"`
	// DrainTimeout bounds how long in-flight calls may finish after SIGTERM;
	// zero means 30s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// AdminListen is the address of /healthz, /readyz and /metrics; empty
	// means 127.0.0.1:9464, "off" disables it.
	AdminListen string `yaml:"admin_listen"`
	// MaxOutputBytes caps a tool result sent to the model; zero means 100 KiB.
	MaxOutputBytes int `yaml:"max_output_bytes"`
}

// Sandbox selects and configures the sandbox backend.
type Sandbox struct {
	// Runtime is the backend: docker-runsc (gVisor), docker, bwrap or
	// process; empty picks the strongest the host offers (in that order,
	// never process).
	Runtime string `yaml:"runtime"`
	// Image is the docker runtimes' sandbox image, pinned: name@sha256:…
	// or an image id sha256:… (`perimeter image build` prints one).
	Image string `yaml:"image"`
	// ResolveTags lets Image be a mutable tag, resolved to its digest once
	// at start (and logged).
	ResolveTags bool `yaml:"resolve_tags"`
	// SeccompProfile is a JSON seccomp profile for the docker runtimes;
	// empty uses the engine's default profile.
	SeccompProfile string `yaml:"seccomp_profile"`
	// Restart is what happens when a session's sandbox dies: on-failure
	// (the default) starts a fresh one for the next call, keeping the
	// workspace; never answers later calls with an error.
	Restart string `yaml:"restart"`
	// WarmPool keeps this many sandboxes started and waiting, so a claimed
	// session does not wait for one; 0 disables it.
	WarmPool int `yaml:"warm_pool"`
	// Limits bound each sandbox.
	Limits Limits `yaml:"limits"`
	// InsecureProcessRuntime must be true to run sessions in the process
	// runtime, which does not isolate anything.
	InsecureProcessRuntime bool `yaml:"insecure_process_runtime"`
	// Env adds allow-listed variables to the sandbox environment. Nothing
	// from the worker's own environment is passed otherwise.
	Env map[string]string `yaml:"env"`
}

// Limits bound each sandbox; zero values take the built-in defaults
// (1 GiB memory, 1 CPU, 256 processes, 64 MiB /tmp and home).
type Limits struct {
	Memory    ByteSize `yaml:"memory"`
	CPUs      float64  `yaml:"cpus"`
	PIDs      int64    `yaml:"pids"`
	Tmp       ByteSize `yaml:"tmp"`
	Workspace ByteSize `yaml:"workspace"`
}

// ByteSize is a size written as 512MiB, 1g or a plain number of bytes.
type ByteSize int64

// UnmarshalYAML parses a human-readable size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := units.RAMInBytes(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a size (try 512MiB or 2g)", n.Line, s)
	}
	*b = ByteSize(v)
	return nil
}

// CustomTool is an operator-declared tool run as a command in the sandbox.
type CustomTool struct {
	Name        string         `yaml:"name"`
	Description string         `yaml:"description"`
	InputSchema map[string]any `yaml:"input_schema"`
	// Command runs with /bin/sh -c in the workspace; the tool input JSON is
	// on its standard input.
	Command string `yaml:"command"`
}

// ControlPlane configures `perimeter controlplane`.
type ControlPlane struct {
	// Listen address; empty means 127.0.0.1:8787.
	Listen string `yaml:"listen"`
	// Database is the SQLite file; empty means ./perimeter-controlplane.db.
	Database string `yaml:"database"`
	// Scenarios is the directory of scripted agents (*.yaml).
	Scenarios string `yaml:"scenarios"`
	// TTL is the work-item lease; zero means 30s.
	TTL Duration `yaml:"ttl"`
}

// Telemetry configures OpenTelemetry beyond the standard OTEL_* variables.
type Telemetry struct {
	// Enabled exports spans through OTLP even when no OTEL_EXPORTER_OTLP_*
	// endpoint is set (the SDK default endpoint is then used).
	Enabled bool `yaml:"enabled"`
	// SessionAttributes maps span attribute names to session metadata
	// keys: {tenant.id: tenant} puts each session's metadata["tenant"] on
	// its spans as tenant.id.
	SessionAttributes map[string]string `yaml:"session_attributes"`
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (try 30s or 2m): %w", n.Line, s, err)
	}
	*d = Duration(v)
	return nil
}

// D returns the duration, or def when it is zero.
func (d Duration) D(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Load reads path; an empty path yields the zero Config (every default).
// Unknown keys are errors, so a typo is never silently ignored.
func Load(path string) (*Config, error) {
	c := &Config{Version: Version}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(b, path)
}

// Parse decodes a config document; name is used in error messages.
func Parse(b []byte, name string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s is empty: a config file needs at least \"version: %d\"", name, Version)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// Decode reads one document; settings in a second would be ignored.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s: a second YAML document starts at line %d: a config file is one document, so move its settings into the first", name, extra.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Version != Version {
		return nil, fmt.Errorf("%s: version is %d; this build reads version %d (add \"version: %d\" at the top)", name, c.Version, Version, Version)
	}
	switch c.Sandbox.Restart {
	case "", "on-failure", "never":
	default:
		return nil, fmt.Errorf("%s: sandbox.restart is %q: use on-failure or never", name, c.Sandbox.Restart)
	}
	if st := c.Approvals.Store; st != "" && !strings.HasPrefix(st, "postgres://") && !strings.HasPrefix(st, "postgresql://") {
		return nil, fmt.Errorf("%s: approvals.store must be a postgres:// URL (leave it empty for SQLite in the state directory)", name)
	}
	for chName, ch := range c.Approvals.Channels {
		switch {
		case ch.Type != "webhook" && ch.Type != "slack":
			return nil, fmt.Errorf("%s: approvals.channels.%s: type is %q: use webhook or slack", name, chName, ch.Type)
		case (ch.URL == "") == (ch.URLEnv == ""):
			return nil, fmt.Errorf("%s: approvals.channels.%s: set exactly one of url and url_env", name, chName)
		case ch.Type == "webhook" && ch.SecretEnv == "":
			return nil, fmt.Errorf("%s: approvals.channels.%s: a webhook channel needs secret_env, the variable holding its signing secret", name, chName)
		}
	}
	if _, err := c.Audit.SyncEvery(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for _, f := range c.Audit.KeepPayload {
		if f != "input" && f != "output" && f != "path" {
			return nil, fmt.Errorf("%s: audit.keep_payload: %q is not a payload field (input, output or path)", name, f)
		}
	}
	for i, t := range c.CustomTools {
		switch {
		case t.Name == "":
			return nil, fmt.Errorf("%s: custom_tools[%d]: name is required", name, i)
		case t.Command == "":
			return nil, fmt.Errorf("%s: custom tool %q: command is required", name, t.Name)
		}
	}
	if err := c.Worker.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// These would otherwise be read as their default, or as no limit at
	// all (a negative checkpoint retention keeps everything).
	for _, n := range []struct {
		key string
		v   float64
	}{
		{"sandbox.warm_pool", float64(c.Sandbox.WarmPool)},
		{"sandbox.limits.cpus", c.Sandbox.Limits.CPUs},
		{"sandbox.limits.pids", float64(c.Sandbox.Limits.PIDs)},
		{"checkpoints.max_count", float64(c.Checkpoints.MaxCount)},
		{"checkpoints.max_age", float64(c.Checkpoints.MaxAge)},
		{"checkpoints.max_entries", float64(c.Checkpoints.MaxEntries)},
		{"controlplane.ttl", float64(c.ControlPlane.TTL)},
	} {
		if n.v < 0 {
			return nil, fmt.Errorf("%s: %s is negative: use a positive value, or leave it out for the default", name, n.key)
		}
	}
	return &c, nil
}

// Check refuses worker settings no worker can run with: a negative number
// of sessions or bytes, or a negative timeout (only max_idle may be
// negative). Parse checks the file; a command checks again once its flags
// have overridden the file.
func (w Worker) Check() error {
	for _, n := range []struct {
		key, flag, def string
		v              int64
	}{
		{"worker.max_sessions", "--max-sessions", "4", int64(w.MaxSessions)},
		{"worker.tool_timeout", "--tool-timeout", "120s", int64(w.ToolTimeout)},
		{"worker.drain_timeout", "--drain-timeout", "30s", int64(w.DrainTimeout)},
		{"worker.max_output_bytes", "", "100 KiB", int64(w.MaxOutputBytes)},
	} {
		if n.v >= 0 {
			continue
		}
		what := n.key
		if n.flag != "" {
			what += " (or " + n.flag + ")"
		}
		if strings.HasSuffix(n.key, "timeout") {
			return fmt.Errorf("%s is %s: use a positive duration, or 0 for the default (%s)", what, time.Duration(n.v), n.def)
		}
		return fmt.Errorf("%s is %d: use a positive number, or 0 for the default (%s)", what, n.v, n.def)
	}
	return nil
}
