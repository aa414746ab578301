package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procStat is what the benchmark reads from /proc/<pid>/stat.
type procStat struct {
	pid, ppid int
	rss       int64 // bytes
	// cpu is the process's user+system time; childCPU that of its children
	// it has waited for (and theirs).
	cpu, childCPU time.Duration
}

// userHZ is the unit of the times in /proc/<pid>/stat, fixed by the Linux
// ABI.
const userHZ = 100

var pageSize = int64(os.Getpagesize())

// readStat parses /proc/<pid>/stat. The command name may hold spaces and
// parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(pid, b)
}

func parseStat(pid int, b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	// After the name, field n of proc(5) is f[n-3]: state(3) ppid(4) …
	// utime(14) stime(15) cutime(16) cstime(17) … rss(24).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 22 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var n [6]int64
	var errs []error
	for j, field := range []int{4, 14, 15, 16, 17, 24} {
		var err error
		n[j], err = strconv.ParseInt(f[field-3], 10, 64)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	ticks := func(t int64) time.Duration { return time.Duration(t) * time.Second / userHZ }
	return procStat{
		pid: pid, ppid: int(n[0]), rss: n[5] * pageSize,
		cpu: ticks(n[1] + n[2]), childCPU: ticks(n[3] + n[4]),
	}, nil
}

// allProcs reads every process's stat; processes that exit meanwhile are
// skipped.
func allProcs() ([]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := make([]procStat, 0, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			out = append(out, st)
		}
	}
	return out, nil
}

// tree is the memory of a process's descendants.
type tree struct {
	children []int // direct children (the sandboxd processes)
	all      []int // every descendant (sandboxd and their shells)
	// RSS counts each shared page (the binary's text) once per process;
	// PSS splits it between the processes sharing it (set by addPSS).
	childrenRSS, allRSS int64
	childrenPSS, allPSS int64
}

// descendants sums the RSS of root's descendants among procs.
func descendants(root int, procs []procStat) tree {
	kids := map[int][]procStat{}
	for _, p := range procs {
		kids[p.ppid] = append(kids[p.ppid], p)
	}
	var t tree
	for _, c := range kids[root] {
		t.children = append(t.children, c.pid)
		t.childrenRSS += c.rss
	}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range kids[pid] {
			t.all = append(t.all, c.pid)
			t.allRSS += c.rss
			queue = append(queue, c.pid)
		}
	}
	return t
}

// addPSS reads the PSS of the tree's processes. It costs a page-table walk
// per process, so the sampler does it less often than RSS.
func (t *tree) addPSS() {
	t.childrenPSS, t.allPSS = 0, 0
	for _, pid := range t.children {
		v, _ := rollupField(pid, "Pss")
		t.childrenPSS += v
	}
	for _, pid := range t.all {
		v, _ := rollupField(pid, "Pss")
		t.allPSS += v
	}
}

// statusField reads a "Name: N kB" line of /proc/<pid>/status, in bytes.
func statusField(pid int, name string) (int64, error) {
	return kBField(fmt.Sprintf("/proc/%d/status", pid), name)
}

// rollupField reads a "Name: N kB" line of /proc/<pid>/smaps_rollup.
func rollupField(pid int, name string) (int64, error) {
	return kBField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), name)
}

// kBField reads a "Name: N kB" line of a /proc file, in bytes.
func kBField(path, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", path, name, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no %s", path, name)
}

// vmRSS is the process's resident set size in bytes.
func vmRSS(pid int) (int64, error) { return statusField(pid, "VmRSS") }
