package docker

import (
	"encoding/json"
	"slices"

	"github.com/moby/profiles/seccomp"
)

// noTrace are the system calls that let one process read or steer another.
// Everything in a sandbox belongs to one session, but ptrace is also the
// first step of many escapes and sandbox-to-sandboxd tampering, and nothing
// a tool needs uses it.
var noTrace = []string{"ptrace", "process_vm_readv", "process_vm_writev"}

// defaultSeccomp is Docker's default seccomp profile without the tracing
// system calls: the engine's allow-list, one notch tighter.
func defaultSeccomp() (string, error) {
	p := seccomp.DefaultProfile()
	kept := p.Syscalls[:0]
	for _, rule := range p.Syscalls {
		rule.Names = slices.DeleteFunc(rule.Names, func(n string) bool { return slices.Contains(noTrace, n) })
		if len(rule.Names) > 0 {
			kept = append(kept, rule)
		}
	}
	p.Syscalls = kept
	b, err := json.Marshal(p)
	return string(b), err
}
