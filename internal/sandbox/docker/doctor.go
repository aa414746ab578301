package docker

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-units"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Doctor reports what this host offers the runtime: the engine and its
// version, the OCI runtimes, whether memory, PID and CPU limits and seccomp
// take effect, docker-init, the image, and whether a workspace size limit
// can be enforced. It never fails; each check says what is wrong and what
// to do.
func (r *Runtime) Doctor(ctx context.Context) []sandbox.Check {
	ver, err := r.cli.ServerVersion(ctx)
	if err != nil {
		return []sandbox.Check{{Name: "docker engine", Detail: fmt.Sprintf("not reachable at %s: %v (start dockerd, or set DOCKER_HOST)", r.cli.DaemonHost(), err)}}
	}
	checks := []sandbox.Check{{Name: "docker engine", OK: true,
		Detail: fmt.Sprintf("Docker %s (API %s) at %s", ver.Version, r.cli.ClientVersion(), r.cli.DaemonHost())}}
	info, err := r.cli.Info(ctx)
	if err != nil {
		return append(checks, sandbox.Check{Name: "docker engine info", Detail: err.Error()})
	}

	for _, rt := range []string{"runc", "runsc"} {
		c := sandbox.Check{Name: "oci runtime " + rt}
		if _, ok := info.Runtimes[rt]; ok {
			c.OK, c.Detail = true, "registered"
		} else {
			c.Detail = "not registered with the engine"
			if rt == "runsc" {
				c.Detail += ": install gVisor (apt-get install runsc) and add it to /etc/docker/daemon.json \"runtimes\" (scripts/test-deps.sh does)"
			}
		}
		if rt == r.opts.OCIRuntime {
			c.Detail += " (used by this worker)"
		}
		checks = append(checks, c)
	}
	if _, ok := info.Runtimes[r.opts.OCIRuntime]; !ok && !slices.Contains([]string{"runc", "runsc"}, r.opts.OCIRuntime) {
		checks = append(checks, sandbox.Check{Name: "oci runtime " + r.opts.OCIRuntime, Detail: "not registered with the engine (used by this worker)"})
	}

	cgroup := fmt.Sprintf("cgroup v%s, %s driver", info.CgroupVersion, info.CgroupDriver)
	checks = append(checks,
		sandbox.Check{Name: "memory limit", OK: info.MemoryLimit && info.SwapLimit,
			Detail: limitDetail(info.MemoryLimit && info.SwapLimit, cgroup, "memory (and swap) limits")},
		sandbox.Check{Name: "pids limit", OK: info.PidsLimit, Detail: limitDetail(info.PidsLimit, cgroup, "process limits")},
		sandbox.Check{Name: "cpu limit", OK: info.CPUCfsQuota, Detail: limitDetail(info.CPUCfsQuota, cgroup, "CPU quotas")},
	)
	seccomp := sandbox.Check{Name: "seccomp"}
	for _, o := range info.SecurityOptions {
		if strings.Contains(o, "name=seccomp") {
			seccomp.OK = true
			seccomp.Detail = "enabled (" + o + ")"
		}
	}
	if !seccomp.OK {
		seccomp.Detail = "the engine does not apply seccomp: sandboxes reach every system call the kernel has"
	} else if r.opts.SeccompProfile != "" {
		seccomp.Detail += "; this worker uses the profile " + r.opts.SeccompProfile
	} else {
		seccomp.Detail += "; this worker uses Docker's default profile without ptrace"
	}
	checks = append(checks, seccomp)
	checks = append(checks, sandbox.Check{Name: "docker-init", OK: info.InitBinary != "",
		Detail: map[bool]string{true: info.InitBinary + " (PID 1 of every sandbox)", false: "the engine has no init binary: install tini (Debian's docker.io ships it)"}[info.InitBinary != ""]})
	for _, w := range info.Warnings {
		checks = append(checks, sandbox.Check{Name: "engine warning", Detail: w})
	}

	img := sandbox.Check{Name: "sandbox image"}
	ins, err := r.cli.ImageInspect(ctx, r.image)
	switch {
	case cerrdefs.IsNotFound(err):
		img.Detail = r.image + " is not in the engine: build it with `perimeter image build`"
	case err != nil:
		img.Detail = err.Error()
	default:
		img.OK = true
		created, _ := time.Parse(time.RFC3339Nano, ins.Created)
		img.Detail = fmt.Sprintf("%s (%s, built %s)", r.image, units.HumanSize(float64(ins.Size)), created.Format(time.DateOnly))
	}
	checks = append(checks, img)
	if img.OK && r.gVisor() {
		checks = append(checks, r.checkGVisorStatx(ctx))
	}
	if !r.gVisor() {
		checks = append(checks, r.checkPtrace(ctx))
	}

	ws := sandbox.Check{Name: "workspace size limit", OK: true,
		Detail: "enforceable: limits.workspace_bytes loop-mounts an ext4 file system per sandbox"}
	if err := workspaceFSSupported(); err != nil {
		ws = sandbox.Check{Name: "workspace size limit", Detail: "limits.workspace_bytes cannot be enforced: " + err.Error()}
	}
	return append(checks, ws)
}

