package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-units"

	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/sandbox"
)

const (
	// stopGrace is how long Close lets sandboxd end on SIGTERM before the
	// engine kills the container.
	stopGrace = 2 * time.Second
	// closeTimeout bounds Close's calls to the engine; Close runs on a
	// context detached from the caller's cancellation.
	closeTimeout = 30 * time.Second
)

// Create starts a container for spec, attaches to its stdio and waits for
// sandboxd's hello. See the package documentation for what the container
// can reach.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	start := time.Now()
	if spec.Workspace == "" {
		return nil, errors.New("docker: spec.Workspace is required")
	}
	env, err := envArgs(spec.Env)
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	limits := spec.Limits.OrDefault()
	ws, err := filepath.Abs(spec.Workspace)
	if err == nil {
		err = os.MkdirAll(ws, 0o700)
	}
	if err == nil {
		ws, err = filepath.EvalSymlinks(ws)
	}
	if err != nil {
		return nil, fmt.Errorf("docker: workspace: %w", err)
	}
	log := r.log.With(slog.String("session_id", spec.SessionID), slog.String("work_id", spec.WorkID))

	var wsfs *workspaceFS
	switch {
	case limits.WorkspaceBytes <= 0:
	case workspaceFSSupported() != nil:
		log.Warn("the workspace is NOT size-bounded: limits.workspace_bytes is set but cannot be enforced here",
			slog.String("reason", workspaceFSSupported().Error()))
	default:
		if wsfs, err = mountWorkspace(ctx, ws, limits.WorkspaceBytes, log); err != nil {
			return nil, fmt.Errorf("docker: size-bounded workspace: %w", err)
		}
	}
	// From here on, a failure undoes what was done.
	s := &Sandbox{rt: r, log: log, wsfs: wsfs, limits: limits, ooms: newOOMWatch()}
	fail := func(err error) (sandbox.Sandbox, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer cancel()
		if cerr := s.close(cctx, 0); cerr != nil {
			log.Warn("cleaning up a sandbox that failed to start", slog.Any("error", cerr))
		}
		if tail := s.stderr.Tail(); tail != "" {
			return nil, fmt.Errorf("docker: %w; sandboxd's last output: %s", err, tail)
		}
		return nil, fmt.Errorf("docker: %w", err)
	}
	if err := r.prepareWorkspace(ws, log); err != nil {
		return fail(err)
	}

	labels := map[string]string{
		sandbox.LabelSession: spec.SessionID,
		sandbox.LabelWork:    spec.WorkID,
		sandbox.LabelWorker:  r.opts.WorkerID,
		LabelImage:           r.image,
		LabelRuntime:         r.Name(),
	}
	if wsfs != nil {
		labels[LabelWorkspaceFS] = wsfs.image
	}
	cfg := &container.Config{
		Hostname: "sandbox",
		User:     fmt.Sprintf("%d:%d", image.UID, image.GID),
		// Env is what the engine records; the entrypoint's `env -i` makes
		// it exactly sandboxd's environment, without the HOSTNAME the
		// engine adds or the HOME runc adds.
		Env:        env,
		Entrypoint: slices.Concat([]string{"/usr/bin/env", "-i", "--"}, env, sandboxdArgs(spec.Egress != nil)),
		WorkingDir: containerWorkspace,
		Image:      r.image,
		Labels:     labels,
		// stdin stays open for the worker's writes; the attach, made before
		// the start, carries the RPC. No TTY: stdout and stderr stay apart.
		OpenStdin:       true,
		StdinOnce:       false,
		AttachStdin:     true,
		AttachStdout:    true,
		AttachStderr:    true,
		Tty:             false,
		NetworkDisabled: true,
	}
	tmpfs := fmt.Sprintf("rw,nosuid,nodev,exec,size=%d", limits.TmpBytes)
	pids := limits.PIDs
	ulimits := []*container.Ulimit{{Name: "core", Soft: 0, Hard: 0}}
	if r.gVisor() {
		// Under gVisor the cgroup's pids limit counts the host threads of
		// gVisor's kernel (about 55 idle, several per guest process), and
		// gVisor dies when it runs out. The guest's processes are bounded
		// inside gVisor's kernel instead, by RLIMIT_NPROC (it is a kernel
		// of its own: the limit counts only this sandbox's uid 1000); the
		// cgroup keeps a generous bound that protects the host.
		ulimits = append(ulimits, &container.Ulimit{Name: "nproc", Soft: pids, Hard: pids})
		pids = gVisorHostTasks(pids)
	}
	hc := &container.HostConfig{
		Runtime:        r.opts.OCIRuntime,
		Init:           ptr(true), // docker-init is PID 1: it reaps orphans, and sandboxd can be killed from inside
		NetworkMode:    "none",
		CapDrop:        []string{"ALL"},
		SecurityOpt:    r.securityOpts(),
		ReadonlyRootfs: true,
		Tmpfs: map[string]string{
			"/tmp":        tmpfs + ",mode=1777",
			containerHome: fmt.Sprintf("%s,mode=0700,uid=%d,gid=%d", tmpfs, image.UID, image.GID),
		},
		Mounts: append([]mount.Mount{
			{Type: mount.TypeBind, Source: ws, Target: containerWorkspace},
			{Type: mount.TypeBind, Source: r.binary, Target: containerBinary, ReadOnly: true},
		}, egressMounts(spec.Egress)...),
		Resources: container.Resources{
			Memory:     limits.MemoryBytes,
			MemorySwap: limits.MemoryBytes, // no swap beyond the memory limit
			NanoCPUs:   int64(r.cpus(ctx, limits.CPUs) * 1e9),
			PidsLimit:  &pids,
			Ulimits:    ulimits,
		},
		// In a host-wide memory shortage the sandboxes go first, not the
		// worker.
		OomScoreAdj:  1000,
		IpcMode:      container.IPCModePrivate,
		CgroupnsMode: container.CgroupnsModePrivate,
		// The RPC carries tool inputs and outputs: never to the engine's disk.
		LogConfig: container.LogConfig{Type: "none"},
	}
	// The engine finishes creating a container whose request was
	// cancelled, and only its answer says which one it made: the request
	// (milliseconds) does not end with ctx, so a container that exists is
	// known, and removed below if ctx ended meanwhile.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	created, err := r.cli.ContainerCreate(cctx, cfg, hc, &network.NetworkingConfig{}, nil, containerName(spec.SessionID))
	ccancel()
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			err = fmt.Errorf("%w (build the image with `perimeter image build` and configure the sha256:… it prints)", err)
		}
		return fail(fmt.Errorf("create container: %w", err))
	}
	s.id = created.ID
	s.log = log.With(slog.String("container", shortID(s.id)))
	for _, w := range created.Warnings {
		s.log.Warn("engine warning on create", slog.String("warning", w))
	}
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = stopWatch
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer stopWatch()
		s.ooms.watch(wctx, r.cli, s.id, start, s.log)
	}()
	if err := s.attach(ctx); err != nil {
		return fail(err)
	}
	if err := r.cli.ContainerStart(ctx, s.id, container.StartOptions{}); err != nil {
		return fail(fmt.Errorf("start container: %w", err))
	}
	hctx, cancel := context.WithTimeout(ctx, r.opts.StartTimeout)
	defer cancel()
	hello, err := s.conn.Hello(hctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("sandboxd did not answer within %s: %w", r.opts.StartTimeout, err)
		}
		return fail(fmt.Errorf("start sandboxd: %w", err))
	}
	s.oom = s.newOOMCounter(ctx)
	s.ooms.setCounter(s.oom)
	s.log.Debug("sandbox started", slog.String("workdir", hello.Workdir), slog.Duration("took", time.Since(start)),
		slog.String("memory", units.BytesSize(float64(limits.MemoryBytes))), slog.Float64("cpus", limits.CPUs), slog.Int64("pids", limits.PIDs))
	return s, nil
}

