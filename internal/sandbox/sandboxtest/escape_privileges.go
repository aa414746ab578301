package sandboxtest

import (
	"os"
	"testing"
)

// The privilege attacks try the kernel interfaces that turn a process in a
// sandbox into root on the host: capabilities, setuid binaries, mounts,
// namespaces, ptrace, kernel modules, device nodes, and the writable knobs
// of /proc and /sys. Each is harmless when it succeeds (a tmpfs mounted and
// unmounted at once, a file opened for writing and closed unwritten, a
// module image the kernel rejects), because on the process runtime it does.

// gainPrivilegesSetuid: a process with capabilities, or one that can exec
// a setuid-root binary and keep its privileges, is root in all but name;
// every other layer (read-only mounts, seccomp filters that exempt
// CAP_SYS_ADMIN) falls with it. The sandbox must hold no capability and
// run with no_new_privs, which makes the kernel ignore setuid bits.
func gainPrivilegesSetuid(t *testing.T, s *escapeSuite, a *attempt) {
	st := hostStatus()
	a.notDemonstrable(st["CapEff"] == zeroCaps && st["NoNewPrivs"] == "1",
		"the test process itself holds no capability and runs with no_new_privs")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "setuid", setuidScript, "")
}

const setuidScript = `st=$(cat /proc/self/status 2>/dev/null)
field() { printf '%s\n' "$st" | sed -n "s/^$1:[[:space:]]*//p"; }
caps=$(field CapEff)
case $caps in
  "") unavailable capabilities "no CapEff in /proc/self/status" ;;
  *[!0]*) escaped capabilities "CapEff=$caps: the sandbox holds capabilities" ;;
  *) blocked capabilities "CapEff=$caps" ;;
esac
case $(field NoNewPrivs) in
  1) blocked no_new_privs "NoNewPrivs=1: exec cannot raise privileges" ;;
  0) escaped no_new_privs "NoNewPrivs=0: a setuid binary would run with its owner's privileges" ;;
  *) unavailable no_new_privs "no NoNewPrivs in /proc/self/status" ;;
esac

# A setuid-root binary that waits for a password shows its effective uid in
# /proc/PID/status while it waits; watch it, then kill it.
if [ "$(id -u)" = 0 ]; then
  unavailable "setuid-root binary" "the sandbox already runs as uid 0, so a setuid-root binary has nothing to raise; the capability checks decide"
  done_
  exit 0
fi
cands=$(find -H /bin /sbin /usr/bin /usr/sbin /usr/local/bin /usr/local/sbin -maxdepth 1 -type f -perm -4000 -user root 2>/dev/null | sort -u)
# The ones known to wait for a password first, then the rest.
declare -A seen
ordered=()
for w in su passwd chfn chsh gpasswd newgrp ""; do
  while read -r c; do
    if [ -n "$c" ] && [ -z "${seen[$c]}" ] && { [ -z "$w" ] || [ "${c##*/}" = "$w" ]; }; then
      seen[$c]=1
      ordered+=("$c")
    fi
  done <<<"$cands"
done
tried="" verdict=""
for bin in "${ordered[@]}"; do
  comm=$(basename -- "$bin" | cut -c1-15)
  tried="$tried ${bin##*/}"
  sleep 5 | "$bin" >/dev/null 2>&1 &
  pid=$! seen=0 euid=""
  for _ in $(seq 30); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]; then
      seen=$((seen + 1))
      e=$(sed -n 's/^Uid:[[:space:]]*[0-9]*[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
      [ -n "$e" ] && euid=$e
      [ "$euid" = 0 ] && break
      [ "$seen" -ge 5 ] && break
    fi
    sleep 0.1
  done
  kill -KILL $pid $(jobs -p) 2>/dev/null
  wait 2>/dev/null
  if [ "$euid" = 0 ]; then
    verdict=escaped
    escaped "setuid-root binary" "$bin ran with effective uid 0"
    break
  elif [ -n "$euid" ]; then
    verdict=blocked
    blocked "setuid-root binary" "$bin ran with effective uid $euid: its setuid bit was ignored"
    break
  fi
done
if [ -z "$cands" ]; then
  unavailable "setuid-root binary" "no setuid-root binary in /bin, /sbin, /usr/bin, /usr/sbin or /usr/local"
elif [ -z "$verdict" ]; then
  unavailable "setuid-root binary" "no setuid-root binary stayed running long enough to be observed (tried:$tried)"
fi
done_
`

