package bwrap_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/bwrap"
	"github.com/perimeterhq/perimeter/internal/sandbox/sandboxtest"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// sharedDir holds what sandboxes must reach on the host: a root worker runs
// bwrap as an unprivileged uid, which cannot search the private directories
// the Go tool and t.TempDir make.
var sharedDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "perimeter-bwrap-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sharedDir = dir
	return m.Run()
}

var (
	binMu  sync.Mutex
	copied = map[string]string{}
)

// binary is the perimeter binary, where the sandbox's host uid can read it.
func binary(t testing.TB) string { return shared(t, testenv.Binary(t)) }

// slimBinary is the slim sandboxd testenv builds alongside it.
func slimBinary(t testing.TB) string { return shared(t, testenv.Sandboxd(t)) }

// shared copies a file testenv built to sharedDir, once.
func shared(t testing.TB, built string) string {
	t.Helper()
	name := filepath.Base(built)
	binMu.Lock()
	defer binMu.Unlock()
	if path, ok := copied[name]; ok {
		return path
	}
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sharedDir, name)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	copied[name] = path
	return path
}

// script writes an executable shell script where sandboxes can run it.
func script(t *testing.T, body string) string {
	t.Helper()
	dir, err := os.MkdirTemp(sharedDir, "script-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "script")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// newRuntime is a bwrap runtime running the slim sandboxd, as the worker
// runs it (internal/sandboxbin), unless opts names a binary; its log is
// printed only if the test fails.
func newRuntime(t testing.TB, opts bwrap.Options) *bwrap.Runtime {
	t.Helper()
	_, lookErr := exec.LookPath("bwrap")
	testenv.Need(t, lookErr == nil || opts.Bwrap != "", "bubblewrap (bwrap in PATH)")
	var buf testenv.Buffer
	t.Cleanup(func() {
		if t.Failed() && buf.Len() > 0 {
			t.Logf("runtime log:\n%s", buf.String())
		}
	})
	if opts.Binary == "" {
		opts.Binary = slimBinary(t)
	}
	opts.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rt, err := bwrap.New(opts)
	testenv.Need(t, err == nil, fmt.Sprintf("a bwrap that can create sandboxes on this host (New: %v)", err))
	return rt
}

// searchable makes the directories above a test workspace searchable by
// the sandbox's host uid, as a root worker's state directory must be (see
// the package doc); t.TempDir makes them private.
type searchable struct{ *bwrap.Runtime }

func (s searchable) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if os.Geteuid() == 0 {
		tmp := filepath.Clean(os.TempDir())
		for dir := filepath.Dir(filepath.Clean(spec.Workspace)); strings.HasPrefix(dir, tmp+"/"); dir = filepath.Dir(dir) {
			fi, err := os.Stat(dir)
			if err != nil {
				return nil, err
			}
			if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
				return nil, err
			}
		}
	}
	return s.Runtime.Create(ctx, spec)
}

func TestBwrapRuntimeConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandbox.Runtime {
		return searchable{newRuntime(t, bwrap.Options{})}
	})
}

func TestBwrapRuntimeEscapes(t *testing.T) {
	sandboxtest.RunEscapes(t, func(t *testing.T) sandbox.Runtime {
		return searchable{newRuntime(t, bwrap.Options{})}
	}, sandboxtest.EscapeOptions{})
}

func TestBwrapRuntimeEgress(t *testing.T) {
	needPython(t)
	sandboxtest.RunEgress(t, searchable{newRuntime(t, bwrap.Options{})}, sandboxtest.EgressOptions{Dir: egressDir(t)})
}

