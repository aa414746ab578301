package bwrap

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// seccomp return values.
const (
	retAllow       = 0x7fff0000
	retKillProcess = 0x80000000
	retErrno       = 0x00050000
)

// runFilter runs a compiled filter on one system call, as the kernel would:
// a minimal classic-BPF interpreter for the instructions seccompFilter
// emits.
func runFilter(t *testing.T, prog []byte, auditArch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	data := make([]byte, 64) // struct seccomp_data
	binary.NativeEndian.PutUint32(data[0:], nr)
	binary.NativeEndian.PutUint32(data[4:], auditArch)
	for i, a := range args {
		binary.NativeEndian.PutUint64(data[16+8*i:], a)
	}
	var acc uint32
	for pc := 0; pc < len(prog)/8; pc++ {
		in := prog[8*pc:]
		op, jt, jf, k := binary.NativeEndian.Uint16(in), int(in[2]), int(in[3]), binary.NativeEndian.Uint32(in[4:])
		jump := func(cond bool) {
			if cond {
				pc += jt
			} else {
				pc += jf
			}
		}
		switch op {
		case 0x20: // ld [k]
			acc = binary.NativeEndian.Uint32(data[k:])
		case 0x15: // jeq
			jump(acc == k)
		case 0x25: // jgt
			jump(acc > k)
		case 0x35: // jge
			jump(acc >= k)
		case 0x45: // jset
			jump(acc&k != 0)
		case 0x05: // ja
			pc += int(k)
		case 0x06: // ret
			return k
		default:
			t.Fatalf("instruction %d: opcode %#x not understood by the test interpreter", pc, op)
		}
	}
	t.Fatal("the filter ran off its end")
	return 0
}

