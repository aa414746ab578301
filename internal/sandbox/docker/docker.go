// Package docker is the sandbox runtime that runs each session in a
// container of the Docker Engine, through its API: with runc (runtime name
// "docker") or gVisor's runsc ("docker-runsc"), which puts a user-space
// kernel between the tools and the host's.
//
// Trust model. Everything in the container is hostile, sandboxd included.
// The container reaches:
//   - /workspace, a bind mount of the session's workspace directory
//     (optionally a size-bounded file system of its own), read-write;
//   - the worker's static perimeter binary at /opt/perimeter/perimeter,
//     read-only, which runs as sandboxd under docker-init (PID 1);
//   - the image's root file system, read-only, and two private tmpfs
//     scratch areas, /tmp and /home/sandbox, sized and counted against its
//     memory;
//   - its standard input and output, which carry the sandboxd RPC to the
//     worker, and its standard error, which the worker logs, bounded.
//
// It cannot reach: any network (network mode none: a loopback interface
// only), any credential or variable of the worker (its environment is
// exactly Spec.Env, applied with `env -i`, so not even the HOSTNAME the
// engine adds or the HOME runc adds reach it), other sessions' files and
// processes, the engine's socket, or more than its limits of memory (swap
// included), CPU and processes. It runs as uid 1000 with every capability
// dropped, no-new-privileges, Docker's default seccomp profile without
// ptrace and process_vm_readv/writev (or the configured profile), core dumps off, and PID, IPC, UTS, cgroup and mount
// namespaces of its own; under runsc its system calls are served by gVisor,
// not by the host kernel. A kernel or runtime bug is the way out; runsc
// narrows that.
//
// Docker's own default profile lets the processes of a container ptrace
// each other (sandboxd included) on kernels from 4.8; the profile used here
// removes that.
//
// Process limit. Under runc, Limits.PIDs is the cgroup's pids limit. Under
// gVisor the cgroup counts gVisor's own host threads (several per guest
// process), so the guest is bounded by RLIMIT_NPROC in gVisor's kernel and
// the cgroup gets a larger bound that protects the host.
//
// The engine's own logging is off for sandboxes (log driver none): the RPC,
// which carries every tool's input and output, never reaches the engine's
// disk.
//
// Images are given pinned (image ID or name@sha256:…); package image builds
// one. Every container carries the labels of package sandbox, so a
// restarted worker finds and removes what a crashed one left behind
// ([Runtime.RemoveOrphans]).
package docker

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/docker/docker/client"

	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Labels this runtime adds to the ones of package sandbox.
const (
	// LabelImage is the pinned image a container was started from.
	LabelImage = "dev.perimeter.image"
	// LabelRuntime is the runtime's Name.
	LabelRuntime = "dev.perimeter.runtime"
	// LabelWorkspaceFS is the host path of the image file that holds a
	// size-bounded workspace, so an orphan's can be recovered.
	LabelWorkspaceFS = "dev.perimeter.workspace-fs"
)

// Paths inside the container.
const (
	containerBinary    = "/opt/perimeter/perimeter"
	containerWorkspace = "/workspace"
	containerHome      = image.Home
)

// Options configures a [Runtime].
type Options struct {
	// Client talks to the engine; nil means one configured from the
	// environment (DOCKER_HOST …), which [Runtime.Close] closes.
	Client *client.Client
	// Image is the sandbox image, pinned: an image ID (sha256:…, what
	// `perimeter image build` prints) or name@sha256:…. A mutable tag is
	// refused unless ResolveTags is set. Required.
	Image string
	// ResolveTags lets Image be a tag: New resolves it once to its pinned
	// form, logs it and uses only that.
	ResolveTags bool
	// OCIRuntime is the engine runtime containers run under: "runc" (the
	// default) or "runsc" (gVisor), as registered with the engine.
	OCIRuntime string
	// Binary is the host path of the static perimeter binary mounted into
	// every sandbox; empty means the running executable.
	Binary string
	// SeccompProfile is the path of a JSON seccomp profile; empty means the
	// engine's default profile.
	SeccompProfile string
	// WorkerID labels every container, for [Runtime.RemoveOrphans].
	WorkerID string
	// StartTimeout bounds how long Create waits for sandboxd's hello; zero
	// means sandbox.DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives lifecycle events and sandboxd's standard error; nil
	// discards them.
	Logger *slog.Logger
}

// Runtime starts sandboxes as containers. It is safe for concurrent use.
type Runtime struct {
	cli        *client.Client
	ownsClient bool
	opts       Options
	image      string // pinned
	binary     string // absolute, symlinks resolved
	seccomp    string // compact JSON profile, or "" for the engine's default
	log        *slog.Logger

	ncpuMu sync.Mutex // guards ncpu
	ncpu   int        // the engine host's CPUs; 0 = unknown
}