// mountFilesystem: mount is how a container becomes the host: mount the
// host's disk, a fresh procfs, or remount a read-only path writable. It
// needs CAP_SYS_ADMIN, which the sandbox must not have in any namespace
// that owns its mounts.
func mountFilesystem(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostHasCap(capSysAdmin), "the test process lacks CAP_SYS_ADMIN")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "mount", mountScript, mountPy)
}

const mountScript = `d=$(mktemp -d "/tmp/perimeter-escape-mnt.XXXXXX" 2>/dev/null || mktemp -d "./.perimeter-escape-mnt.XXXXXX")
if have mount; then
  if err=$(mount -t tmpfs -o size=1m perimeter-escape "$d" 2>&1); then
    umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null
    escaped "mount command" "mounted a tmpfs on $d"
  else
    blocked "mount command" "$err"
  fi
else
  unavailable "mount command" "no mount binary"
fi
if have python3; then python3 "$PY" "$d"; else unavailable "mount(2)" "no python3"; fi
rmdir -- "$d" 2>/dev/null
done_
`

const mountPy = `import ctypes, errno, sys

libc = ctypes.CDLL(None, use_errno=True)
target = sys.argv[1].encode()
if libc.mount(b"perimeter-escape", target, b"tmpfs", ctypes.c_ulong(0), b"size=1m") == 0:
    libc.umount2(target, 2)  # MNT_DETACH
    print("@escape escaped mount(2): mounted a tmpfs")
else:
    e = ctypes.get_errno()
    print(f"@escape blocked mount(2): {errno.errorcode.get(e, e)}")
`

// ptraceProcesses: ptrace reads and rewrites another process's memory.
// Attached to sandboxd or PID 1 it takes over whatever they can do; on
// kernels before 4.8 it also stepped around seccomp. The sibling is
// attached (a stop it survives); sandboxd and PID 1 are only seized, which
// needs the same permission but does not stop them — on a runtime without
// isolation PID 1 is the host's init.
func ptraceProcesses(t *testing.T, s *escapeSuite, a *attempt) {
	scope := readSysctl("/proc/sys/kernel/yama/ptrace_scope")
	a.notDemonstrable(!hostHasCap(capSysPtrace) && scope != "" && scope != "0",
		"the test process lacks CAP_SYS_PTRACE and Yama's ptrace_scope is "+scope)
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "ptrace", ptraceScript, ptracePy, "$PPID")
}

const ptraceScript = `if ! have python3; then
  unavailable ptrace "no python3 (the attack calls ptrace(2) through ctypes)"
  done_
  exit 0
fi
sleep 60 >/dev/null 2>&1 &
sibling=$!
python3 "$PY" "$sibling" "$1"
kill -KILL "$sibling" 2>/dev/null
wait "$sibling" 2>/dev/null
done_
`

const ptracePy = `import ctypes, errno, os, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206


def attach(vector, pid, request):
    if libc.ptrace(request, pid, None, None) == 0:
        print(f"@escape escaped {vector}: attached to pid {pid}")
        if request == PTRACE_ATTACH:
            try:
                os.waitpid(pid, 0x40000000)  # __WALL: wait for the attach stop
            except OSError:
                pass
        libc.ptrace(PTRACE_DETACH, pid, None, None)  # exiting detaches too
    else:
        e = ctypes.get_errno()
        print(f"@escape blocked {vector}: pid {pid}: {errno.errorcode.get(e, e)}")


attach("attach a sibling process", int(sys.argv[1]), PTRACE_ATTACH)
attach("seize sandboxd", int(sys.argv[2]), PTRACE_SEIZE)
attach("seize PID 1", 1, PTRACE_SEIZE)
`

// unshareNamespaces: a new user namespace hands its creator every
// capability inside it, and with them the kernel code behind mount,
// netfilter, BPF and more — where most container escapes of recent years
// were found. The sandbox must not create one.
func unshareNamespaces(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostCanCreateUserNamespace(), "the host does not let the test process create user namespaces")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "unshare", unshareScript, unsharePy)
}

