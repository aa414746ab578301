// Package sandbox defines the boundary between the trusted supervisor and the
// untrusted place where an agent's tool calls run.
//
// Trust model: everything on the far side of a [Sandbox] is hostile. A
// sandbox receives tool calls as data over its RPC channel (the stdio of
// `perimeter sandboxd`) and returns text; it never receives a credential,
// the worker's environment, or a path it could use to reach the host. Its
// output is size- and time-capped by the caller, and its death, hang or
// garbage output is reported as an error for that one call, never as a
// crash of the worker.
//
// Backends implement [Runtime]; extra abilities are small interfaces found by
// type assertion. Every backend runs the shared conformance suite in
// sandboxtest.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"regexp"
	"time"
)

// Spec is the per-session configuration of a sandbox.
type Spec struct {
	// SessionID and WorkID label the sandbox for operators and orphan cleanup.
	SessionID string
	WorkID    string
	// Workspace is the host directory that holds the session's files. It is
	// the sandbox's working directory (mounted at /workspace by isolating
	// backends).
	Workspace string
	// Env is the complete environment of processes inside the sandbox. It is
	// built from an allow-list by the caller; backends add nothing from the
	// host environment.
	Env map[string]string
	// Limits bound what the sandbox may consume; zero fields take
	// [DefaultLimits]. Backends that cannot enforce a limit say so when
	// they are created (and in `perimeter doctor`), never silently.
	Limits Limits
	// Egress, when set, is the sandbox's one way out: see [Egress].
	Egress *Egress
}

// Egress is a session's egress proxy as a sandbox reaches it. The backend
// mounts Socket (the proxy's unix socket on the host) at [EgressSocket]
// and CABundle (the system roots plus the session's CA) at [CABundle] and
// over the system bundle; sandboxd bridges the socket to a loopback port,
// which the sandbox's HTTP_PROXY names. The sandbox has no other network.
type Egress struct {
	Socket   string
	CABundle string
	// CABundlePEM is CABundle's content, for a warm sandbox (see Serve)
	// to be given in place of its own.
	CABundlePEM []byte
	// Serve, when set, has the proxy also accept connections on l, a
	// listener of the caller's, until the proxy stops: a sandbox started
	// before its session (a warm one) has a socket of its own mounted,
	// which the session's proxy then serves. l is the proxy's from then on.
	Serve func(l net.Listener)
}

// Where a sandbox finds its egress proxy and the certificates it trusts.
// sandboxd bridges EgressSocket to EgressListen, the address the sandbox's
// HTTP_PROXY names.
const (
	EgressSocket   = "/run/perimeter/egress.sock"
	EgressListen   = "127.0.0.1:3128"
	CABundle       = "/run/perimeter/ca.pem"
	SystemCABundle = "/etc/ssl/certs/ca-certificates.crt"
)

// Limits are a sandbox's resource bounds.
type Limits struct {
	// MemoryBytes caps memory (and swap) of everything in the sandbox.
	MemoryBytes int64 `yaml:"memory_bytes"`
	// CPUs caps CPU time, in cores (0.5 = half a core).
	CPUs float64 `yaml:"cpus"`
	// PIDs caps the number of processes and threads.
	PIDs int64 `yaml:"pids"`
	// TmpBytes caps each writable scratch area (/tmp, the home directory).
	TmpBytes int64 `yaml:"tmp_bytes"`
	// WorkspaceBytes caps the workspace where the backend can (a
	// loop-mounted filesystem, a sized volume); 0 = unbounded.
	WorkspaceBytes int64 `yaml:"workspace_bytes"`
}

// DefaultLimits are the bounds used for zero fields of [Limits].
var DefaultLimits = Limits{MemoryBytes: 1 << 30, CPUs: 1, PIDs: 256, TmpBytes: 64 << 20}

// OrDefault fills l's zero fields from [DefaultLimits].
func (l Limits) OrDefault() Limits { return l.Or(DefaultLimits) }

