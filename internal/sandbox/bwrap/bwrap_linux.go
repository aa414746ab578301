package bwrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Paths and ids inside a sandbox.
const (
	sandboxUID       = 1000
	sandboxGID       = 1000
	sandboxHome      = "/home/sandbox"
	sandboxWorkspace = "/workspace"
	sandboxBinary    = "/opt/perimeter/perimeter"
	sandboxHostname  = "sandbox"
)

// defaultHostID is the host uid and gid sandboxes run as under a root worker.
const defaultHostID = 65534

// probeTimeout bounds each bwrap run New makes to learn what the host
// supports.
const probeTimeout = 15 * time.Second

// Runtime starts bwrap sandboxes. It is safe for concurrent use; everything
// in it is fixed by New.
type Runtime struct {
	opts    Options
	bwrap   string // absolute path
	version string // "bubblewrap 0.8.0"
	binary  string // absolute host path of the perimeter binary
	feat    features
	seccomp []byte              // the compiled filter
	denied  int                 // how many system calls it denies
	cred    *syscall.Credential // the host ids bwrap runs as; nil: the worker's own
	hostIDs [2]int              // uid and gid sandboxes have on the host
	rootfs  []string            // bwrap arguments for /usr, /bin, /lib* and /etc
	cg      cgroupPlan
	// intoCgroup: bwrap can be started directly in its cgroup v2 leaf
	// (clone3 with CLONE_INTO_CGROUP, Linux 5.7).
	intoCgroup bool
	checks     []sandbox.Check

	wsOnce sync.Once // the workspace-size warning, logged once
}

var _ sandbox.Runtime = (*Runtime)(nil)

// features are the optional bwrap options this bwrap has.
type features struct {
	size          bool // --size for tmpfs (0.5)
	perms         bool // --perms (0.5)
	disableUserns bool // --disable-userns (0.8)
}

// requiredFlags are the bwrap options the runtime cannot do without
// (bubblewrap 0.5 has them all).
var requiredFlags = []string{
	"--args", "--info-fd", "--block-fd", "--seccomp", "--ro-bind-data", "--remount-ro",
	"--die-with-parent", "--new-session", "--unshare-cgroup-try", "--cap-drop", "--clearenv", "--uid",
}

// New finds bwrap, checks that it can create a sandbox on this host (one
// throw-away run), works out which resource limits the host lets it
// enforce, and logs a warning naming each one it cannot.
func New(opts Options) (*Runtime, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = sandbox.DefaultStartTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HostUID == 0 {
		opts.HostUID = defaultHostID
	}
	if opts.HostGID == 0 {
		opts.HostGID = defaultHostID
	}
	r := &Runtime{opts: opts}
	if err := r.findBwrap(); err != nil {
		return nil, err
	}
	if err := r.findBinary(); err != nil {
		return nil, err
	}
	prog, n, err := seccompFilter()
	if err != nil {
		return nil, fmt.Errorf("bwrap: %w", err)
	}
	r.seccomp, r.denied = prog, n
	if os.Geteuid() == 0 {
		r.cred = &syscall.Credential{Uid: uint32(opts.HostUID), Gid: uint32(opts.HostGID), Groups: []uint32{}}
		r.hostIDs = [2]int{opts.HostUID, opts.HostGID}
	} else {
		r.hostIDs = [2]int{os.Geteuid(), os.Getegid()}
	}
	if r.rootfs, err = hostRootfs(); err != nil {
		return nil, fmt.Errorf("bwrap: %w", err)
	}

	host, err := readHostCgroups()
	if err != nil {
		opts.Logger.Warn("bwrap: cannot read this process's cgroups", slog.Any("error", err))
	}
	r.cg = planCgroups(host, opts.CgroupRoot, os.Geteuid())
	r.cg.verify()
	if n := r.cg.removeStale(); n > 0 {
		opts.Logger.Info("bwrap: removed the empty cgroups of workers that no longer run", slog.Int("count", n))
	}
	if err := r.probe(); err != nil {
		return nil, err
	}
	r.checks = r.doctor()
	r.warnUnenforced()
	return r, nil
}