func TestSeccompFilterDecidesEachSystemCall(t *testing.T) {
	prog, count, err := seccompFilter()
	if err != nil {
		t.Fatal(err)
	}
	if count < 40 {
		t.Errorf("the filter denies %d system calls, want the whole list", count)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	native := uint32(info.ID)
	nr := func(name string) uint32 {
		n, ok := info.SyscallNames[name]
		if !ok {
			t.Fatalf("no %s on %s", name, info.Name)
		}
		return uint32(n)
	}
	eperm, enosys := uint32(retErrno|syscall.EPERM), uint32(retErrno|syscall.ENOSYS)
	tests := []struct {
		name string
		arch uint32
		nr   uint32
		args []uint64
		want uint32
	}{
		{"ReadIsAllowed", native, nr("read"), nil, retAllow},
		{"ExecveIsAllowed", native, nr("execve"), nil, retAllow},
		{"MountIsEPERM", native, nr("mount"), nil, eperm},
		{"PtraceIsEPERM", native, nr("ptrace"), nil, eperm},
		{"UnshareIsEPERM", native, nr("unshare"), nil, eperm},
		{"SetnsIsEPERM", native, nr("setns"), nil, eperm},
		{"BPFIsEPERM", native, nr("bpf"), nil, eperm},
		{"KeyctlIsEPERM", native, nr("keyctl"), nil, eperm},
		{"OpenTreeIsEPERM", native, nr("open_tree"), nil, eperm},
		{"ForkStyleCloneIsAllowed", native, nr("clone"), []uint64{uint64(syscall.SIGCHLD)}, retAllow},
		{"ThreadCloneIsAllowed", native, nr("clone"), []uint64{syscall.CLONE_VM | syscall.CLONE_FS | syscall.CLONE_FILES | syscall.CLONE_SIGHAND | syscall.CLONE_THREAD}, retAllow},
		{"CloneOfAUserNamespaceIsEPERM", native, nr("clone"), []uint64{syscall.CLONE_NEWUSER | uint64(syscall.SIGCHLD)}, eperm},
		{"CloneOfANetworkNamespaceIsEPERM", native, nr("clone"), []uint64{syscall.CLONE_NEWNET}, eperm},
		{"CloneWithFlagsInTheHighWordIsAllowed", native, nr("clone"), []uint64{1 << 40}, retAllow},
		{"Clone3IsENOSYS", native, nr("clone3"), nil, enosys},
		{"IOURingIsENOSYS", native, nr("io_uring_setup"), nil, enosys},
		{"ForeignArchitectureKillsTheProcess", 0x40000003 /* AUDIT_ARCH_I386 */, 21 /* i386 mount */, nil, retKillProcess},
	}
	if runtime.GOARCH == "amd64" {
		tests = append(tests, struct {
			name string
			arch uint32
			nr   uint32
			args []uint64
			want uint32
		}{"X32MountIsENOSYS", native, nr("mount") | 0x40000000, nil, enosys})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := runFilter(t, prog, tc.arch, tc.nr, tc.args...); got != tc.want {
				t.Errorf("filter returned %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestSeccompDenyListNamesExistSomewhere(t *testing.T) {
	for _, name := range deniedSyscalls {
		_, amd := arch.X86_64.SyscallNames[name]
		_, arm := arch.AARCH64.SyscallNames[name]
		if !amd && !arm {
			t.Errorf("%s is a system call of neither amd64 nor arm64 (a typo?)", name)
		}
	}
}

func TestParseHostCgroups(t *testing.T) {
	tests := []struct {
		name       string
		mountinfo  string
		procCgroup string
		wantV2     string // ownDir of the v2 hierarchy, "" for none
		wantV1     map[string]string
	}{
		{
			name: "UnifiedUnderSystemd",
			mountinfo: "25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n" +
				"30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
			procCgroup: "0::/system.slice/perimeter.service\n",
			wantV2:     "/sys/fs/cgroup/system.slice/perimeter.service",
			wantV1:     map[string]string{},
		},
		{
			name: "HybridWithV1Controllers",
			mountinfo: "33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw\n" +
				"34 25 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd\n" +
				"35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory\n" +
				"36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct\n" +
				"37 25 0:32 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids\n",
			procCgroup: "12:pids:/user.slice\n4:cpu,cpuacct:/\n3:memory:/user.slice/user-0.slice\n1:name=systemd:/user.slice\n0::/user.slice/session-1.scope\n",
			wantV2:     "/sys/fs/cgroup/unified/user.slice/session-1.scope",
			wantV1: map[string]string{
				"memory": "/sys/fs/cgroup/memory/user.slice/user-0.slice",
				"cpu":    "/sys/fs/cgroup/cpu,cpuacct",
				"pids":   "/sys/fs/cgroup/pids/user.slice",
			},
		},
		{
			name:       "ContainerSeesItsOwnCgroupAsTheMountRoot",
			mountinfo:  "700 690 0:30 /docker/abc /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw\n",
			procCgroup: "0::/docker/abc\n",
			wantV2:     "/sys/fs/cgroup",
			wantV1:     map[string]string{},
		},
		{
			name:       "OwnCgroupOutsideTheMountedSubtree",
			mountinfo:  "700 690 0:30 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup rw\n",
			procCgroup: "0::/docker/abcdef/x\n",
			wantV2:     "/sys/fs/cgroup",
			wantV1:     map[string]string{},
		},
		{
			name:       "MountPointWithASpace",
			mountinfo:  `25 30 0:22 / /sys/fs/my\040cgroup rw - cgroup2 cgroup2 rw` + "\n",
			procCgroup: "0::/a\n",
			wantV2:     "/sys/fs/my cgroup/a",
			wantV1:     map[string]string{},
		},
		{
			name:       "NoCgroupsAtAll",
			mountinfo:  "30 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
			procCgroup: "",
			wantV1:     map[string]string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host, err := parseHostCgroups(strings.NewReader(tc.mountinfo), strings.NewReader(tc.procCgroup))
			if err != nil {
				t.Fatal(err)
			}
			gotV2 := ""
			if host.v2 != nil {
				gotV2 = host.v2.ownDir()
			}
			if gotV2 != tc.wantV2 {
				t.Errorf("v2 own cgroup = %q, want %q", gotV2, tc.wantV2)
			}
			gotV1 := map[string]string{}
			for _, c := range limitControllers {
				if h, ok := host.v1For(c); ok {
					gotV1[c] = h.ownDir()
				}
			}
			if diff := cmp.Diff(tc.wantV1, gotV1); diff != "" {
				t.Errorf("v1 own cgroups (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHostWithoutCgroupsWarnsAboutEveryLimit(t *testing.T) {
	plan := planCgroups(hostCgroups{}, "", 1000)
	if plan.v2 != "" || len(plan.ctl) != 0 {
		t.Fatalf("plan = %+v, want no cgroups", plan)
	}
	var buf bytes.Buffer
	r := &Runtime{
		opts:    Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))},
		version: "bubblewrap 0.8.0",
		feat:    features{size: true, perms: true, disableUserns: true},
		cg:      plan,
	}
	r.checks = r.doctor()
	r.warnUnenforced()
	for _, name := range []string{"memory limit", "pids limit", "cpu limit"} {
		found := false
		for _, c := range r.checks {
			if c.Name == name {
				found = true
				if c.OK || !strings.Contains(c.Detail, "NOT enforced") || !strings.Contains(c.Detail, "no cgroup") {
					t.Errorf("check %q = %+v, want it failed, saying why", name, c)
				}
			}
		}
		if !found {
			t.Errorf("Doctor has no %q check", name)
		}
	}
	out := buf.String()
	for _, want := range []string{"level=WARN", "NOT enforced", "memory_limit=", "pids_limit=", "cpu_limit="} {
		if !strings.Contains(out, want) {
			t.Errorf("New's warning lacks %q:\n%s", want, out)
		}
	}
}

func TestCgroupRootThatIsNotACgroupIsExplained(t *testing.T) {
	dir := t.TempDir()
	plan := planCgroups(hostCgroups{}, dir, os.Geteuid())
	if plan.v2 != "" || !strings.Contains(plan.v2Why, "not on a cgroup v2 file system") {
		t.Errorf("plan = %+v, want v2 refused as not a cgroup", plan)
	}
}

func TestLeafNameIsSafeAndUnique(t *testing.T) {
	re := regexp.MustCompile(`^[0-9]+-[A-Za-z0-9_.-]{1,48}-[0-9a-f]{8}$`)
	for _, session := range []string{"sesn_01ABC", "", "../../etc", "a/b c\x00d", strings.Repeat("x", 200)} {
		a, b := leafName(session), leafName(session)
		if !re.MatchString(a) {
			t.Errorf("leafName(%q) = %q", session, a)
		}
		if strings.ContainsAny(a, "/\x00 ") {
			t.Errorf("leafName(%q) = %q has a path separator, NUL or space", session, a)
		}
		if a == b {
			t.Errorf("leafName(%q) twice = %q: not unique", session, a)
		}
	}
}

func TestCPUQuota(t *testing.T) {
	for _, tc := range []struct {
		cpus float64
		want int64
	}{{1, 100000}, {0.5, 50000}, {2.25, 225000}, {0.001, 1000}} {
		if got := cpuQuota(tc.cpus); got != tc.want {
			t.Errorf("cpuQuota(%v) = %d, want %d", tc.cpus, got, tc.want)
		}
	}
}

func TestHandOverNeverLeavesTheWorkspace(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (to chown)")
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("host file"), 0o600); err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	mustWrite := func(rel string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(ws, rel)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ws, rel), []byte(rel), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("a.txt")
	mustWrite("dir/b.txt")
	if err := os.Symlink(outside, filepath.Join(ws, "link-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(ws, "dir-link-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(outside, filepath.Join(ws, "hardlink")); err != nil {
		t.Fatal(err)
	}
	skipped, err := handOver(ws, 4242, 4343)
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 1 {
		t.Errorf("skipped = %d, want 1 (the hard link)", skipped)
	}
	owner := func(path string) [2]uint32 {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return [2]uint32{st.Uid, st.Gid}
	}
	for _, rel := range []string{".", "a.txt", "dir", "dir/b.txt", "link-out", "dir-link-out"} {
		if got := owner(filepath.Join(ws, rel)); got != [2]uint32{4242, 4343} {
			t.Errorf("%s is owned by %v, want 4242:4343", rel, got)
		}
	}
	if got := owner(outside); got != [2]uint32{0, 0} {
		t.Errorf("the file outside the workspace is now owned by %v, want root", got)
	}
	if got := owner(filepath.Dir(outside)); got != [2]uint32{0, 0} {
		t.Errorf("the directory outside the workspace is now owned by %v, want root", got)
	}
}
