package bwrap

// Cgroups: each sandbox gets a fresh leaf cgroup that bounds its memory,
// processes and CPU, and (on cgroup v2) lets Close kill everything in it at
// once with cgroup.kill. New works out where leaves can go on this host:
//
//   - cgroup v2 (the unified hierarchy, /sys/fs/cgroup on current
//     distributions): leaves go under Options.CgroupRoot, else
//     <mount>/perimeter when the worker is root, else a sibling of the
//     worker's own cgroup ("perimeter"), which is writable when systemd
//     delegated the worker's subtree (Delegate=yes, or a user session).
//     memory, pids and cpu are enabled in that parent's
//     cgroup.subtree_control when its cgroup.controllers offers them.
//   - cgroup v1 (legacy and hybrid hosts, where a controller is mounted on
//     a hierarchy of its own and so cannot be used on the unified one): a
//     controller that v2 cannot provide is used from its v1 hierarchy, with
//     leaves under <the worker's own cgroup there>/perimeter, so whatever
//     bounds the worker still bounds its sandboxes.
//
// A limit that can be put nowhere is reported (New's warning and Doctor),
// never dropped silently.
//
// Leaves are named "<worker pid>-<session>-<random>"; New removes the empty
// leaves of workers that no longer run.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// The controllers behind sandbox.Limits.
const (
	ctlMemory = "memory"
	ctlPIDs   = "pids"
	ctlCPU    = "cpu"
)

var limitControllers = []string{ctlMemory, ctlPIDs, ctlCPU}

// cpuPeriod is the CFS period, in microseconds, that CPU quotas are given in.
const cpuPeriod = 100000

// hierarchy is one mounted cgroup hierarchy as this process sees it.
type hierarchy struct {
	mount       string   // mount point
	root        string   // the hierarchy path mounted there (mountinfo's root field)
	own         string   // this process's cgroup in the hierarchy (/proc/self/cgroup)
	controllers []string // v1: the controllers bound to it
}

// ownDir is the directory of this process's cgroup in h.
func (h hierarchy) ownDir() string {
	root := strings.TrimSuffix(h.root, "/")
	if h.own != root && !strings.HasPrefix(h.own, root+"/") {
		// Our cgroup is outside what is mounted (a container's view):
		// the mount's root is the closest we can reach.
		return h.mount
	}
	return filepath.Join(h.mount, h.own[len(root):])
}

// hostCgroups are the cgroup hierarchies mounted on this host.
type hostCgroups struct {
	v2 *hierarchy
	v1 []hierarchy
}

// readHostCgroups reads /proc/self/mountinfo and /proc/self/cgroup.
func readHostCgroups() (hostCgroups, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return hostCgroups{}, err
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return hostCgroups{}, err
	}
	return parseHostCgroups(bytes.NewReader(mi), bytes.NewReader(cg))
}

// parseHostCgroups combines mountinfo (where each hierarchy is mounted) and
// /proc/self/cgroup (where this process is in each).
func parseHostCgroups(mountinfo, procCgroup io.Reader) (hostCgroups, error) {
	var host hostCgroups
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		h := hierarchy{root: sandbox.UnescapeMountinfo(pf[3]), mount: sandbox.UnescapeMountinfo(pf[4])}
		switch qf[0] {
		case "cgroup2":
			if host.v2 == nil {
				host.v2 = &h
			}
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				if opt != "rw" && opt != "ro" && !strings.Contains(opt, "=") {
					h.controllers = append(h.controllers, opt)
				}
			}
			if !slices.ContainsFunc(host.v1, func(o hierarchy) bool { return slices.Equal(o.controllers, h.controllers) }) {
				host.v1 = append(host.v1, h)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return hostCgroups{}, fmt.Errorf("mountinfo: %w", err)
	}
	sc = bufio.NewScanner(procCgroup)
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			if host.v2 != nil {
				host.v2.own = parts[2]
			}
			continue
		}
		ctls := strings.Split(parts[1], ",")
		for i := range host.v1 {
			if slices.Equal(host.v1[i].controllers, ctls) || (len(ctls) > 0 && slices.Contains(host.v1[i].controllers, ctls[0])) {
				host.v1[i].own = parts[2]
			}
		}
	}
	if err := sc.Err(); err != nil {
		return hostCgroups{}, fmt.Errorf("/proc/self/cgroup: %w", err)
	}
	return host, nil
}