func limitDetail(ok bool, cgroup, what string) string {
	if ok {
		return "enforced (" + cgroup + ")"
	}
	return fmt.Sprintf("NOT enforced: the engine reports no support for %s (%s); enable the cgroup controller", what, cgroup)
}

// checkGVisorStatx runs `stat /` in a throwaway sandbox container: gVisor
// releases before 2023 (Debian bookworm's runsc among them) reject statx
// with AT_NO_AUTOMOUNT, which coreutils uses, so `ls -l` and `stat` fail
// in every sandbox.
func (r *Runtime) checkGVisorStatx(ctx context.Context) sandbox.Check {
	c := sandbox.Check{Name: "gvisor file status"}
	code, err := r.runProbe(ctx, []string{"/usr/bin/stat", "-c", "%s", "/"})
	switch {
	case err != nil:
		c.Detail = "could not run a probe sandbox: " + err.Error()
	case code != 0:
		c.Detail = "stat(1) fails inside gVisor sandboxes (this runsc rejects statx with AT_NO_AUTOMOUNT, so `ls -l` and `stat` fail for agents): install a gVisor release from 2023 or later (https://gvisor.dev/docs/user_guide/install/)"
	default:
		c.OK, c.Detail = true, "stat(1) works inside gVisor sandboxes"
	}
	return c
}

// runProbe runs cmd in a throwaway container of the sandbox image, with
// the sandboxes' isolation, and returns its exit code.
func (r *Runtime) runProbe(ctx context.Context, cmd []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Not cancelled with ctx: a container the engine creates is then
	// always known, and removed (see Create).
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer ccancel()
	created, err := r.cli.ContainerCreate(cctx,
		&container.Config{Image: r.image, User: "1000:1000", Entrypoint: cmd, NetworkDisabled: true,
			Labels: map[string]string{sandbox.LabelSession: "doctor-probe", sandbox.LabelWorker: r.opts.WorkerID}},
		&container.HostConfig{Runtime: r.opts.OCIRuntime, NetworkMode: "none", CapDrop: []string{"ALL"},
			SecurityOpt: r.securityOpts(), ReadonlyRootfs: true, LogConfig: container.LogConfig{Type: "none"}},
		nil, nil, "")
	if err != nil {
		return 0, err
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer rcancel()
		_ = r.removeContainer(rctx, created.ID, 0)
	}()
	waitC, errC := r.cli.ContainerWait(ctx, created.ID, container.WaitConditionNextExit)
	if err := r.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return 0, err
	}
	select {
	case w := <-waitC:
		if w.Error != nil {
			return 0, fmt.Errorf("%s", w.Error.Message)
		}
		return int(w.StatusCode), nil
	case err := <-errC:
		return 0, err
	}
}

// checkPtrace reports whether processes in a runc sandbox can trace each
// other (sandboxd included). They all belong to the session, so no
// boundary is crossed, but ptrace is the first step of many escapes. The
// default profile refuses it; a configured one is tried in a probe
// sandbox, since only running it says what it allows.
func (r *Runtime) checkPtrace(ctx context.Context) sandbox.Check {
	c := sandbox.Check{Name: "ptrace inside sandboxes"}
	if r.opts.SeccompProfile == "" {
		c.OK, c.Detail = true, "refused by this worker's seccomp profile (Docker's default without ptrace, process_vm_readv and process_vm_writev)"
		return c
	}
	code, err := r.runProbe(ctx, []string{"/usr/bin/python3", "-c",
		"import ctypes, sys; sys.exit(0 if ctypes.CDLL(None).ptrace(0, 0, None, None) == 0 else 3)"}) // PTRACE_TRACEME
	scope, yerr := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	s := strings.TrimSpace(string(scope))
	switch {
	case err != nil:
		c.Detail = "could not run a probe sandbox: " + err.Error()
	case code == 3:
		c.OK, c.Detail = true, "refused by the configured seccomp profile "+r.opts.SeccompProfile
	case code != 0:
		c.Detail = fmt.Sprintf("the probe sandbox failed (exit status %d)", code)
	case yerr == nil && s != "0":
		c.OK, c.Detail = true, "allowed by the configured seccomp profile "+r.opts.SeccompProfile+", limited by Yama (kernel.yama.ptrace_scope = "+s+")"
	default:
		c.Detail = "processes in a sandbox can ptrace each other and sandboxd (the configured seccomp profile " + r.opts.SeccompProfile + " allows it): " +
			"refuse ptrace, process_vm_readv and process_vm_writev in it, or set kernel.yama.ptrace_scope=2 on the host"
	}
	return c
}
