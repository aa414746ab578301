package bwrap

// Test-only views of a sandbox's insides.

// CgroupDirs are the sandbox's cgroup leaves.
func (s *Sandbox) CgroupDirs() []string { return s.b.cgroupDirs() }

// BwrapPID is the host pid of bwrap (outside the sandbox's namespaces).
func (s *Sandbox) BwrapPID() int { return s.b.cmd.Process.Pid }

// InitPID is the host pid of pid 1 of the sandbox's pid namespace.
func (s *Sandbox) InitPID() int { return s.b.nsinitPID }

// Enforces reports whether the runtime enforces the limit of a cgroup
// controller ("memory", "pids", "cpu").
func (r *Runtime) Enforces(controller string) bool { return r.cg.enforced(controller) }

// HostIDs are the host uid and gid sandboxes run as.
func (r *Runtime) HostIDs() (uid, gid int) { return r.hostIDs[0], r.hostIDs[1] }