// Name is "bwrap".
func (r *Runtime) Name() string { return "bwrap" }

// Doctor reports what this runtime enforces on this host, as New found out:
// one check per isolation feature and per resource limit.
func (r *Runtime) Doctor(context.Context) []sandbox.Check {
	return slices.Clone(r.checks)
}

func (r *Runtime) findBwrap() error {
	path := r.opts.Bwrap
	if path == "" {
		p, err := exec.LookPath("bwrap")
		if err != nil {
			return fmt.Errorf("bwrap: bubblewrap is not installed (no bwrap in PATH); install it (apt-get install bubblewrap, dnf install bubblewrap) or give its path: %w", err)
		}
		path = p
	} else if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("bwrap: the bwrap executable: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("bwrap: %w", err)
	}
	r.bwrap = abs
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, abs, "--version").Output()
	if err != nil {
		return fmt.Errorf("bwrap: %s --version: %w (is it bubblewrap?)", abs, err)
	}
	r.version = strings.TrimSpace(string(out))
	help, err := exec.CommandContext(ctx, abs, "--help").Output()
	if err != nil {
		return fmt.Errorf("bwrap: %s --help: %w", abs, err)
	}
	has := func(flag string) bool { return bytes.Contains(help, []byte(flag+" ")) }
	var missing []string
	for _, f := range requiredFlags {
		if !has(f) {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("bwrap: %s (%s) is too old: it lacks %s; install a newer bubblewrap (0.8 or later has everything this runtime uses)", abs, r.version, strings.Join(missing, ", "))
	}
	r.feat = features{size: has("--size"), perms: has("--perms"), disableUserns: has("--disable-userns")}
	return nil
}

func (r *Runtime) findBinary() error {
	bin := r.opts.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return fmt.Errorf("bwrap: locate the perimeter binary: %w", err)
		}
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return fmt.Errorf("bwrap: %w", err)
	}
	if fi, err := os.Stat(abs); err != nil {
		return fmt.Errorf("bwrap: the perimeter binary: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("bwrap: the perimeter binary %s is not a regular file", abs)
	}
	r.binary = abs
	return nil
}

// etcFiles are the host files under /etc a sandbox sees, read-only, when
// they exist: what the dynamic linker, TLS clients, Debian's alternatives
// and time functions need. Nothing that can hold a secret (the rest of
// /etc: ssh, ssl/private, gitconfig, credentials of package managers …).
var etcFiles = []string{
	"/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
	"/etc/alternatives",
	"/etc/ssl/certs", "/etc/ssl/openssl.cnf",
	"/etc/pki/tls/certs", "/etc/pki/ca-trust/extracted", "/etc/pki/tls/openssl.cnf",
	"/etc/localtime", "/etc/os-release",
	"/etc/protocols", "/etc/services",
}

// hostRootfs is the part of bwrap's arguments that builds the sandbox's
// root from the host: /usr read-only, /bin, /sbin and /lib* as the links
// or directories they are on the host, and etcFiles.
func hostRootfs() ([]string, error) {
	if fi, err := os.Stat("/usr"); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("this host has no /usr directory to give sandboxes")
	}
	args := []string{"--ro-bind", "/usr", "/usr"}
	for _, dir := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(dir)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(dir)
			if err != nil {
				return nil, err
			}
			args = append(args, "--symlink", target, dir)
		case fi.IsDir():
			args = append(args, "--ro-bind", dir, dir)
		}
	}
	for _, f := range etcFiles {
		args = append(args, "--ro-bind-try", f, f)
	}
	return args, nil
}