// egressDir is a directory for the egress suites' sockets that the
// sandbox's host uid can reach.
func egressDir(t *testing.T) string {
	dir, err := os.MkdirTemp(sharedDir, "egress-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBwrapRuntimeIsNamedBwrap(t *testing.T) {
	if got := newRuntime(t, bwrap.Options{}).Name(); got != "bwrap" {
		t.Errorf("Name() = %q", got)
	}
}

// workspace is a fresh workspace directory the sandbox's host uid can reach.
func workspace(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(sharedDir, "ws-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "workspace")
}

var testEnv = map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

func create(t *testing.T, rt *bwrap.Runtime, spec sandbox.Spec) *bwrap.Sandbox {
	t.Helper()
	if spec.Workspace == "" {
		spec.Workspace = workspace(t)
	}
	if spec.Env == nil {
		spec.Env = testEnv
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = sb.Close(context.Background()) })
	return sb.(*bwrap.Sandbox)
}

func exec1(t *testing.T, sb sandbox.Sandbox, tool, input string) (sandbox.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return sb.Exec(ctx, sandbox.Call{Tool: tool, Input: []byte(input)})
}

// sh runs command with /bin/sh in the sandbox and returns its output; a
// non-zero exit is returned as the result's text with IsError set, not as
// a test failure.
func sh(t *testing.T, sb sandbox.Sandbox, command string) sandbox.Result {
	t.Helper()
	res, err := exec1(t, sb, sandbox.ToolCommand, fmt.Sprintf(`{"command":%q}`, command))
	if err != nil {
		t.Fatalf("%s: %v", command, err)
	}
	return res
}

func mustSh(t *testing.T, sb sandbox.Sandbox, command string) string {
	t.Helper()
	res := sh(t, sb, command)
	if res.IsError {
		t.Fatalf("%s: %s", command, res.Text)
	}
	return res.Text
}

// python runs a Python program in the sandbox.
func python(t *testing.T, sb sandbox.Sandbox, program string) sandbox.Result {
	t.Helper()
	res, err := exec1(t, sb, sandbox.ToolCommand, fmt.Sprintf(`{"command":"python3 -","stdin":%q}`, program))
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	return res
}

func needPython(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("python3")
	testenv.Need(t, err == nil, "python3 on the host (the sandbox shares its /usr)")
}

func TestBwrapSandboxProcessesHaveNoPrivileges(t *testing.T) {
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	status := mustSh(t, sb, "cat /proc/self/status")
	for _, want := range []string{"NoNewPrivs:\t1", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", "CapBnd:\t0000000000000000", "Seccomp:\t2"} {
		if !strings.Contains(status, want+"\n") {
			t.Errorf("/proc/self/status lacks %q:\n%s", want, status)
		}
	}
	if got := mustSh(t, sb, "id -u; id -g; hostname"); got != "1000\n1000\nsandbox\n" {
		t.Errorf("id -u; id -g; hostname = %q, want 1000, 1000, sandbox", got)
	}
}

func TestBwrapSandboxDeniesEscapeSystemCalls(t *testing.T) {
	needPython(t)
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	t.Run("MountCommand", func(t *testing.T) {
		res := sh(t, sb, "mount -t tmpfs x /tmp")
		if !res.IsError {
			t.Errorf("mount succeeded: %q", res.Text)
		}
	})
	t.Run("UnshareCommand", func(t *testing.T) {
		res := sh(t, sb, "unshare -r true")
		if !res.IsError {
			t.Errorf("unshare -r succeeded: %q", res.Text)
		}
	})
	// EPERM (rather than, say, ENOSPC from --disable-userns, or success for
	// PTRACE_TRACEME, which any process may do) shows the filter at work.
	tests := []struct {
		name, call, want string
	}{
		{"PtraceAttachToPID1", "libc.ptrace(16, 1, 0, 0)", "EPERM"},
		{"PtraceTraceme", "libc.ptrace(0, 0, 0, 0)", "EPERM"},
		{"UnshareUserNamespace", "libc.unshare(0x10000000)", "EPERM"},
		{"UnshareMountNamespace", "libc.unshare(0x00020000)", "EPERM"},
		{"MountTmpfs", "libc.mount(b'x', b'/tmp', b'tmpfs', 0, None)", "EPERM"},
		{"Clone3", "libc.syscall(435, None, 0)", "ENOSYS"},
		{"IOURingSetup", "libc.syscall(425, 8, None)", "ENOSYS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			program := fmt.Sprintf("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nr = %s\nprint(r, errno.errorcode.get(ctypes.get_errno(), 'none'))\n", tc.call)
			res := python(t, sb, program)
			if res.IsError || strings.TrimSpace(res.Text) != "-1 "+tc.want {
				t.Errorf("%s = %q, want -1 %s", tc.call, res.Text, tc.want)
			}
		})
	}
}