// v1For returns the v1 hierarchy controller is bound to.
func (h hostCgroups) v1For(controller string) (hierarchy, bool) {
	for _, x := range h.v1 {
		if slices.Contains(x.controllers, controller) {
			return x, true
		}
	}
	return hierarchy{}, false
}

// cgroupPlan is where each sandbox's cgroups go on this host, as New
// decided. Its zero value means no cgroups at all.
type cgroupPlan struct {
	// v2 is the directory on the unified hierarchy under which each
	// sandbox gets a leaf; "" when there is none usable (v2Why says why).
	v2    string
	v2Why string
	// v2Kill reports whether leaves have cgroup.kill (Linux 5.14).
	v2Kill bool
	// ctl maps each enforced controller to the parent of its leaves.
	ctl map[string]placement
	// why says, for each controller missing from ctl, why.
	why map[string]string
	// swapWhy is set when memory is limited but swap is not.
	swapWhy string
}

// placement is where one controller's leaves go.
type placement struct {
	dir string
	v1  bool
}

// planCgroups decides where sandbox cgroups go. It creates the parent
// directories and enables controllers; it never fails, it explains.
func planCgroups(host hostCgroups, root string, euid int) cgroupPlan {
	p := cgroupPlan{ctl: map[string]placement{}, why: map[string]string{}}
	var v2avail []string
	switch {
	case root != "":
		p.v2 = root
	case host.v2 == nil:
		p.v2Why = "no cgroup v2 hierarchy is mounted"
	case euid == 0:
		p.v2 = filepath.Join(host.v2.mount, "perimeter")
	case host.v2.ownDir() == host.v2.mount:
		p.v2Why = fmt.Sprintf("the worker is in the root cgroup of %s, which has no sibling to create; give a cgroup root the worker may write", host.v2.mount)
	default:
		p.v2 = filepath.Join(filepath.Dir(host.v2.ownDir()), "perimeter")
	}
	if p.v2 != "" {
		if err := mkdirCgroup(p.v2); err != nil {
			p.v2Why = fmt.Sprintf("cannot create %s: %v", p.v2, err)
			p.v2 = ""
		} else if _, err := os.Stat(filepath.Join(p.v2, "cgroup.controllers")); err != nil {
			p.v2Why = fmt.Sprintf("%s is not on a cgroup v2 file system", p.v2)
			p.v2 = ""
		}
	}
	if p.v2 != "" {
		v2avail = readWords(filepath.Join(p.v2, "cgroup.controllers"))
		enabled := readWords(filepath.Join(p.v2, "cgroup.subtree_control"))
		for _, c := range limitControllers {
			switch {
			case slices.Contains(enabled, c):
				p.ctl[c] = placement{dir: p.v2}
			case slices.Contains(v2avail, c):
				if err := writeFile(filepath.Join(p.v2, "cgroup.subtree_control"), "+"+c); err != nil {
					hint := ""
					if errors.Is(err, syscall.EBUSY) {
						hint = " (it holds processes of its own; give a dedicated, empty cgroup as the cgroup root)"
					}
					p.why[c] = fmt.Sprintf("enabling the %s controller in %s/cgroup.subtree_control failed: %v%s", c, p.v2, err, hint)
					continue
				}
				p.ctl[c] = placement{dir: p.v2}
			default:
				p.why[c] = fmt.Sprintf("the %s controller is not available in %s: the parent cgroup does not delegate it (as root: echo +%s > %s/cgroup.subtree_control)", c, p.v2, c, filepath.Dir(p.v2))
			}
		}
	}
	for _, c := range limitControllers {
		if _, ok := p.ctl[c]; ok {
			continue
		}
		h, ok := host.v1For(c)
		if !ok {
			if p.v2 == "" {
				p.why[c] = fmt.Sprintf("no cgroup hierarchy provides the %s controller (%s)", c, p.v2Why)
			}
			continue
		}
		dir := filepath.Join(h.ownDir(), "perimeter")
		if err := mkdirCgroup(dir); err != nil {
			prev := p.why[c]
			if prev == "" {
				prev = p.v2Why
			}
			p.why[c] = fmt.Sprintf("%s; the %s controller is on the cgroup v1 hierarchy at %s, but creating %s failed: %v", prev, c, h.mount, dir, err)
			continue
		}
		p.ctl[c] = placement{dir: dir, v1: true}
		delete(p.why, c)
	}
	return p
}