// Synthesized /etc files. The sandbox's user is the only one mapped into
// its user namespace; root and nobody exist so that files owned by unmapped
// ids (shown as 65534) and tools that look up root have names.
var (
	etcPasswd = fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\n"+
		"sandbox:x:%d:%d:sandbox:%s:/bin/bash\n"+
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", sandboxUID, sandboxGID, sandboxHome)
	etcGroup    = fmt.Sprintf("root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n", sandboxGID)
	etcNsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n"
	etcHosts    = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + sandboxHostname + "\n"
)

// The file descriptors bwrap gets (exec.Cmd.ExtraFiles, in this order).
const (
	fdArgs = 3 + iota
	fdInfo
	fdBlock
	fdSeccomp
	fdPasswd
	fdGroup
	fdNsswitch
	fdHosts
	fdCount = iota
)

// layout is what differs between sandboxes in bwrap's arguments.
type layout struct {
	env       map[string]string
	tmpBytes  int64
	workspace string // host directory for /workspace; "" for none
	egress    *sandbox.Egress
}

// args are bwrap's options for l, passed on the --args descriptor (so the
// environment never shows in the host's process list); the command follows
// on the command line.
func (r *Runtime) args(l layout) ([]string, error) {
	a := []string{
		"--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
	}
	if r.feat.disableUserns {
		a = append(a, "--disable-userns")
	}
	a = append(a,
		"--die-with-parent", "--new-session",
		"--uid", strconv.Itoa(sandboxUID), "--gid", strconv.Itoa(sandboxGID),
		"--hostname", sandboxHostname,
		"--cap-drop", "ALL",
		"--clearenv",
	)
	keys := make([]string, 0, len(l.env))
	for k := range l.env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := l.env[k]
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("environment variable %q is not valid (an empty name, '=' in the name, or a NUL byte)", k)
		}
		a = append(a, "--setenv", k, v)
	}
	a = append(a,
		"--info-fd", strconv.Itoa(fdInfo),
		"--block-fd", strconv.Itoa(fdBlock),
		"--seccomp", strconv.Itoa(fdSeccomp),
	)
	perms := func(mode string) []string {
		if r.feat.perms {
			return []string{"--perms", mode}
		}
		return nil
	}
	sized := func(mode, dest string) []string {
		x := perms(mode)
		if r.feat.size {
			x = append(x, "--size", strconv.FormatInt(l.tmpBytes, 10))
		}
		return append(x, "--tmpfs", dest)
	}
	a = append(a, perms("0755")...)
	a = append(a, "--dir", "/etc")
	a = append(a, r.rootfs...)
	for _, f := range []struct {
		fd   int
		dest string
	}{{fdPasswd, "/etc/passwd"}, {fdGroup, "/etc/group"}, {fdNsswitch, "/etc/nsswitch.conf"}, {fdHosts, "/etc/hosts"}} {
		a = append(a, perms("0644")...)
		a = append(a, "--ro-bind-data", strconv.Itoa(f.fd), f.dest)
	}
	a = append(a, "--proc", "/proc", "--dev", "/dev")
	a = append(a, sized("1777", "/dev/shm")...)
	a = append(a, sized("1777", "/tmp")...)
	a = append(a, sized("0700", sandboxHome)...)
	a = append(a, "--ro-bind", r.binary, sandboxBinary)
	if e := l.egress; e != nil {
		// A socket in a read-only mount can still be connected to.
		a = append(a, "--dir", "/run/perimeter",
			"--ro-bind", e.Socket, sandbox.EgressSocket,
			"--ro-bind", e.CABundle, sandbox.CABundle,
			"--ro-bind", e.CABundle, sandbox.SystemCABundle)
	}
	if l.workspace != "" {
		a = append(a, "--bind", l.workspace, sandboxWorkspace, "--chdir", sandboxWorkspace)
	} else {
		a = append(a, "--chdir", "/")
	}
	// Last: /dev's and the root's own tmpfs become read-only (the mounts on
	// them keep their modes), so the only writable places are the sized
	// tmpfs and the workspace.
	a = append(a, "--remount-ro", "/dev", "--remount-ro", "/")
	return a, nil
}

