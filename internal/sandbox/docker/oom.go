package docker

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// oomCounter reads how many processes the kernel has killed in a
// container's memory cgroup (cgroup v1 memory.oom_control or v2
// memory.events, both "oom_kill N"). Under runc the kernel kills the
// biggest process, usually the tool's, and sandboxd lives on; the counter
// lets Exec tell the model why its command died. It needs the worker to see
// the host's cgroup file system; without it, results are not annotated.
type oomCounter struct {
	file string
}

// newOOMCounter finds the memory cgroup of the started container, or
// returns nil.
func (s *Sandbox) newOOMCounter(ctx context.Context) *oomCounter {
	ins, err := s.rt.cli.ContainerInspect(ctx, s.id)
	if err != nil || ins.State == nil || ins.State.Pid <= 0 {
		return nil
	}
	file, err := memoryEventsFile(ins.State.Pid)
	if err != nil {
		s.log.Debug("out-of-memory kills in the sandbox will not be reported in tool results", slog.Any("reason", err))
		return nil
	}
	c := &oomCounter{file: file}
	if _, ok := c.count(); !ok {
		return nil
	}
	return c
}

// memoryEventsFile is the file of pid's memory cgroup that counts OOM kills.
func memoryEventsFile(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var v2 string
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case hasController(parts[1], "memory"):
			p := filepath.Join("/sys/fs/cgroup/memory", filepath.Clean("/"+parts[2]), "memory.oom_control")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	if v2 != "" {
		p := filepath.Join("/sys/fs/cgroup", filepath.Clean("/"+v2), "memory.events")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no readable memory cgroup for pid %d", pid)
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// count returns the number of OOM kills so far; ok is false when it cannot
// be read (or c is nil).
func (c *oomCounter) count() (n uint64, ok bool) {
	if c == nil {
		return 0, false
	}
	b, err := os.ReadFile(c.file)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, found := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); found {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