// Or fills l's zero fields, but WorkspaceBytes (0 = unbounded), from d.
func (l Limits) Or(d Limits) Limits {
	if l.MemoryBytes > 0 {
		d.MemoryBytes = l.MemoryBytes
	}
	if l.CPUs > 0 {
		d.CPUs = l.CPUs
	}
	if l.PIDs > 0 {
		d.PIDs = l.PIDs
	}
	if l.TmpBytes > 0 {
		d.TmpBytes = l.TmpBytes
	}
	d.WorkspaceBytes = l.WorkspaceBytes
	return d
}

// Call is one tool invocation sent to sandboxd.
type Call struct {
	// Tool is an agent_toolset_20260401 tool name (bash, read, write, edit,
	// glob, grep) or [ToolCommand] for a custom tool run as a command.
	Tool  string          `json:"tool"`
	Input json.RawMessage `json:"input"`
}

// ToolCommand is the sandboxd tool that runs an operator-declared custom
// tool: input {"command": "...", "stdin": "..."} runs the command with
// /bin/sh -c in the workspace, the stdin string on its standard input.
const ToolCommand = "perimeter.command"

// ToolConfigure is the sandboxd tool that gives a sandbox started before its
// session (a warm one) the session's environment: input {"env": {"NAME":
// "value"}} sets each variable for every command run from then on,
// exported in the persistent shell too. The supervisor calls it once, before
// the session's first call; it is never exposed to a model.
const ToolConfigure = "perimeter.configure"

// Result is what a tool produced. IsError marks a tool failure the model
// should see as such (a non-zero exit, a missing file); it is not an RPC
// failure.
type Result struct {
	Text    string `json:"text"`
	IsError bool   `json:"is_error"`
}

// Runtime creates sandboxes. Implementations must be safe for concurrent use.
type Runtime interface {
	// Name identifies the backend in logs, spans and `perimeter doctor`.
	Name() string
	// Create starts a sandbox for spec and returns once sandboxd inside it
	// answers.
	Create(ctx context.Context, spec Spec) (Sandbox, error)
}

// Sandbox is one running sandbox holding one session.
type Sandbox interface {
	// Exec runs call and returns its result. The error is non-nil only when
	// the call could not be completed by sandboxd (it died, hung past ctx,
	// or spoke garbage); such errors wrap one of the errors below.
	Exec(ctx context.Context, call Call) (Result, error)
	// Close stops and removes the sandbox. It is idempotent.
	Close(ctx context.Context) error
}

var (
	// ErrClosed is returned by Exec on a sandbox that was closed.
	ErrClosed = errors.New("sandbox closed")
	// ErrExited means sandboxd exited or its channel broke before the call
	// was answered. Backends return it as an [*ExitError], which says how
	// sandboxd ended and whether the call had reached it.
	ErrExited = errors.New("sandbox exited")
	// ErrUnresponsive means sandboxd did not stop a cancelled call within
	// its grace period: it is wedged and must be replaced.
	ErrUnresponsive = errors.New("sandbox stopped answering")
	// ErrProtocol means sandboxd answered with something that is not a
	// valid response.
	ErrProtocol = errors.New("sandbox protocol violation")
)

// Check is one line of a backend's report of what the host supports, as
// `perimeter doctor` prints it.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// ReasonOOM is the [ExitError] reason of a sandbox killed for exceeding its
// memory limit.
const ReasonOOM = "out of memory"

// Labels every backend puts on what it creates, so orphans of a crashed
// worker can be found and removed.
const (
	LabelSession = "dev.perimeter.session"
	LabelWork    = "dev.perimeter.work"
	LabelWorker  = "dev.perimeter.worker"
)

// DefaultStartTimeout bounds how long Create waits for sandboxd's hello.
const DefaultStartTimeout = 30 * time.Second

// envName is what an environment variable given to a sandbox may be
// called: what a shell can export.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidEnvName reports whether name can be a sandbox's environment
// variable (one a shell can export).
func ValidEnvName(name string) bool { return envName.MatchString(name) }