// cpus is want, or the engine host's CPU count when want is more: the
// engine refuses a quota above it.
func (r *Runtime) cpus(ctx context.Context, want float64) float64 {
	r.ncpuMu.Lock()
	defer r.ncpuMu.Unlock()
	// Asked until the engine answers: a first Create whose context ended
	// must not leave every later one uncapped.
	if r.ncpu == 0 {
		if info, err := r.cli.Info(ctx); err == nil {
			r.ncpu = info.NCPU
		}
	}
	if r.ncpu > 0 && want > float64(r.ncpu) {
		r.log.Warn("limits.cpus is more than the engine's host has; using all of them", slog.Float64("cpus", want), slog.Int("host_cpus", r.ncpu))
		return float64(r.ncpu)
	}
	return want
}

// gVisor reports whether containers run under gVisor's runsc.
func (r *Runtime) gVisor() bool { return strings.HasPrefix(r.opts.OCIRuntime, "runsc") }

// gVisorHostTasks is the cgroup pids limit of a gVisor sandbox whose guest
// may run pids processes: gVisor's own threads plus, with its ptrace
// platform, several host tasks per guest process.
func gVisorHostTasks(pids int64) int64 { return 256 + 16*pids }

func (r *Runtime) securityOpts() []string {
	opts := []string{"no-new-privileges"}
	if r.seccomp != "" {
		opts = append(opts, "seccomp="+r.seccomp)
	}
	return opts
}