func TestBwrapSandboxHasItsOwnPIDNamespace(t *testing.T) {
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	hostInit, err := os.ReadFile("/proc/1/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	inside := mustSh(t, sb, `tr '\0' ' ' < /proc/1/cmdline`)
	if strings.TrimSpace(inside) == strings.TrimSpace(strings.ReplaceAll(string(hostInit), "\x00", " ")) {
		t.Errorf("pid 1 inside is the host's init: %q", inside)
	}
	if !strings.Contains(inside, "bwrap") {
		t.Errorf("pid 1 inside is %q, want bwrap's init", inside)
	}
	pids := strings.Fields(mustSh(t, sb, `ls /proc | grep -E '^[0-9]+$'`))
	if len(pids) > 10 {
		t.Errorf("the sandbox sees %d processes, want only its own: %v", len(pids), pids)
	}
	if slices.Contains(pids, strconv.Itoa(os.Getpid())) && os.Getpid() > 10 {
		t.Errorf("the sandbox sees the test's pid %d", os.Getpid())
	}
}

func TestBwrapSandboxSeesOnlyItsIntendedFiles(t *testing.T) {
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	t.Run("Root", func(t *testing.T) {
		want := []string{"bin", "dev", "etc", "home", "opt", "proc", "sbin", "tmp", "usr", "workspace"}
		for _, lib := range []string{"lib", "lib32", "lib64", "libx32"} {
			if _, err := os.Lstat("/" + lib); err == nil {
				want = append(want, lib)
			}
		}
		if _, err := os.Lstat("/sbin"); err != nil {
			want = slices.DeleteFunc(want, func(s string) bool { return s == "sbin" })
		}
		slices.Sort(want)
		got := strings.Fields(mustSh(t, sb, "ls -A /"))
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("ls / = %v, want %v", got, want)
		}
	})
	t.Run("Etc", func(t *testing.T) {
		allowed := []string{"passwd", "group", "nsswitch.conf", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
			"alternatives", "ssl", "pki", "localtime", "os-release", "protocols", "services"}
		for _, name := range strings.Fields(mustSh(t, sb, "ls -A /etc")) {
			if !slices.Contains(allowed, name) {
				t.Errorf("/etc/%s is visible in the sandbox", name)
			}
		}
		if ssl := strings.Fields(mustSh(t, sb, "ls -A /etc/ssl 2>/dev/null; true")); slices.Contains(ssl, "private") {
			t.Errorf("/etc/ssl/private is visible in the sandbox")
		}
		passwd := mustSh(t, sb, "cat /etc/passwd")
		if !strings.Contains(passwd, "sandbox:x:1000:1000:sandbox:/home/sandbox:") || strings.Count(passwd, "\n") != 3 {
			t.Errorf("/etc/passwd is not the synthesized one:\n%s", passwd)
		}
	})
	t.Run("OtherHostDirectoriesAreAbsent", func(t *testing.T) {
		for _, dir := range []string{"/root", "/var", "/run", "/sys", "/home/sandbox/..", "/opt/perimeter"} {
			res := sh(t, sb, "ls -A "+dir)
			switch dir {
			case "/home/sandbox/..":
				if strings.TrimSpace(res.Text) != "sandbox" {
					t.Errorf("/home holds %q, want only sandbox", res.Text)
				}
			case "/opt/perimeter":
				if strings.TrimSpace(res.Text) != "perimeter" {
					t.Errorf("/opt/perimeter holds %q, want only the binary", res.Text)
				}
			default:
				if !res.IsError {
					t.Errorf("%s exists in the sandbox: %q", dir, res.Text)
				}
			}
		}
	})
	t.Run("OnlyScratchAndWorkspaceAreWritable", func(t *testing.T) {
		for _, path := range []string{"/x", "/usr/x", "/etc/x", "/etc/passwd", "/dev/x", "/opt/perimeter/perimeter", "/opt/x", "/proc/sys/kernel/hostname"} {
			if res := sh(t, sb, "echo x > "+path); !res.IsError {
				t.Errorf("wrote %s", path)
			}
		}
		for _, dir := range []string{"/tmp", "/dev/shm", "/home/sandbox", "/workspace"} {
			mustSh(t, sb, "echo x > "+dir+"/x && rm "+dir+"/x")
		}
		mustSh(t, sb, "echo x > /dev/null")
	})
}