var _ sandbox.Runtime = (*Runtime)(nil)

// newTimeout bounds the engine calls New makes to resolve a tag.
const newTimeout = 30 * time.Second

var runtimeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// New checks opts and returns a runtime. It contacts the engine only to
// resolve a tag (ResolveTags); [Runtime.Doctor] reports whether the engine,
// the OCI runtime and the image are there.
func New(opts Options) (*Runtime, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = sandbox.DefaultStartTimeout
	}
	if opts.OCIRuntime == "" {
		opts.OCIRuntime = "runc"
	}
	if !runtimeName.MatchString(opts.OCIRuntime) {
		return nil, fmt.Errorf("docker: %q is not an engine runtime name (use runc or runsc)", opts.OCIRuntime)
	}
	if opts.Image == "" {
		return nil, errors.New("docker: no sandbox image configured: build one with `perimeter image build` and configure the sha256:… it prints")
	}
	if !image.Pinned(opts.Image) && !opts.ResolveTags {
		return nil, fmt.Errorf("docker: image %q: %w: configure the pinned reference `perimeter image resolve %s` prints, or set resolve_tags: true to resolve it once at start",
			opts.Image, image.ErrNotPinned, opts.Image)
	}
	r := &Runtime{opts: opts, cli: opts.Client, image: opts.Image}
	r.log = opts.Logger.With(slog.String("runtime", r.Name()))

	bin, err := r.resolveBinary(opts.Binary)
	if err != nil {
		return nil, err
	}
	r.binary = bin
	if opts.SeccompProfile != "" {
		raw, err := os.ReadFile(opts.SeccompProfile)
		if err != nil {
			return nil, fmt.Errorf("docker: seccomp profile: %w", err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, fmt.Errorf("docker: seccomp profile %s is not valid JSON: %w", opts.SeccompProfile, err)
		}
		r.seccomp = buf.String()
	} else if r.seccomp, err = defaultSeccomp(); err != nil {
		return nil, fmt.Errorf("docker: build the default seccomp profile: %w", err)
	}

	if r.cli == nil {
		if r.cli, err = image.NewClient(); err != nil {
			return nil, fmt.Errorf("docker: %w", err)
		}
		r.ownsClient = true
	}
	if !image.Pinned(opts.Image) {
		ctx, cancel := context.WithTimeout(context.Background(), newTimeout)
		defer cancel()
		pinned, err := image.Resolve(ctx, r.cli, opts.Image)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("docker: resolve_tags: %w", err)
		}
		r.log.Info("sandbox image tag resolved and pinned for this worker's life", slog.String("tag", opts.Image), slog.String("image", pinned))
		r.image = pinned
	}
	return r, nil
}

// resolveBinary finds the perimeter binary to mount and warns when it is
// not static: the image's C library need not match the host's.
func (r *Runtime) resolveBinary(bin string) (string, error) {
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return "", fmt.Errorf("docker: locate the perimeter binary: %w", err)
		}
	}
	bin, err := filepath.Abs(bin)
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return "", fmt.Errorf("docker: perimeter binary: %w", err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return "", fmt.Errorf("docker: perimeter binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("docker: perimeter binary %s is not an executable file", bin)
	}
	if f, err := elf.Open(bin); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				r.log.Warn("the perimeter binary mounted into sandboxes is dynamically linked and may not run in the sandbox image; build it with CGO_ENABLED=0 (make build does)",
					slog.String("binary", bin))
				break
			}
		}
		f.Close()
	}
	return bin, nil
}

// Name is "docker" under runc and "docker-<runtime>" otherwise
// ("docker-runsc").
func (r *Runtime) Name() string {
	if r.opts.OCIRuntime == "runc" {
		return "docker"
	}
	return "docker-" + r.opts.OCIRuntime
}

// Image is the pinned image sandboxes start from, for the audit record.
func (r *Runtime) Image() string { return r.image }

// Close releases the engine client if New created it. Sandboxes must be
// closed first.
func (r *Runtime) Close() error {
	if r.ownsClient {
		return r.cli.Close()
	}
	return nil
}

// LimitsWorkspace reports whether Create enforces Limits.WorkspaceBytes on
// this host (root, e2fsprogs: see the size-bounded workspace in Create).
// When it does not, Create logs that the workspace is unbounded.
func (r *Runtime) LimitsWorkspace() bool { return workspaceFSSupported() == nil }
