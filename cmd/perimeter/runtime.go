package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/bwrap"
	"github.com/perimeterhq/perimeter/internal/sandbox/docker"
	"github.com/perimeterhq/perimeter/internal/sandbox/pool"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/sandboxbin"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// strongestFirst are the isolating runtimes, strongest first: gVisor gives
// each sandbox its own kernel, runc a hardened container, bwrap namespaces
// and seccomp without a daemon.
var strongestFirst = []string{"docker-runsc", "docker", "bwrap"}

// defaultImage is the image `perimeter image build` tags; the docker
// runtimes use it, pinned to its digest at start, when none is configured.
const defaultImage = image.DefaultRepository + ":" + image.DefaultSuite

// runtimeSetup is the chosen sandbox runtime and what goes with it.
type runtimeSetup struct {
	rt      sandbox.Runtime
	warning string // logged on every session
	closers []io.Closer
}

func (s *runtimeSetup) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		_ = s.closers[i].Close()
	}
}

// setupRuntime builds the configured runtime, or the strongest this host
// offers when none is configured (proven by starting one sandbox), wraps it
// in a warm pool when asked, and removes sandboxes a crashed worker with
// the same id left behind. newWorker has prepared the state directory.
func setupRuntime(ctx context.Context, cfg *config.Config, log *slog.Logger) (*runtimeSetup, error) {
	sc := cfg.Sandbox
	s := &runtimeSetup{}
	bin, err := sandboxdBinary(cfg.Worker.StateDir)
	if err != nil {
		return nil, err
	}
	if bin != "" {
		log.Info("sandboxes run the slim sandboxd", slog.String("binary", bin))
	} else {
		log.Info("sandboxes run this binary as sandboxd: it was built without the slim one (make build embeds it)")
	}
	name := sc.Runtime
	if name == "" {
		var why []string
		for _, cand := range strongestFirst {
			rt, err := newRuntime(ctx, cand, bin, cfg, log)
			if err == nil {
				err = probe(ctx, rt, cfg)
			}
			if err == nil {
				name = cand
				s.rt = rt
				log.Info("picked the strongest sandbox runtime this host offers", slog.String("runtime", cand), slog.Any("unavailable", why))
				break
			}
			if c, ok := rt.(io.Closer); ok {
				c.Close()
			}
			why = append(why, fmt.Sprintf("%s: %v", cand, err))
		}
		if s.rt == nil {
			if !sc.InsecureProcessRuntime {
				return nil, fmt.Errorf("no isolating sandbox runtime works on this host (%v); run `perimeter doctor` to see why, or pass --insecure-process-runtime to run tool calls as plain child processes with NO isolation", why)
			}
			name = "process"
			log.Warn("no isolating sandbox runtime works on this host; using the process runtime", slog.Any("unavailable", why))
		}
	}
	if s.rt == nil {
		rt, err := newRuntime(ctx, name, bin, cfg, log)
		if err != nil {
			return nil, err
		}
		s.rt = rt
	}
	if c, ok := s.rt.(io.Closer); ok {
		s.closers = append(s.closers, c)
	}
	if name == "process" {
		s.warning = process.Warning
	}
	if img, ok := s.rt.(interface{ Image() string }); ok {
		log.Info("sandbox image pinned", slog.String("image", img.Image()))
	}
	if o, ok := s.rt.(interface {
		RemoveOrphans(context.Context, string) (int, error)
	}); ok {
		n, err := o.RemoveOrphans(ctx, cfg.Worker.ID)
		if err != nil {
			log.Warn("could not remove orphaned sandboxes", slog.Any("error", err))
		} else if n > 0 {
			log.Info("removed sandboxes a previous worker left behind", slog.Int("count", n))
		}
	}
	if sc.WarmPool > 0 {
		switch {
		case name == "process":
			log.Warn("sandbox.warm_pool is ignored for the process runtime: its sandboxes cannot change workspace")
		case sc.Limits.Workspace > 0:
			log.Warn("sandbox.warm_pool is ignored with limits.workspace: a size-bounded workspace is a mounted file system that cannot be handed over")
		default:
			p, err := pool.New(s.rt, pool.Options{
				Size: sc.WarmPool, Dir: filepath.Join(cfg.Worker.StateDir, "pool"),
				Env: worker.SandboxEnv(sc.Env), Limits: limits(sc.Limits), Egress: true, Logger: log,
			})
			if err != nil {
				s.Close()
				return nil, err
			}
			s.rt = p
			s.closers = append(s.closers, p)
		}
	}
	return s, nil
}