func TestBwrapScratchAreasAreSizeCapped(t *testing.T) {
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{Limits: sandbox.Limits{TmpBytes: 1 << 20}})
	for _, dir := range []string{"/tmp", "/dev/shm", "/home/sandbox"} {
		t.Run(strings.ReplaceAll(strings.TrimPrefix(dir, "/"), "/", "-"), func(t *testing.T) {
			res := sh(t, sb, "head -c 2000000 /dev/zero > "+dir+"/big")
			if !res.IsError || !strings.Contains(res.Text, "No space left on device") {
				t.Errorf("writing 2 MB to %s with a 1 MiB cap: %+v", dir, res)
			}
			mustSh(t, sb, "rm -f "+dir+"/big")
		})
	}
}

func TestBwrapSandboxHasNoNetwork(t *testing.T) {
	needPython(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})

	res := python(t, sb, fmt.Sprintf("import socket\nsocket.create_connection(('127.0.0.1', %d), 2)\nprint('connected')\n", port))
	if !res.IsError || strings.Contains(res.Text, "connected") {
		t.Errorf("connecting to the host's listener: %+v, want a failure", res)
	}
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Error("the host's listener accepted a connection from the sandbox")
	}
	if got := strings.TrimSpace(python(t, sb, "import socket\nprint([n for _, n in socket.if_nameindex()])\n").Text); got != "['lo']" {
		t.Errorf("network interfaces = %s, want only lo", got)
	}
}

func TestBwrapSandboxdStartsWithExactlyTheSpecEnvironment(t *testing.T) {
	const canary = "perimeter-canary-value"
	t.Setenv("PERIMETER_CANARY_SECRET", canary)
	rt := newRuntime(t, bwrap.Options{})
	sb := create(t, rt, sandbox.Spec{Env: map[string]string{"ONLY": "this", "ALLOWED_TOKEN": "not-in-ps-" + canary}})
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sb.PID()))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(string(bytes.TrimRight(environ, "\x00")), "\x00")
	slices.Sort(got)
	if want := []string{"ALLOWED_TOKEN=not-in-ps-" + canary, "ONLY=this", "PWD=/workspace"}; !slices.Equal(got, want) {
		t.Errorf("sandboxd's environment = %q, want %q", got, want)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sb.BwrapPID()))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cmdline, []byte(canary)) {
		t.Errorf("an environment value shows in bwrap's command line, which every host user can read: %q", cmdline)
	}
	bwrapEnv, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sb.BwrapPID()))
	if err != nil {
		t.Fatal(err)
	}
	if len(bwrapEnv) != 0 {
		t.Errorf("bwrap's own environment = %q, want empty", bwrapEnv)
	}
}

func TestBwrapSandboxDoesNotInheritTheWorkersDescriptors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker-private")
	if err := os.WriteFile(path, []byte("private"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Opened without O_CLOEXEC, as a descriptor inherited from whatever
	// started the worker would be.
	fd, err := syscall.Open(path, syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	for _, pid := range []int{sb.PID(), sb.InitPID()} {
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); target == path {
				t.Errorf("pid %d in the sandbox holds the worker's descriptor as fd %s", pid, e.Name())
			}
		}
	}
}

