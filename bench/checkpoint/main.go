// Command checkpoint measures what a workspace checkpoint costs once a
// session is under way: after a first checkpoint of a workspace of N small
// files (1-4 KiB of text each, 25 per directory, three levels deep), 10
// files change and the next checkpoint is timed. Targets: at most 50 ms at
// 100k files, and at least 10x faster than the baseline there.
//
// The baseline, measured in the same run on the same workspace and the
// same changes, is a git shadow repository, the usual way to snapshot a
// tree without touching it:
//
//	git --git-dir=<shadow> --work-tree=<ws> add -A
//	git --git-dir=<shadow> --work-tree=<ws> commit -q -m x
//
// with automatic gc off. Each run changes 10 random files (new content of
// 1-4 KiB), then times both contenders, in alternating order. Before the
// first checkpoint and commit the bench waits out the racy window (1.5 s),
// as a real workspace's files are mostly older than the last tool call;
// files changed by one run are still racy at the next, and both tools
// re-read them.
//
// It also reports the CPU time each contender used (this process's for
// the store, git's children's for git), which the machine's load does not
// inflate as it does wall time; a floor for any snapshot that stats every
// entry: one lstat(2) of every path, on one goroutine; the store's growth
// per checkpoint (all files in the store directory, apparent size) against
// the bytes written to the changed files; and the same for the shadow
// repository. The header gives the load average and the CPU pressure
// (/proc/pressure/cpu) at the end of the run.
//
// Note that git does not fsync loose objects or its index by default,
// while the store fsyncs every object and index line it writes; -nosync
// turns the store's fsyncs off to show what they cost.
//
// Usage:
//
//	go run ./bench/checkpoint [-sizes 1000,10000,100000] [-runs 5] [-out results.md] [-dir /tmp] [-nosync]
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
	"github.com/perimeterhq/perimeter/internal/checkpoint"
)

const (
	perDir   = 25 // files per leaf directory
	perGroup = 40 // leaf directories per top-level directory
	settle   = 1500 * time.Millisecond
)

type result struct {
	files               int
	first, gitFirst     time.Duration
	ckpt, git           []time.Duration
	ckptCPU, gitCPU     []time.Duration
	hashed              []int
	growth, gitGrowth   []int64
	changed             []int64
	floor               time.Duration
	storeBytes, wsBytes int64
	gitStoreBytes       int64
}

func main() {
	sizes := flag.String("sizes", "1000,10000,100000", "workspace sizes in files, comma-separated")
	runs := flag.Int("runs", 5, "timed checkpoints per size (the median is reported)")
	changes := flag.Int("changes", 10, "files changed before each timed checkpoint")
	out := flag.String("out", "", "also write the markdown results to this file")
	dir := flag.String("dir", os.TempDir(), "scratch directory (workspaces, store and shadow repositories)")
	noSync := flag.Bool("nosync", false, "run the store without fsync")
	gitBin := flag.String("git", "git", "git binary")
	flag.Parse()
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < *changes {
			fmt.Fprintf(os.Stderr, "checkpoint: bad size %q\n", f)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "checkpoint: -runs must be at least 1")
		os.Exit(2)
	}
	if _, err := exec.LookPath(*gitBin); err != nil {
		fmt.Fprintln(os.Stderr, "checkpoint: git is needed for the baseline:", err)
		os.Exit(1)
	}
	scratch, err := os.MkdirTemp(*dir, "checkpoint-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkpoint:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(scratch)

	var results []result
	for _, n := range ns {
		r, err := bench(scratch, n, *runs, *changes, *noSync, *gitBin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "checkpoint:", err)
			os.Exit(1)
		}
		results = append(results, r)
	}
	md := report(results, *runs, *changes, *noSync, *gitBin)
	fmt.Print(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "checkpoint:", err)
			os.Exit(1)
		}
	}
}

