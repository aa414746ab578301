// Package bwrap is the sandbox runtime that runs `perimeter sandboxd` under
// bubblewrap (bwrap): Linux namespaces, a seccomp filter and cgroups around
// an unprivileged process, with no daemon and no image.
//
// # What a sandbox gets
//
//   - Its own user namespace: uid and gid 1000 inside, mapped to one
//     unprivileged host id (the worker's own, or [Options.HostUID] when the
//     worker runs as root), no capabilities, no_new_privs, and no further
//     user namespaces (bwrap --disable-userns, and the seccomp filter).
//   - Its own pid, network, IPC, UTS and cgroup namespaces. The network
//     namespace has only a loopback interface: no route out.
//   - A root file system of its own, read-only except where noted: the
//     host's /usr and its /bin, /sbin and /lib* links; a minimal /etc
//     (synthesized passwd, group, nsswitch.conf and hosts, plus the dynamic
//     linker's cache, CA certificates, alternatives and the time zone —
//     never the whole /etc, which holds secrets); fresh /proc and /dev;
//     size-capped tmpfs at /tmp, /dev/shm and /home/sandbox (writable); the
//     session's workspace at /workspace (writable); the perimeter binary at
//     /opt/perimeter/perimeter. Nothing else of the host is there: not its
//     /home, /root, /var, /run or /sys, nor other sandboxes' workspaces.
//   - A seccomp filter (seccomp_linux.go) that fails mount, ptrace,
//     module loading, kexec, bpf, perf_event_open, keyrings, userfaultfd,
//     unshare, setns and namespace-creating clone with EPERM, clone3 and
//     io_uring with ENOSYS, and kills a process making a system call of a
//     foreign architecture (the 32-bit ABI on amd64).
//   - A cgroup bounding memory (with no swap), processes and CPU, when the
//     host lets the worker create one (see cgroup_linux.go); otherwise New
//     logs which limits are not enforced and why, and [Runtime.Doctor]
//     reports it.
//   - Exactly Spec.Env as its environment, and none of the worker's file
//     descriptors (descriptors the worker inherited without close-on-exec
//     are marked so before bwrap starts, since bwrap passes its own on).
//
// # Trust model
//
// bwrap isolates with the same kernel features as docker with runc, but
// less of them, and far less than gVisor:
//
//   - The kernel is shared. Every system call the filter does not deny
//     reaches the host kernel, so a kernel bug reachable from an
//     unprivileged process is a way out. The filter is a deny list (new and
//     rare calls are allowed), where docker's default profile is an allow
//     list of about 300 calls and gVisor (docker-runsc) answers system calls
//     with a kernel of its own. Prefer docker-runsc for code you would not
//     run on the host.
//   - There is no LSM profile (AppArmor, SELinux) and no image: the
//     sandbox's userland is the host's /usr, read-only. It can read what is
//     world-readable there, and /proc shows the host's CPU and memory.
//   - Without cgroups a sandbox can exhaust the host's memory, processes
//     and CPU. The tmpfs sizes hold regardless (they are mount options).
//     Limits.WorkspaceBytes is not enforced: the workspace is a host
//     directory bind-mounted in, and bounding it needs a quota on the host
//     file system (or the docker runtime).
//
// When the worker runs as root, bwrap runs as [Options.HostUID] instead:
// bwrap started by root maps the sandbox's user to host root, so a file a
// sandbox made setuid in its workspace would be a setuid-root file on the
// host. The workspace is handed to that uid (chowned) at Create, and bwrap
// resolves the perimeter binary and the workspace as that uid: they, and
// every directory above them, must be searchable by it.
//
// # Lifecycle
//
// The sandbox's processes live in its own pid namespace. Close kills pid 1
// of that namespace, after which the kernel kills everything else in it,
// kills the cgroup (cgroup.kill) where there is one, reaps bwrap and removes
// the cgroup. bwrap's --die-with-parent ties every sandbox to the worker, so
// none outlives a crashed worker either. (It is the parent death signal,
// which follows the thread that started bwrap: a worker must not start
// sandboxes from a goroutine locked to a thread that then exits.) bwrap's
// own pid 1 can outlive bwrap by a moment and is then reaped by the host's
// init; run the worker under one that reaps (systemd, tini, docker --init).
package bwrap

import (
	"log/slog"
	"time"
)

// Options configures a [Runtime]. The zero value is useful.
type Options struct {
	// Binary is the perimeter executable bound into sandboxes and run as
	// `sandboxd`; empty means the running executable. It must be a static
	// binary (the sandbox has the host's libraries, but at their paths).
	Binary string
	// Bwrap is the bubblewrap executable; empty means `bwrap` from PATH.
	Bwrap string
	// CgroupRoot is the cgroup v2 directory under which each sandbox gets a
	// leaf cgroup. Empty means: <cgroup2 mount>/perimeter when the worker
	// is root, else a "perimeter" sibling of the worker's own cgroup (which
	// is writable when systemd delegated the worker's subtree). See
	// cgroup_linux.go for the cgroup v1 fallback.
	CgroupRoot string
	// HostUID and HostGID are the host ids bwrap, and so everything in the
	// sandbox, runs as when the worker runs as root; zero means 65534
	// (nobody/nogroup on Debian, Ubuntu and Fedora). Use a dedicated id if
	// other services run as nobody. Ignored when the worker is not root:
	// sandboxes then run as the worker's own ids.
	HostUID, HostGID int
	// StartTimeout bounds how long Create waits for sandboxd's hello; zero
	// means sandbox.DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger receives lifecycle events, warnings about limits that are not
	// enforced, and sandboxd's standard error; nil discards them.
	Logger *slog.Logger
}
