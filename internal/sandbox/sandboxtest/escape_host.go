package sandboxtest

// What the host itself allows the test process. Under
// EscapeOptions.ExpectEscapes a runtime without isolation can only show an
// escape the host permits (mount needs CAP_SYS_ADMIN, even unsandboxed);
// these checks tell which. They are harmless probes: capability bits read
// from /proc/self/status, files opened and closed without reading or
// writing more than a byte.

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Capability bits (linux/capability.h).
const (
	capSysModule = 16
	capSysPtrace = 19
	capSysAdmin  = 21
	capMknod     = 27
)

// zeroCaps is an empty capability set as /proc/PID/status prints it.
const zeroCaps = "0000000000000000"

// hostStatus returns the fields of the test process's /proc/self/status.
func hostStatus() map[string]string {
	fields := make(map[string]string)
	data, err := readSmallFile("/proc/self/status")
	if err != nil {
		return fields
	}
	for _, line := range strings.Split(data, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// hostHasCap reports whether the test process holds capability bit in
// its effective set.
func hostHasCap(bit uint) bool {
	caps, err := strconv.ParseUint(hostStatus()["CapEff"], 16, 64)
	return err == nil && caps&(1<<bit) != 0
}

// readSysctl returns a /proc/sys value, trimmed; "" when it is missing.
func readSysctl(path string) string {
	data, err := readSmallFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(data)
}

// readSmallFile reads at most 1 MiB of path: enough for any /proc file
// the suite looks at, and safe on files that never end.
func readSmallFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(data), err
}

// hostCanCreateUserNamespace reports whether the test process could
// create a user namespace, as far as the sysctls that forbid it tell.
func hostCanCreateUserNamespace() bool {
	if hostHasCap(capSysAdmin) {
		return true
	}
	if readSysctl("/proc/sys/user/max_user_namespaces") == "0" ||
		readSysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0" ||
		readSysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" {
		return false
	}
	_, err := os.Stat("/proc/self/ns/user")
	return err == nil
}

// hostCanRead reports whether the test process can read a byte of any of
// paths.
func hostCanRead(paths ...string) bool {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		n, _ := f.Read(make([]byte, 1))
		_ = f.Close()
		if n > 0 {
			return true
		}
	}
	return false
}

// hostBlockDevices lists the block devices in /dev.
func hostBlockDevices() []string {
	entries, err := os.ReadDir("/dev")
	if err != nil {
		return nil
	}
	var devs []string
	for _, e := range entries {
		// Loop devices come and go with other tests (a size-capped
		// workspace is one); the disks are what the attack is about.
		if strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		if e.Type()&os.ModeDevice != 0 && e.Type()&os.ModeCharDevice == 0 {
			devs = append(devs, filepath.Join("/dev", e.Name()))
		}
	}
	return devs
}

// hostCanOpenForWrite reports whether the test process can open any of
// paths for writing. Nothing is written: the file is opened for appending
// and closed.
func hostCanOpenForWrite(paths ...string) bool {
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			_ = f.Close()
			return true
		}
	}
	return false
}

// hostSysfsTargets are the files WriteSysfs probes, for the test process.
func hostSysfsTargets() []string {
	targets := []string{"/sys/kernel/uevent_helper", "/sys/fs/cgroup/release_agent"}
	if more, err := filepath.Glob("/sys/fs/cgroup/*/release_agent"); err == nil {
		targets = append(targets, more...)
	}
	data, err := readSmallFile("/proc/self/cgroup")
	if err != nil {
		return targets
	}
	for _, line := range strings.Split(strings.TrimSpace(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrl, path := ","+parts[1]+",", strings.TrimSuffix(parts[2], "/")
		switch {
		case ctrl == ",,":
			targets = append(targets, "/sys/fs/cgroup"+path+"/memory.max", "/sys/fs/cgroup"+path+"/pids.max")
		case strings.Contains(ctrl, ",memory,"):
			targets = append(targets, "/sys/fs/cgroup/memory"+path+"/memory.limit_in_bytes")
		case strings.Contains(ctrl, ",pids,"):
			targets = append(targets, "/sys/fs/cgroup/pids"+path+"/pids.max")
		}
	}
	return targets
}