// content returns 1-4 KiB of text.
func content(rng *rand.Rand) []byte {
	words := []string{"func", "return", "err", "nil", "if", "for", "range", "ctx", "string", "int",
		"struct", "package", "import", "type", "var", "const", "go", "defer", "select", "case"}
	n := 1024 + rng.IntN(3*1024)
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(8) == 0 {
			b.WriteString("\n\t")
		} else {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(rng.IntN(1000)))
		b.WriteByte(' ')
	}
	return []byte(b.String()[:n])
}

func filePath(i int) string {
	leaf := i / perDir
	return filepath.Join("src", fmt.Sprintf("m%03d", leaf/perGroup), fmt.Sprintf("p%02d", leaf%perGroup),
		fmt.Sprintf("f%02d.txt", i%perDir))
}

func bench(scratch string, n, runs, changes int, noSync bool, gitBin string) (result, error) {
	r := result{files: n}
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	base := filepath.Join(scratch, strconv.Itoa(n))
	ws := filepath.Join(base, "ws")
	fmt.Fprintf(os.Stderr, "%d files: building the workspace\n", n)
	var paths []string
	for i := range n {
		p := filepath.Join(ws, filePath(i))
		if i%perDir == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return r, err
			}
			paths = append(paths, filepath.Dir(p))
		}
		c := content(rng)
		r.wsBytes += int64(len(c))
		if err := os.WriteFile(p, c, 0o644); err != nil {
			return r, err
		}
		paths = append(paths, p)
	}
	time.Sleep(settle)

	// The floor: one lstat per entry, one goroutine.
	r.floor = time.Duration(1<<63 - 1)
	for range 3 {
		start := time.Now()
		var st syscall.Stat_t
		for _, p := range paths {
			if err := syscall.Lstat(p, &st); err != nil {
				return r, err
			}
		}
		r.floor = min(r.floor, time.Since(start))
	}

	storeDir := filepath.Join(base, "store")
	store, err := checkpoint.Open(storeDir, checkpoint.Options{NoSync: noSync})
	if err != nil {
		return r, err
	}
	defer store.Close()
	ctx := context.Background()
	key := func(i int) checkpoint.Key {
		return checkpoint.Key{Session: "bench", ToolUseID: fmt.Sprint("toolu_", i)}
	}
	shadow := filepath.Join(base, "shadow.git")
	git := func(args ...string) (time.Duration, error) {
		full := append([]string{"-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0",
			"--git-dir=" + shadow, "--work-tree=" + ws}, args...)
		cmd := exec.Command(gitBin, full...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
	}
	// gitSnapshot returns the wall time and the CPU time of git.
	gitSnapshot := func() (time.Duration, time.Duration, error) {
		start := time.Now()
		cpu1, err := git("add", "-A")
		if err != nil {
			return 0, 0, err
		}
		cpu2, err := git("commit", "-q", "--allow-empty", "-m", "x")
		if err != nil {
			return 0, 0, err
		}
		return time.Since(start), cpu1 + cpu2, nil
	}
	if _, err := git("init", "-q"); err != nil {
		return r, err
	}

	fmt.Fprintf(os.Stderr, "%d files: first checkpoint and commit\n", n)
	start := time.Now()
	c, err := store.Checkpoint(ctx, ws, key(0))
	if err != nil {
		return r, err
	}
	r.first = time.Since(start)
	if c.Files != n {
		return r, fmt.Errorf("first checkpoint recorded %d files, want %d", c.Files, n)
	}
	if r.gitFirst, _, err = gitSnapshot(); err != nil {
		return r, err
	}

	for run := 1; run <= runs; run++ {
		var changed int64
		for _, i := range rng.Perm(n)[:changes] {
			c := content(rng)
			changed += int64(len(c))
			if err := os.WriteFile(filepath.Join(ws, filePath(i)), c, 0o644); err != nil {
				return r, err
			}
		}
		r.changed = append(r.changed, changed)
		timeStore := func() error {
			before, err := dirSize(storeDir)
			if err != nil {
				return err
			}
			cpu0 := stats.CPU(syscall.RUSAGE_SELF)
			start := time.Now()
			c, err := store.Checkpoint(ctx, ws, key(run))
			if err != nil {
				return err
			}
			r.ckpt = append(r.ckpt, time.Since(start))
			r.ckptCPU = append(r.ckptCPU, stats.CPU(syscall.RUSAGE_SELF)-cpu0)
			r.hashed = append(r.hashed, c.Hashed)
			after, err := dirSize(storeDir)
			r.growth = append(r.growth, after-before)
			return err
		}
		timeGit := func() error {
			before, err := dirSize(shadow)
			if err != nil {
				return err
			}
			d, cpu, err := gitSnapshot()
			if err != nil {
				return err
			}
			r.git = append(r.git, d)
			r.gitCPU = append(r.gitCPU, cpu)
			after, err := dirSize(shadow)
			r.gitGrowth = append(r.gitGrowth, after-before)
			return err
		}
		order := []func() error{timeStore, timeGit}
		if run%2 == 0 {
			slices.Reverse(order)
		}
		for _, f := range order {
			if err := f(); err != nil {
				return r, err
			}
		}
		fmt.Fprintf(os.Stderr, "%d files: run %d: perimeter %v (%d hashed), git %v\n",
			n, run, r.ckpt[len(r.ckpt)-1].Round(time.Microsecond), r.hashed[len(r.hashed)-1], r.git[len(r.git)-1].Round(time.Millisecond))
	}
	if r.storeBytes, err = dirSize(storeDir); err != nil {
		return r, err
	}
	if r.gitStoreBytes, err = dirSize(shadow); err != nil {
		return r, err
	}
	return r, os.RemoveAll(base)
}