// sandboxdCommand runs sandboxd in the sandbox. bwrap sets PWD to the
// working directory, /workspace, after the spec's environment, as a shell
// would (and every shell the tools start resets its own PWD anyway).
func sandboxdCommand(egress bool) []string {
	cmd := []string{sandboxBinary, "sandboxd", "--workdir", sandboxWorkspace}
	if egress {
		cmd = append(cmd, "--egress-socket", sandbox.EgressSocket)
	}
	return cmd
}

// probe starts one sandbox that runs `sh -c "exit 0"`, in a throw-away cgroup, to
// prove that bwrap can create namespaces here, that the binary is reachable
// and that the filter loads; and learns whether bwrap can be cloned
// straight into its cgroup.
func (r *Runtime) probe() error {
	run := func(into bool) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		var stderr bytes.Buffer
		b, err := r.boot(ctx, bootSpec{
			name:    leafName("probe"),
			layout:  layout{tmpBytes: 1 << 20},
			limits:  sandbox.Limits{}.OrDefault(),
			command: []string{"/bin/sh", "-c", "exit 0"},
			into:    into,
			stderr:  &stderr,
		})
		if err != nil {
			return stderr.String(), err
		}
		err = b.admit(ctx)
		if err == nil {
			err = b.cmd.Wait()
		} else {
			b.kill()
			_ = b.cmd.Wait()
		}
		if b.cg != nil {
			_ = b.cg.remove(time.Second)
		}
		return stderr.String(), err
	}
	into := r.cg.v2 != ""
	out, err := run(into)
	var startErr *startError
	if into && errors.As(err, &startErr) {
		// An old kernel without clone3's CLONE_INTO_CGROUP: move bwrap
		// into its leaf behind the --block-fd barrier, like v1.
		into = false
		out, err = run(false)
	}
	var joinErr *joinError
	if errors.As(err, &joinErr) {
		// The cgroups exist but bwrap may not be moved into them (a
		// delegation that stops short of the worker's own cgroup): run
		// without, and say so.
		r.cg.drop(fmt.Sprintf("moving bwrap into its cgroup failed: %v", joinErr.err))
		into = false
		out, err = run(false)
	}
	if err != nil {
		msg := strings.TrimSpace(out)
		hint := "check that unprivileged user namespaces are allowed (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or an AppArmor restriction on them)"
		if strings.Contains(msg, "Permission denied") && r.cred != nil {
			hint = r.reachHint(r.binary)
		}
		if msg != "" {
			return fmt.Errorf("bwrap: %s cannot create a sandbox on this host: %w: %s; %s", r.bwrap, err, msg, hint)
		}
		return fmt.Errorf("bwrap: %s cannot create a sandbox on this host: %w; %s", r.bwrap, err, hint)
	}
	r.intoCgroup = into
	return nil
}

// reachHint explains, for a root worker, why bwrap (running as HostUID)
// could not use path, naming the first directory above it that uid cannot
// search when there is one.
func (r *Runtime) reachHint(path string) string {
	uid, gid := r.hostIDs[0], r.hostIDs[1]
	msg := fmt.Sprintf("bwrap runs as uid %d because the worker is root, and resolves %s as that uid", uid, path)
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			break
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		searchable := mode&0o001 != 0 || (ok && int(st.Uid) == uid && mode&0o100 != 0) || (ok && int(st.Gid) == gid && mode&0o010 != 0)
		if !searchable {
			return fmt.Sprintf("%s: %s (mode %04o) is not searchable by it; make every directory above it searchable (e.g. chmod 0711 %s), or run the worker as an unprivileged user", msg, dir, mode, dir)
		}
		if dir == "/" {
			break
		}
	}
	return msg + ": it and every directory above it must be searchable by that uid"
}