const unshareScript = `if have unshare; then
  for flags in -U -r; do
    if err=$(unshare "$flags" true 2>&1); then
      escaped "unshare $flags" "created a user namespace"
    else
      blocked "unshare $flags" "$err"
    fi
  done
else
  unavailable "unshare command" "no unshare binary"
fi
if have python3; then python3 "$PY"; else unavailable "unshare(2)" "no python3"; fi
done_
`

const unsharePy = `import ctypes, errno, os

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
pid = os.fork()
if pid == 0:
    ok = libc.unshare(CLONE_NEWUSER) == 0
    os._exit(0 if ok else (ctypes.get_errno() or 255))
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code == 0:
    print("@escape escaped unshare(2): unshare(CLONE_NEWUSER) succeeded")
else:
    print(f"@escape blocked unshare(2): unshare(CLONE_NEWUSER): {errno.errorcode.get(code, code)}")
`

// loadKernelModule: a loaded module is code in the host's kernel. The
// image offered is not a module, so a kernel that lets the call through
// rejects it (ENOEXEC) — but only after the privilege check, which is what
// the attack observes: EPERM or ENOSYS (a seccomp filter, gVisor) is
// blocked, any other answer means the loader was reached.
func loadKernelModule(t *testing.T, s *escapeSuite, a *attempt) {
	_, modErr := os.Stat("/proc/modules")
	a.notDemonstrable(!hostHasCap(capSysModule) || modErr != nil || readSysctl("/proc/sys/kernel/modules_disabled") == "1",
		"the test process lacks CAP_SYS_MODULE, or the host's kernel loads no modules")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "kernel-module", kernelModuleScript, kernelModulePy)
}

const kernelModuleScript = `if have python3; then
  python3 "$PY"
else
  unavailable "init_module" "no python3 (the attack calls init_module(2) through ctypes)"
fi
done_
`

const kernelModulePy = `import ctypes, errno, os, platform, tempfile

numbers = {"x86_64": (175, 313), "aarch64": (105, 273)}.get(platform.machine())
if numbers is None:
    print(f"@escape unavailable init_module: no syscall numbers for {platform.machine()}")
    raise SystemExit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
image = b"\x7fELF" + b"\0" * 60  # an ELF header of nothing: never a module


def judge(vector, result):
    if result == 0:
        print(f"@escape escaped {vector}: the kernel loaded the image")
        return
    e = ctypes.get_errno()
    name = errno.errorcode.get(e, str(e))
    if e in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        print(f"@escape blocked {vector}: {name}")
    else:
        print(f"@escape escaped {vector}: the module loader examined the image and answered {name}, so the privilege check passed")


buf = ctypes.create_string_buffer(image, len(image))
judge("init_module", libc.syscall(numbers[0], buf, ctypes.c_ulong(len(image)), ctypes.c_char_p(b"")))
with tempfile.TemporaryFile() as f:
    f.write(image)
    f.flush()
    judge("finit_module", libc.syscall(numbers[1], f.fileno(), ctypes.c_char_p(b""), 0))
`

// makeDeviceNode: a device node made inside the sandbox for the host's
// disk (numbers read from /sys/dev/block) reads the disk underneath every
// file permission. Making one needs CAP_MKNOD; opening it, a device cgroup
// that allows it and a mount without nodev.
func makeDeviceNode(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostHasCap(capMknod) || !hostCanRead(hostBlockDevices()...),
		"the test process lacks CAP_MKNOD or cannot read any block device")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "mknod", mknodScript, "", randomHex(4))
}

const mknodScript = `if ! have mknod; then
  unavailable mknod "no mknod binary"
  done_
  exit 0
fi
devs=(c:1:1)
for e in /sys/dev/block/*; do
  [ "$(cat "$e/size" 2>/dev/null || echo 0)" -gt 0 ] && devs+=("b:${e##*/}")
  [ ${#devs[@]} -ge 7 ] && break
done
for dir in /tmp "$PWD"; do
  where=$([ "$dir" = /tmp ] && echo /tmp || echo "the workspace")
  for d in "${devs[@]}"; do
    IFS=: read -r type major minor <<<"$d"
    v="mknod $type $major:$minor in $where"
    node="$dir/.perimeter-escape-node-$1-$major-$minor"
    if err=$(mknod "$node" "$type" "$major" "$minor" 2>&1); then
      got=$(head -c 512 -- "$node" 2>/dev/null | wc -c)
      rerr=$(head -c 1 -- "$node" 2>&1 >/dev/null)
      rm -f -- "$node"
      if [ "$got" -gt 0 ]; then escaped "$v" "made the node and read $got bytes through it"; else blocked "$v" "made the node but cannot read it: ${rerr:-no data}"; fi
    else
      blocked "$v" "$err"
    fi
  done
done
done_
`