// verify creates a leaf, writes every limit into it and removes it again,
// dropping (with the reason) whatever cannot be set up. It also learns
// whether leaves have cgroup.kill and whether swap can be bounded.
func (p *cgroupPlan) verify() {
	for p.v2 != "" || len(p.ctl) > 0 {
		cg, err := p.create(leafName("probe"), sandbox.Limits{}.OrDefault())
		var ce *cgroupError
		switch {
		case err == nil:
			if cg.v2 != "" {
				_, err := os.Stat(filepath.Join(cg.v2, "cgroup.kill"))
				p.v2Kill = err == nil
			}
			p.swapWhy = cg.swapWhy
			_ = cg.remove(time.Second)
			return
		case errors.As(err, &ce) && ce.controller != "":
			p.why[ce.controller] = "cannot set up the sandbox's cgroup for it: " + err.Error()
			delete(p.ctl, ce.controller)
		default:
			// The v2 leaf itself could not be made: nothing placed on v2
			// can work.
			p.v2Why = err.Error()
			for c, pl := range p.ctl {
				if !pl.v1 {
					p.why[c] = err.Error()
					delete(p.ctl, c)
				}
			}
			p.v2 = ""
		}
	}
}

// enforced reports whether the limit of controller c is enforced.
func (p *cgroupPlan) enforced(c string) bool {
	_, ok := p.ctl[c]
	return ok
}

// cgroup is one sandbox's set of leaves.
type cgroup struct {
	v2      string   // the unified-hierarchy leaf, "" if none
	v1      []string // the v1 leaves, one per hierarchy used
	memory  string   // the leaf holding the memory controller, "" if none
	memV1   bool
	swapWhy string // set when swap could not be bounded
}

// cgroupError is a failure to set up one sandbox's cgroup: of the
// controller's leaf or limit, or (controller "") of the v2 leaf itself.
type cgroupError struct {
	controller string
	err        error
}

func (e *cgroupError) Error() string { return e.err.Error() }
func (e *cgroupError) Unwrap() error { return e.err }

// create makes the leaves called name and writes l into them.
func (p *cgroupPlan) create(name string, l sandbox.Limits) (*cgroup, error) {
	cg := &cgroup{}
	fail := func(controller string, err error) (*cgroup, error) {
		_ = cg.remove(time.Second)
		return nil, &cgroupError{controller: controller, err: err}
	}
	if p.v2 != "" {
		dir := filepath.Join(p.v2, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fail("", fmt.Errorf("create cgroup %s: %w", dir, err))
		}
		cg.v2 = dir
	}
	for _, c := range limitControllers {
		pl, ok := p.ctl[c]
		if !ok {
			continue
		}
		dir := filepath.Join(pl.dir, name)
		if pl.v1 && !slices.Contains(cg.v1, dir) {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return fail(c, fmt.Errorf("create cgroup %s: %w", dir, err))
			}
			cg.v1 = append(cg.v1, dir)
		}
		if err := writeLimit(c, dir, pl.v1, l, cg); err != nil {
			return fail(c, fmt.Errorf("set the %s limit in %s: %w", c, dir, err))
		}
		if c == ctlMemory {
			cg.memory, cg.memV1 = dir, pl.v1
		}
	}
	return cg, nil
}

// writeLimit writes controller c's part of l into the leaf dir.
func writeLimit(c, dir string, v1 bool, l sandbox.Limits, cg *cgroup) error {
	switch {
	case c == ctlMemory && !v1:
		if err := writeFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(dir, "memory.swap.max"), "0"); err != nil {
			cg.swapWhy = swapUnbounded("memory.swap.max", err)
		}
	case c == ctlMemory && v1:
		if err := writeFile(filepath.Join(dir, "memory.limit_in_bytes"), strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
			return err
		}
		// memory+swap = memory: no swap at all.
		if err := writeFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
			cg.swapWhy = swapUnbounded("memory.memsw.limit_in_bytes", err)
		}
	case c == ctlPIDs:
		return writeFile(filepath.Join(dir, "pids.max"), strconv.FormatInt(l.PIDs, 10))
	case c == ctlCPU && !v1:
		return writeFile(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", cpuQuota(l.CPUs), cpuPeriod))
	case c == ctlCPU && v1:
		if err := writeFile(filepath.Join(dir, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriod)); err != nil {
			return err
		}
		return writeFile(filepath.Join(dir, "cpu.cfs_quota_us"), strconv.FormatInt(cpuQuota(l.CPUs), 10))
	}
	return nil
}

// swapUnbounded explains a swap limit that could not be set; it matters
// only when the host has swap.
func swapUnbounded(file string, err error) string {
	if !hostHasSwap() {
		return ""
	}
	return fmt.Sprintf("swap is not limited (%s: %v; boot with swap accounting on, e.g. swapaccount=1)", file, err)
}