func TestBwrapWorkspaceIsTheSandboxUsersAndNothingElse(t *testing.T) {
	rt := newRuntime(t, bwrap.Options{})
	uid, gid := rt.HostIDs()
	ws := workspace(t)
	if err := os.MkdirAll(ws, 0o700); err != nil {
		t.Fatal(err)
	}
	// Put there by the worker, as root when it runs as root.
	if err := os.WriteFile(filepath.Join(ws, "from-worker.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(ws, "host-link")); err != nil {
		t.Fatal(err)
	}
	sb := create(t, rt, sandbox.Spec{Workspace: ws})
	mustSh(t, sb, "echo more >> from-worker.txt && cp /usr/bin/id ./id2 && chmod u+s ./id2")
	for _, name := range []string{"from-worker.txt", "id2", "."} {
		fi, err := os.Lstat(filepath.Join(ws, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s is owned by %d:%d on the host, want the sandbox's %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
		if st.Uid == 0 && fi.Mode()&os.ModeSetuid != 0 {
			t.Errorf("the sandbox made a setuid-root file on the host: %s", name)
		}
	}
	if fi, err := os.Stat("/etc/hostname"); err == nil && fi.Sys().(*syscall.Stat_t).Uid != 0 && os.Geteuid() == 0 {
		t.Errorf("/etc/hostname changed owner through the workspace's symlink")
	}
}

func TestBwrapSandboxReportsHowSandboxdDied(t *testing.T) {
	exits7 := script(t, fmt.Sprintf("#!/bin/sh\necho '{\"hello\":{\"version\":%d,\"workdir\":\"/workspace\",\"pid\":2}}'\nread -r line\nexit 7\n", sandbox.ProtocolVersion))
	tests := []struct {
		name    string
		binary  string
		command string
		reason  string
	}{
		{"KilledBySIGKILL", "", "kill -KILL $PPID", "killed by signal SIGKILL"},
		{"ExitedWithAStatus", exits7, "true", "exit status 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sb := create(t, newRuntime(t, bwrap.Options{Binary: tc.binary}), sandbox.Spec{})
			_, err := exec1(t, sb, "bash", fmt.Sprintf(`{"command":%q}`, tc.command))
			var exit *sandbox.ExitError
			if !errors.As(err, &exit) || exit.Reason != tc.reason || !exit.Sent {
				t.Fatalf("err = %v, want an ExitError{Reason: %q, Sent: true}", err, tc.reason)
			}
			_, err = exec1(t, sb, "bash", `{"command":"true"}`)
			if !errors.As(err, &exit) || exit.Reason != tc.reason || exit.Sent {
				t.Fatalf("next call: err = %v, want an ExitError{Reason: %q, Sent: false}", err, tc.reason)
			}
		})
	}
}

func TestBwrapCreateFailsFastWhenSandboxdCannotStart(t *testing.T) {
	broken := script(t, "#!/bin/sh\necho 'sandboxd: no such thing' >&2\nexit 3\n")
	rt := newRuntime(t, bwrap.Options{Binary: broken})
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: workspace(t), Env: testEnv})
	var exit *sandbox.ExitError
	if !errors.As(err, &exit) || exit.Reason != "exit status 3" {
		t.Fatalf("err = %v, want an ExitError with exit status 3", err)
	}
	if !strings.Contains(err.Error(), "sandboxd: no such thing") {
		t.Errorf("err = %v, want it to quote sandboxd's stderr", err)
	}
}

func TestBwrapCreateGivesUpOnASilentSandboxdAndLeavesNothing(t *testing.T) {
	silent := script(t, "#!/bin/sh\nexec sleep 600\n")
	rt := newRuntime(t, bwrap.Options{Binary: silent, StartTimeout: 300 * time.Millisecond})
	before := cgroupLeaves(t)
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: workspace(t), Env: testEnv})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a start timeout", err)
	}
	if after := cgroupLeaves(t); len(after) > len(before) {
		t.Errorf("cgroups left behind: %v", slices.DeleteFunc(after, func(s string) bool { return slices.Contains(before, s) }))
	}
}