// sandboxdBinary installs the slim sandboxd under stateDir and returns
// its path, which the runtimes start as sandboxd: "" when this executable
// embeds none, and the runtimes start this one. The worker and `perimeter
// doctor` both take it from here, so doctor proves what the worker runs.
func sandboxdBinary(stateDir string) (string, error) {
	return sandboxbin.Path(filepath.Join(stateDir, "bin"))
}

// newRuntime builds the named runtime without starting anything. bin is
// the executable its sandboxes run as sandboxd; empty means this one.
func newRuntime(ctx context.Context, name, bin string, cfg *config.Config, log *slog.Logger) (sandbox.Runtime, error) {
	sc := cfg.Sandbox
	switch name {
	case "process":
		if !sc.InsecureProcessRuntime {
			return nil, errors.New("the process runtime does not isolate tool calls; pass --insecure-process-runtime to accept that (development only)")
		}
		return process.New(process.Options{Binary: bin, Logger: log}), nil
	case "bwrap":
		rt, err := bwrap.New(bwrap.Options{Binary: bin, Logger: log})
		if err != nil {
			return nil, err // not a typed nil in a non-nil interface
		}
		return rt, nil
	case "docker", "docker-runsc":
		img, resolve := sc.Image, sc.ResolveTags
		if img == "" {
			img, resolve = defaultImage, true // our own local build
		}
		oci := "runc"
		if name == "docker-runsc" {
			oci = "runsc"
		}
		rt, err := docker.New(docker.Options{
			Image: img, ResolveTags: resolve, OCIRuntime: oci,
			SeccompProfile: sc.SeccompProfile, WorkerID: cfg.Worker.ID, Binary: bin, Logger: log,
		})
		if err != nil {
			return nil, err // not a typed nil in a non-nil interface
		}
		return rt, nil
	default:
		return nil, fmt.Errorf("unknown sandbox runtime %q: use docker-runsc, docker, bwrap or process", name)
	}
}

// probe proves a runtime works here: it starts a sandbox, runs a command
// that stats and lists files (an old gVisor rejects a newer coreutils'
// statx, which would break every `ls`), and removes it. The sandbox's
// workspace is in the state directory, as a session's is: a worker in a
// container shares that directory, not its /tmp, with the Docker engine
// that mounts it.
func probe(ctx context.Context, rt sandbox.Runtime, cfg *config.Config) error {
	dir, err := os.MkdirTemp(cfg.Worker.StateDir, ".probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	sb, err := rt.Create(ctx, sandbox.Spec{SessionID: "probe", Workspace: dir, Env: worker.SandboxEnv(cfg.Sandbox.Env), Limits: limits(cfg.Sandbox.Limits)})
	if err != nil {
		return err
	}
	defer sb.Close(context.WithoutCancel(ctx))
	res, err := sb.Exec(ctx, sandbox.Call{Tool: "bash", Input: []byte(`{"command":"ls -ld / /tmp && echo probe-ok"}`)})
	switch {
	case err != nil:
		return err
	case res.IsError || !strings.Contains(res.Text, "probe-ok"):
		return fmt.Errorf("a sandbox cannot run `ls -ld /`: %s", strings.Join(strings.Fields(res.Text), " "))
	}
	return nil
}

func limits(l config.Limits) sandbox.Limits {
	return sandbox.Limits{
		MemoryBytes: int64(l.Memory), CPUs: l.CPUs, PIDs: l.PIDs,
		TmpBytes: int64(l.Tmp), WorkspaceBytes: int64(l.Workspace),
	}
}
