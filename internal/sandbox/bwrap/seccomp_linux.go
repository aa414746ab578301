package bwrap

import (
	"encoding/binary"
	"fmt"
	"syscall"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
)

// deniedSyscalls fail with EPERM inside a sandbox. None of them is needed by
// sandboxd, a shell, coreutils, git or an interpreter; each is either a
// privileged operation that a sandbox must never get near even if a kernel
// bug handed it a capability, or a large piece of kernel attack surface.
// Names missing from an architecture's table (iopl on arm64) are skipped.
var deniedSyscalls = []string{
	// File system namespace: mounts, both APIs, and root changes.
	"mount", "umount2", "pivot_root", "chroot",
	"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
	// Namespaces: no new ones and no joining others (clone is below).
	"unshare", "setns",
	// Other processes' memory.
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	// The kernel itself.
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
	"reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
	"iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "lookup_dcookie",
	// Large attack surface no tool needs.
	"bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
	"keyctl", "add_key", "request_key",
}

// enosysSyscalls fail with ENOSYS, which callers treat as "this kernel is
// too old" and fall back from: clone3 passes its flags in memory, where a
// seccomp filter cannot check them for namespace flags, so glibc is made to
// use clone; io_uring users fall back to ordinary system calls.
var enosysSyscalls = []string{"clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"}

// cloneNamespaceFlags are clone(2)'s namespace-creating flags (CLONE_NEWNS,
// NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET); clone with any of
// them fails with EPERM. The flags are clone's first argument on every
// architecture the filter is built for (amd64, arm64).
const cloneNamespaceFlags = syscall.CLONE_NEWNS | 0x02000000 | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC |
	syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET

// Raw BPF and seccomp constants for the architecture check the library
// does not make (see seccompFilter).
const (
	bpfLdWAbs          = 0x20       // BPF_LD | BPF_W | BPF_ABS
	bpfJeqK            = 0x15       // BPF_JMP | BPF_JEQ | BPF_K
	bpfRetK            = 0x06       // BPF_RET | BPF_K
	seccompDataArch    = 4          // offsetof(struct seccomp_data, arch)
	seccompRetKillProc = 0x80000000 // SECCOMP_RET_KILL_PROCESS
)

// seccompFilter is the compiled filter bwrap installs (--seccomp) on
// everything in the sandbox, as the raw struct sock_filter array bwrap
// reads; count is how many system calls it denies.
//
// The policy is a deny list with a default of allow: it removes the calls
// an attacker wants and a sandbox never needs, and leaves the rest of the
// kernel's interface as it is (see the package doc).
//
// go-seccomp-bpf sends a system call of a foreign architecture (the 32-bit
// int 0x80 ABI on amd64) to the default action, which for a deny list is
// allow: that would let `mount` through under its i386 number. The program
// therefore starts with a check of its own that kills a process making a
// foreign-architecture call. (x32 calls, which share amd64's architecture
// value, get ENOSYS from the library's own check.)
func seccompFilter() (prog []byte, count int, err error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, 0, fmt.Errorf("seccomp: %w", err)
	}
	var denied []string
	for _, name := range deniedSyscalls {
		if _, ok := info.SyscallNames[name]; ok {
			denied = append(denied, name)
		}
	}
	policy := seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionErrno, Names: denied},
			{Action: seccomp.ActionErrno | seccomp.Action(syscall.ENOSYS), Names: enosysSyscalls},
			{Action: seccomp.ActionErrno, NamesWithCondtions: []seccomp.NameWithConditions{{
				Name: "clone",
				Conditions: seccomp.ArgumentConditions{{
					Argument: 0, Operation: seccomp.BitsSet, Value: cloneNamespaceFlags,
				}},
			}}},
		},
	}
	insts, err := policy.Assemble()
	if err != nil {
		return nil, 0, fmt.Errorf("seccomp: assemble the filter: %w", err)
	}
	archCheck := []rawInstruction{
		{op: bpfLdWAbs, k: seccompDataArch},
		{op: bpfJeqK, jt: 1, k: uint32(info.ID)},
		{op: bpfRetK, k: seccompRetKillProc},
	}
	prog = make([]byte, 0, 8*(len(archCheck)+len(insts)))
	for _, in := range archCheck {
		prog = in.append(prog)
	}
	for _, in := range insts {
		raw, err := in.Assemble()
		if err != nil {
			return nil, 0, fmt.Errorf("seccomp: assemble %v: %w", in, err)
		}
		prog = rawInstruction{op: raw.Op, jt: raw.Jt, jf: raw.Jf, k: raw.K}.append(prog)
	}
	if n := len(prog) / 8; n > 4096 { // BPF_MAXINSNS
		return nil, 0, fmt.Errorf("seccomp: the filter has %d instructions, over the kernel's 4096", n)
	}
	return prog, len(denied) + len(enosysSyscalls) + 1, nil
}

// rawInstruction is one struct sock_filter.
type rawInstruction struct {
	op     uint16
	jt, jf uint8
	k      uint32
}

func (r rawInstruction) append(b []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, r.op)
	b = append(b, r.jt, r.jf)
	return binary.NativeEndian.AppendUint32(b, r.k)
}