// cgroupLeaves lists this process's sandbox cgroups that exist.
func cgroupLeaves(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, pattern := range []string{"/sys/fs/cgroup/perimeter/*", "/sys/fs/cgroup/*/perimeter/*", "/sys/fs/cgroup/*/*/perimeter/*", "/sys/fs/cgroup/*/*/*/perimeter/*"} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if strings.HasPrefix(filepath.Base(m), strconv.Itoa(os.Getpid())+"-") {
				out = append(out, m)
			}
		}
	}
	return out
}

func TestBwrapCloseLeavesNoProcessAndNoCgroup(t *testing.T) {
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{})
	if _, err := exec1(t, sb, "bash", `{"command":"sleep 600 >/dev/null 2>&1 & sleep 600 >/dev/null 2>&1 &"}`); err != nil {
		t.Fatal(err)
	}
	pids := []int{sb.PID(), sb.BwrapPID(), sb.InitPID()}
	dirs := sb.CgroupDirs()
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(data)) {
			pid, _ := strconv.Atoi(f)
			if !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	if len(dirs) > 0 && len(pids) < 6 {
		t.Errorf("the cgroups hold %v, want bwrap, its init, sandboxd, the shell and the sleeps", pids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sb.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Close returns only once everything is gone: no waiting here.
	for _, pid := range pids {
		if !gone(pid) {
			t.Errorf("process %d outlived Close", pid)
		}
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s outlived Close (stat: %v)", dir, err)
		}
	}
	if err := sb.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// gone reports whether pid is absent or a zombie.
func gone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
}

func TestBwrapForkBombIsBoundedByThePIDLimit(t *testing.T) {
	needPython(t)
	rt := newRuntime(t, bwrap.Options{})
	testenv.Need(t, rt.Enforces("pids"), "a host that lets the worker enforce the pids limit (see Doctor)")
	const limit = 64
	sb := create(t, rt, sandbox.Spec{Limits: sandbox.Limits{PIDs: limit}})
	res := python(t, sb, `
import errno, os, signal, time
kids = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    print(len(kids), errno.errorcode[e.errno])
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
`)
	fields := strings.Fields(res.Text)
	if res.IsError || len(fields) != 2 || fields[1] != "EAGAIN" {
		t.Fatalf("fork bomb: %+v, want a count and EAGAIN", res)
	}
	if n, _ := strconv.Atoi(fields[0]); n >= limit || n < limit/2 {
		t.Errorf("the fork bomb made %d processes under a limit of %d", n, limit)
	}
	if err := exec.Command("true").Run(); err != nil {
		t.Errorf("the host cannot fork after the sandbox's fork bomb: %v", err)
	}
	if out := mustSh(t, sb, "echo alive"); out != "alive\n" {
		t.Errorf("the sandbox after its fork bomb: %q", out)
	}
}

func TestBwrapMemoryBombIsKilled(t *testing.T) {
	needPython(t)
	rt := newRuntime(t, bwrap.Options{})
	testenv.Need(t, rt.Enforces("memory"), "a host that lets the worker enforce the memory limit (see Doctor)")
	sb := create(t, rt, sandbox.Spec{Limits: sandbox.Limits{MemoryBytes: 128 << 20}})
	res, err := exec1(t, sb, "bash", `{"command":"python3 -c 'x = []\nwhile True: x.append(b\"\\x01\" * (8 << 20))'"}`)
	t.Logf("memory bomb: %+v, %v", res, err)
	var exit *sandbox.ExitError
	switch {
	case errors.As(err, &exit):
		if exit.Reason != sandbox.ReasonOOM {
			t.Errorf("sandboxd died of %q, want %q", exit.Reason, sandbox.ReasonOOM)
		}
	case err != nil:
		t.Fatal(err)
	case !res.IsError || !strings.Contains(res.Text, "Killed") && !strings.Contains(res.Text, "137"):
		t.Errorf("memory bomb: %+v, want it killed", res)
	default:
		if out := mustSh(t, sb, "echo alive"); out != "alive\n" {
			t.Errorf("the sandbox after its memory bomb: %q", out)
		}
	}
}

func TestBwrapOOMKillOfSandboxdIsReportedAsOutOfMemory(t *testing.T) {
	needPython(t)
	// sandboxd itself grows past the limit: a script standing in for it
	// answers the hello and then allocates until the kernel kills it.
	hog := script(t, fmt.Sprintf("#!/bin/sh\necho '{\"hello\":{\"version\":%d,\"workdir\":\"/workspace\",\"pid\":2}}'\nread -r line\nexec python3 -c 'x = []\nwhile True: x.append(b\"\\x01\" * (8 << 20))'\n", sandbox.ProtocolVersion))
	rt := newRuntime(t, bwrap.Options{Binary: hog})
	testenv.Need(t, rt.Enforces("memory"), "a host that lets the worker enforce the memory limit (see Doctor)")
	sb := create(t, rt, sandbox.Spec{Limits: sandbox.Limits{MemoryBytes: 64 << 20}})
	_, err := exec1(t, sb, "bash", `{"command":"true"}`)
	var exit *sandbox.ExitError
	if !errors.As(err, &exit) || exit.Reason != sandbox.ReasonOOM {
		t.Fatalf("err = %v, want an ExitError with reason %q", err, sandbox.ReasonOOM)
	}
}

func TestBwrapCPULimitThrottles(t *testing.T) {
	needPython(t)
	rt := newRuntime(t, bwrap.Options{})
	testenv.Need(t, rt.Enforces("cpu"), "a host that lets the worker enforce the cpu limit (see Doctor)")
	sb := create(t, rt, sandbox.Spec{Limits: sandbox.Limits{CPUs: 0.2}})
	res := python(t, sb, "import time\nend = time.time() + 2\nwhile time.time() < end: pass\nprint(round(time.process_time(), 2))\n")
	used, err := strconv.ParseFloat(strings.TrimSpace(res.Text), 64)
	if res.IsError || err != nil {
		t.Fatalf("busy loop: %+v", res)
	}
	if used > 1.0 {
		t.Errorf("a busy loop used %.2fs of CPU in 2s under a 0.2-CPU limit", used)
	}
}

func TestBwrapDoctorNamesEveryLimit(t *testing.T) {
	rt := newRuntime(t, bwrap.Options{})
	checks := rt.Doctor(context.Background())
	for _, name := range []string{"bwrap", "sandbox user", "seccomp filter", "cgroup", "memory limit", "pids limit", "cpu limit", "tmp size limit", "workspace size limit"} {
		if !slices.ContainsFunc(checks, func(c sandbox.Check) bool { return c.Name == name && c.Detail != "" }) {
			t.Errorf("Doctor has no %q check with a detail: %+v", name, checks)
		}
	}
	for _, c := range checks {
		t.Logf("%-22s ok=%-5v %s", c.Name, c.OK, c.Detail)
	}
}

func TestNewExplainsAMissingBwrap(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := bwrap.New(bwrap.Options{Binary: "/bin/sh"})
	if err == nil || !strings.Contains(err.Error(), "bubblewrap is not installed") || !strings.Contains(err.Error(), "apt-get install bubblewrap") {
		t.Errorf("New without bwrap: %v, want an install hint", err)
	}
	_, err = bwrap.New(bwrap.Options{Bwrap: "/nonexistent/bwrap", Binary: "/bin/sh"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/bwrap") {
		t.Errorf("New with a bwrap path that does not exist: %v", err)
	}
}

func TestNewRejectsAMissingBinary(t *testing.T) {
	_, lookErr := exec.LookPath("bwrap")
	testenv.Need(t, lookErr == nil, "bubblewrap (bwrap in PATH)")
	_, err := bwrap.New(bwrap.Options{Binary: filepath.Join(t.TempDir(), "nope")})
	if err == nil || !strings.Contains(err.Error(), "perimeter binary") {
		t.Errorf("err = %v, want it to name the perimeter binary", err)
	}
}

func TestBwrapSandboxesAreConcurrent(t *testing.T) {
	rt := newRuntime(t, bwrap.Options{})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		ws := workspace(t)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sb, err := rt.Create(ctx, sandbox.Spec{SessionID: fmt.Sprintf("sesn_%d", i), Workspace: ws, Env: testEnv})
			if err != nil {
				errs[i] = err
				return
			}
			defer sb.Close(ctx)
			res, err := sb.Exec(ctx, sandbox.Call{Tool: sandbox.ToolCommand, Input: []byte(`{"command":"echo ok"}`)})
			if err != nil || res.Text != "ok\n" {
				errs[i] = fmt.Errorf("echo ok: %+v, %v", res, err)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("sandbox %d: %v", i, err)
		}
	}
}

func TestBwrapCreateExplainsAWorkspaceTheSandboxUserCannotReach(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (the worker runs bwrap as another uid only when it is root)")
	rt := newRuntime(t, bwrap.Options{})
	private := filepath.Join(t.TempDir(), "state") // t.TempDir's parent is 0700
	if err := os.MkdirAll(private, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Create(context.Background(), sandbox.Spec{Workspace: filepath.Join(private, "ws"), Env: testEnv})
	if err == nil {
		t.Fatal("Create succeeded with a workspace under a private directory")
	}
	t.Log(err)
	for _, want := range []string{"uid 65534", "is not searchable", "chmod 0711 " + private} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %q", err, want)
		}
	}
}