// cpuPressure is the share of the last minute in which some runnable task
// waited for a CPU (/proc/pressure/cpu), a measure of the machine's load.
func cpuPressure() string {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return "unknown"
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "avg60="); ok {
			return v + "%"
		}
	}
	return "unknown"
}

// dirSize is the apparent size of every file under dir.
func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }

func report(rs []result, runs, changes int, noSync bool, gitBin string) string {
	var b strings.Builder
	gitVersion, _ := exec.Command(gitBin, "--version").Output()
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		release = []byte("(release unknown)")
	}
	load, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		load = []byte("? ? ?")
	}
	fmt.Fprintf(&b, "## Workspace checkpoint after changing %d files\n\n", changes)
	fmt.Fprintf(&b, "%s %s, GOMAXPROCS %d, %s, %s; at the end: load average %s, CPU pressure (avg60) %s; store fsync: %v; median of %d runs.\n\n",
		runtime.GOOS, strings.TrimSpace(string(release)), runtime.GOMAXPROCS(0), runtime.Version(),
		strings.TrimSpace(string(gitVersion)), strings.Join(strings.Fields(string(load))[:3], " "), cpuPressure(), !noSync, runs)
	b.WriteString("| files | perimeter ms | git ms | ratio (git/perimeter) | perimeter CPU ms | git CPU ms | lstat-all floor ms | files hashed | store growth B/checkpoint | bytes changed | growth/changed | git growth B/commit |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		p, g := stats.Median(r.ckpt), stats.Median(r.git)
		gr, ch := stats.Median(r.growth), stats.Median(r.changed)
		fmt.Fprintf(&b, "| %d | %s | %s | %.1fx | %s | %s | %s | %d | %d | %d | %.2f | %d |\n",
			r.files, ms(p), ms(g), float64(g)/float64(p), ms(stats.Median(r.ckptCPU)), ms(stats.Median(r.gitCPU)), ms(r.floor),
			stats.Median(r.hashed), gr, ch, float64(gr)/float64(ch), stats.Median(r.gitGrowth))
	}
	b.WriteString("\nFirst checkpoint (every file read and stored) and totals:\n\n")
	b.WriteString("| files | workspace bytes | perimeter first ms | git first ms | store bytes at end | git bytes at end |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %d | %s | %s | %d | %d |\n", r.files, r.wsBytes, ms(r.first), ms(r.gitFirst), r.storeBytes, r.gitStoreBytes)
	}
	return b.String()
}
