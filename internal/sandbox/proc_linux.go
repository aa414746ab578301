package sandbox

import (
	"os"
	"strconv"
	"strings"
)

// ProcStat returns the fields of /proc/<pid>/stat after the command name
// (state, ppid, …).
func ProcStat(pid int) ([]string, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(data[i+1:])), true
}

// ParentPID is pid's parent from /proc/<pid>/stat.
func ParentPID(pid int) (int, bool) {
	fields, ok := ProcStat(pid)
	if !ok || len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}

// ChildrenOf lists the processes whose parent is pid, by scanning /proc
// (a kernel may lack /proc/<pid>/task/<tid>/children).
func ChildrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := ParentPID(child); ok && ppid == pid {
			out = append(out, child)
		}
	}
	return out
}