// doctor builds the checks Doctor returns.
func (r *Runtime) doctor() []sandbox.Check {
	who := fmt.Sprintf("uid %d inside, host uid %d", sandboxUID, r.hostIDs[0])
	if r.cred != nil {
		who += " (the worker is root; set by HostUID)"
	} else {
		who += " (the worker's own)"
	}
	checks := []sandbox.Check{
		{Name: "bwrap", OK: true, Detail: fmt.Sprintf("%s (%s): user, pid, network, IPC, UTS and cgroup namespaces work", r.bwrap, r.version)},
		{Name: "sandbox user", OK: true, Detail: who + "; no capabilities, no_new_privs"},
		{Name: "seccomp filter", OK: true, Detail: fmt.Sprintf("%d system calls denied; foreign-architecture calls kill the process", r.denied)},
	}
	if r.feat.disableUserns {
		checks = append(checks, sandbox.Check{Name: "nested user namespaces", OK: true, Detail: "disabled (bwrap --disable-userns) and unshare/clone denied by the filter"})
	} else {
		checks = append(checks, sandbox.Check{Name: "nested user namespaces", OK: true, Detail: "unshare/clone of namespaces denied by the filter (" + r.version + " lacks --disable-userns, 0.8 adds it)"})
	}
	switch {
	case r.cg.v2 != "" && r.cg.v2Kill:
		checks = append(checks, sandbox.Check{Name: "cgroup", OK: true, Detail: "each sandbox gets a leaf under " + r.cg.v2 + "; Close uses cgroup.kill"})
	case r.cg.v2 != "":
		checks = append(checks, sandbox.Check{Name: "cgroup", OK: true, Detail: "each sandbox gets a leaf under " + r.cg.v2 + " (no cgroup.kill before Linux 5.14; the pid namespace is killed instead)"})
	default:
		checks = append(checks, sandbox.Check{Name: "cgroup", OK: len(r.cg.ctl) > 0, Detail: "no cgroup v2 leaf: " + r.cg.v2Why})
	}
	for _, c := range limitControllers {
		name := map[string]string{ctlMemory: "memory limit", ctlPIDs: "pids limit", ctlCPU: "cpu limit"}[c]
		if pl, ok := r.cg.ctl[c]; ok {
			v := "v2"
			if pl.v1 {
				v = "v1"
			}
			detail := fmt.Sprintf("enforced (cgroup %s, under %s)", v, pl.dir)
			if c == ctlMemory && r.cg.swapWhy != "" {
				detail += "; " + r.cg.swapWhy
			}
			checks = append(checks, sandbox.Check{Name: name, OK: true, Detail: detail})
			continue
		}
		checks = append(checks, sandbox.Check{Name: name, OK: false, Detail: "NOT enforced: " + r.cg.why[c]})
	}
	if r.feat.size {
		checks = append(checks, sandbox.Check{Name: "tmp size limit", OK: true, Detail: "enforced: /tmp, /dev/shm and " + sandboxHome + " are sized tmpfs"})
	} else {
		checks = append(checks, sandbox.Check{Name: "tmp size limit", OK: false, Detail: "NOT enforced: " + r.version + " lacks --size (bubblewrap 0.5 adds it)"})
	}
	checks = append(checks, sandbox.Check{Name: "workspace size limit", OK: true, Detail: "not supported by bwrap: Limits.WorkspaceBytes is ignored (the workspace is a host directory; use a file system quota or the docker runtime)"})
	return checks
}

// warnUnenforced logs one warning naming every limit the host does not
// let this runtime enforce.
func (r *Runtime) warnUnenforced() {
	var attrs []any
	for _, c := range r.checks {
		if !c.OK {
			attrs = append(attrs, slog.String(strings.ReplaceAll(c.Name, " ", "_"), c.Detail))
		}
	}
	if r.cg.enforced(ctlMemory) && r.cg.swapWhy != "" {
		attrs = append(attrs, slog.String("swap_limit", "NOT enforced: "+r.cg.swapWhy))
	}
	if len(attrs) > 0 {
		r.opts.Logger.Warn("bwrap: some sandbox resource limits are NOT enforced on this host; a sandbox can use more than its limits allow", attrs...)
	}
}