// readKernelMemory: /proc/kcore and /dev/mem are the kernel's memory, keys
// and all; a raw block device is every file on the disk, permissions
// ignored. Reading a few bytes is enough to tell.
func readKernelMemory(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostCanRead(append([]string{"/proc/kcore", "/dev/mem", "/dev/kmem"}, hostBlockDevices()...)...),
		"the test process can read neither kernel memory nor a block device")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "kernel-memory", kernelMemoryScript, "")
}

const kernelMemoryScript = `n=0 readable=0 why=""
for p in /proc/kcore /dev/mem /dev/kmem $(find /dev -maxdepth 2 -type b ! -name 'loop*' 2>/dev/null); do
  [ -e "$p" ] || continue
  n=$((n + 1))
  got=$(head -c 512 -- "$p" 2>/dev/null | wc -c)
  if [ "$got" -gt 0 ]; then
    readable=$((readable + 1))
    [ "$readable" -le 5 ] && escaped "read $p" "read $got bytes"
  elif [ -z "$why" ]; then
    why=$(head -c 1 -- "$p" 2>&1 >/dev/null)
  fi
done
if [ "$n" = 0 ]; then
  blocked devices "no /proc/kcore, /dev/mem, /dev/kmem or block device is visible"
elif [ "$readable" = 0 ]; then
  blocked devices "none of the $n visible is readable (${why:-they hold no data})"
fi
done_
`

// writeProcSys: /proc/sys/kernel/core_pattern runs a program as root on
// the host at the next crash, modprobe at the next unknown binary format,
// and /proc/sysrq-trigger reboots the machine. Opening them for writing is
// the permission check; nothing is written.
func writeProcSys(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostCanOpenForWrite(procSysTargets...), "the test process cannot open any of them for writing")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "proc-sys", writeProbe+procSysScript, "")
}

var procSysTargets = []string{
	"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
	"/proc/sysrq-trigger", "/proc/sys/vm/panic_on_oom",
}

const procSysScript = `probe core_pattern /proc/sys/kernel/core_pattern
probe modprobe /proc/sys/kernel/modprobe
probe sysrq-trigger /proc/sysrq-trigger
probe panic_on_oom /proc/sys/vm/panic_on_oom
done_
`

// writeSysfs: /sys/kernel/uevent_helper and a cgroup v1 release_agent run a
// program as root on the host (the classic container escapes), and a
// writable memory.max or pids.max of the sandbox's own cgroup lets it lift
// the limits the resource attacks rely on.
func writeSysfs(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostCanOpenForWrite(hostSysfsTargets()...), "the test process cannot open any of them for writing")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "sysfs", writeProbe+sysfsScript, "")
}

const sysfsScript = `probe uevent_helper /sys/kernel/uevent_helper
for f in /sys/fs/cgroup/release_agent /sys/fs/cgroup/*/release_agent; do
  [ -e "$f" ] && probe "release_agent ${f#/sys/fs/cgroup/}" "$f"
done
while IFS=: read -r _ ctrl path; do
  path=${path%/}
  case ",$ctrl," in
    ,,)
      probe "own cgroup's memory.max" "/sys/fs/cgroup$path/memory.max"
      probe "own cgroup's pids.max" "/sys/fs/cgroup$path/pids.max"
      ;;
    *,memory,*) probe "own cgroup's memory.limit_in_bytes" "/sys/fs/cgroup/memory$path/memory.limit_in_bytes" ;;
    *,pids,*) probe "own cgroup's pids.max (v1)" "/sys/fs/cgroup/pids$path/pids.max" ;;
  esac
done </proc/self/cgroup
done_
`

// writeProbe defines probe VECTOR PATH: open PATH for writing (appending,
// so nothing is truncated) and close it without writing.
const writeProbe = `probe() {
  if [ ! -e "$2" ]; then
    blocked "$1" "$2 is not there"
  elif err=$( (: >>"$2") 2>&1 ); then
    escaped "$1" "opened $2 for writing"
  else
    blocked "$1" "$err"
  fi
}
`