func hostHasSwap() bool {
	data, err := os.ReadFile("/proc/swaps")
	return err == nil && bytes.Count(data, []byte("\n")) > 1
}

// cpuQuota is cpus in microseconds per cpuPeriod; at least 1ms, which the
// kernel requires.
func cpuQuota(cpus float64) int64 {
	return max(int64(math.Round(cpus*cpuPeriod)), 1000)
}

// drop gives up on cgroups altogether, for why.
func (p *cgroupPlan) drop(why string) {
	for c := range p.ctl {
		p.why[c] = why
	}
	for _, c := range limitControllers {
		if p.why[c] == "" {
			p.why[c] = why
		}
	}
	p.ctl = map[string]placement{}
	p.v2, p.v2Why, p.v2Kill = "", why, false
}

// dirs are the leaves that a process must be written into.
func (c *cgroup) dirs() []string {
	var out []string
	if c.v2 != "" {
		out = append(out, c.v2)
	}
	return append(out, c.v1...)
}

// join moves pids into every leaf; bornInV2 skips the v2 leaf, which the
// process was cloned into.
func (c *cgroup) join(bornInV2 bool, pids ...int) error {
	for _, dir := range c.dirs() {
		if bornInV2 && dir == c.v2 {
			continue
		}
		for _, pid := range pids {
			if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
				return fmt.Errorf("move pid %d into %s: %w", pid, dir, err)
			}
		}
	}
	return nil
}

// oomKills is how many processes the kernel killed for the memory limit.
func (c *cgroup) oomKills() int64 {
	if c.memory == "" {
		return 0
	}
	file := "memory.events"
	if c.memV1 {
		file = "memory.oom_control"
	}
	data, err := os.ReadFile(filepath.Join(c.memory, file))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// kill kills everything in the v2 leaf at once, when the kernel has
// cgroup.kill. (Without it the pid namespace does the same job; signalling
// pids read from cgroup.procs one by one could hit a reused pid.)
func (c *cgroup) kill() error {
	if c.v2 == "" {
		return nil
	}
	err := writeFile(filepath.Join(c.v2, "cgroup.kill"), "1")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// empty reports whether no process is left in any leaf.
func (c *cgroup) empty() bool {
	for _, dir := range c.dirs() {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err == nil && len(bytes.TrimSpace(data)) > 0 {
			return false
		}
	}
	return true
}

// procs lists the pids in the v2 leaf.
func (c *cgroup) procs() []int {
	if c.v2 == "" {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(c.v2, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// remove removes the leaves, waiting up to wait for the last processes in
// them to be gone (rmdir fails with EBUSY until then).
func (c *cgroup) remove(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var errs []error
	dirs := c.dirs()
	slices.Reverse(dirs)
	for _, dir := range dirs {
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// removeStale removes the empty leaves of workers that no longer run.
func (p *cgroupPlan) removeStale() (removed int) {
	parents := map[string]bool{}
	if p.v2 != "" {
		parents[p.v2] = true
	}
	for _, pl := range p.ctl {
		parents[pl.dir] = true
	}
	for parent := range parents {
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			pidText, _, ok := strings.Cut(e.Name(), "-")
			pid, err := strconv.Atoi(pidText)
			if !e.IsDir() || !ok || err != nil || pid == os.Getpid() || pid <= 0 {
				continue
			}
			if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) && os.Remove(filepath.Join(parent, e.Name())) == nil {
				removed++
			}
		}
	}
	return removed
}

// leafName is a fresh leaf name for a sandbox of session: the worker's pid
// (for stale-leaf removal), the session for operators, and a random suffix.
func leafName(session string) string {
	var b strings.Builder
	for _, r := range session {
		if b.Len() >= 48 {
			break
		}
		if r == '_' || r == '.' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			b.WriteRune(r)
		}
	}
	name := b.String()
	if name == "" {
		name = "sandbox"
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	return fmt.Sprintf("%d-%s-%s", os.Getpid(), name, hex.EncodeToString(suffix))
}

// mkdirCgroup creates dir and its parents (cgroup directories; 0755).
func mkdirCgroup(dir string) error {
	return os.MkdirAll(dir, 0o755)
}

// writeFile writes one value to a cgroup control file.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readWords reads a space-separated control file; nil if it cannot.
func readWords(path string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return strings.Fields(string(data))
}