// The sandbox's one way out: the egress socket, bridged by sandboxd to
// 127.0.0.1:3128, which HTTP_PROXY names; the session's CA bundle replaces
// the system one.
func TestBwrapSandboxReachesItsEgressProxyThroughTheBridge(t *testing.T) {
	needPython(t)
	dir := egressDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "egress.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The sandbox's uid must be able to connect.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 1)
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Method + " " + r.URL.String():
		default:
		}
		fmt.Fprint(w, "answered by the egress proxy")
	}))
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, []byte("-----BEGIN CERTIFICATE-----\nsession-ca-marker\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sb := create(t, newRuntime(t, bwrap.Options{}), sandbox.Spec{
		Env:    map[string]string{"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:3128", "http_proxy": "http://127.0.0.1:3128"},
		Egress: &sandbox.Egress{Socket: sock, CABundle: bundle},
	})
	res := python(t, sb, "import urllib.request\nprint(urllib.request.urlopen('http://upstream.example/path?q=1', timeout=10).read().decode())\n")
	if res.IsError || !strings.Contains(res.Text, "answered by the egress proxy") {
		t.Fatalf("request through the proxy: %+v", res)
	}
	if got := <-seen; got != "GET http://upstream.example/path?q=1" {
		t.Errorf("the proxy saw %q", got)
	}
	for _, path := range []string{sandbox.SystemCABundle, sandbox.CABundle} {
		res, err := sb.Exec(context.Background(), sandbox.Call{Tool: "bash", Input: []byte(`{"command":"cat ` + path + `"}`)})
		if err != nil || !strings.Contains(res.Text, "session-ca-marker") {
			t.Errorf("%s in the sandbox: %+v, %v", path, res, err)
		}
	}
	// Without the proxy there is still no way out.
	res = python(t, sb, "import socket\nsocket.create_connection(('1.1.1.1', 80), 2)\nprint('connected')\n")
	if !res.IsError || strings.Contains(res.Text, "connected") {
		t.Errorf("a direct connection left the sandbox: %+v", res)
	}
}

func TestBwrapWarmPoolEgress(t *testing.T) {
	needPython(t)
	sandboxtest.RunEgressWarm(t, searchable{newRuntime(t, bwrap.Options{})}, sandboxtest.EgressOptions{Dir: egressDir(t)})
}