// prepareWorkspace makes ws writable by the sandbox user. As root, it hands
// the tree to uid 1000 (files the worker put there, such as skills,
// included); the walk goes through an os.Root, so a symbolic link planted
// by an earlier sandbox cannot redirect it outside ws.
func (r *Runtime) prepareWorkspace(ws string, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		fi, err := os.Stat(ws)
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		if st, ok := statOwner(fi); ok && st != image.UID {
			log.Warn("the workspace is not owned by the sandbox user (uid 1000) and the worker is not root to change that: tools may not be able to write it",
				slog.String("workspace", ws))
		}
		return nil
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	defer root.Close()
	if err := root.Chmod(".", 0o700); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		if info, err := d.Info(); err == nil {
			if uid, ok := statOwner(info); ok && uid == image.UID {
				return nil
			}
		}
		if err := root.Lchown(p, image.UID, image.GID); err != nil {
			return fmt.Errorf("workspace: hand %s to the sandbox user: %w", p, err)
		}
		return nil
	})
}

// envArgs is env as sorted NAME=value strings, refusing what `env` would
// misread or the kernel cannot pass.
func envArgs(env map[string]string) ([]string, error) {
	out := make([]string, 0, len(env))
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.HasPrefix(k, "-") || strings.Contains(v, "\x00") {
			return nil, fmt.Errorf("environment variable %q cannot be passed to a sandbox", k)
		}
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out, nil
}

var nameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// containerName is perimeter-<session>-<random>, readable in `docker ps`.
func containerName(session string) string {
	session = nameUnsafe.ReplaceAllString(session, "-")
	if len(session) > 40 {
		session = session[:40]
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	if session == "" {
		return "perimeter-" + hex.EncodeToString(b)
	}
	return "perimeter-" + strings.Trim(session, "-.") + "-" + hex.EncodeToString(b)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func ptr[T any](v T) *T { return &v }

// sandboxdArgs is sandboxd's command line in the container.
func sandboxdArgs(egress bool) []string {
	args := []string{containerBinary, "sandboxd", "--workdir", containerWorkspace}
	if egress {
		args = append(args, "--egress-socket", sandbox.EgressSocket)
	}
	return args
}

// egressMounts put the session's egress socket and CA bundle where the
// sandbox expects them (see [sandbox.Egress]). A socket in a read-only
// mount can still be connected to.
func egressMounts(e *sandbox.Egress) []mount.Mount {
	if e == nil {
		return nil
	}
	return []mount.Mount{
		{Type: mount.TypeBind, Source: e.Socket, Target: sandbox.EgressSocket, ReadOnly: true},
		{Type: mount.TypeBind, Source: e.CABundle, Target: sandbox.CABundle, ReadOnly: true},
		{Type: mount.TypeBind, Source: e.CABundle, Target: sandbox.SystemCABundle, ReadOnly: true},
	}
}
