package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
)

// Targets.
const (
	targetRatio      = 1.5     // Perimeter per-call time / SDK per-call time
	targetPerSession = 5 << 20 // worker bytes per concurrent session
)

// report is everything one run measured.
type report struct {
	date    time.Time
	machine machine
	cfg     config
	rt      roundTripResults
	// contenders ran the round trips; the first is the SDK, the second
	// Perimeter, the rest diagnostics.
	contenders []contender
	conc       concurrentResult
	// concTmpfs is the diagnostic rerun of conc with the state on tmpfs.
	concTmpfs *concurrentResult
}

func (r report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Results, %s\n\n", r.date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s.\n\n", r.machine)
	r.roundTripTable(&b)
	r.concurrentTable(&b)
	return b.String()
}

// stat is one per-round quantity of a round trip.
type stat func(roundResult) time.Duration

var (
	statPerCall stat = func(x roundResult) time.Duration { return x.perCall }
	statExec    stat = func(x roundResult) time.Duration { return x.execPerCall }
	statRest    stat = func(x roundResult) time.Duration { return x.perCall - x.execPerCall }
	statFirst   stat = func(x roundResult) time.Duration { return x.firstResult }
	statCPU     stat = func(x roundResult) time.Duration { return x.cpuPerCall }
)

// each is f of every round of the named contender.
func (r report) each(name string, f stat) []time.Duration {
	var out []time.Duration
	for _, x := range r.rt[name] {
		out = append(out, f(x))
	}
	return out
}

func (r report) median(name string, f stat) time.Duration { return stats.Median(r.each(name, f)) }

// row writes one row comparing the medians of f for Perimeter and the SDK.
func (r report) row(b *strings.Builder, what string, f stat) {
	sdk, per := r.median(nameSDK, f), r.median(namePerimeter, f)
	fmt.Fprintf(b, "| %s | %s | %s | %.2f× | — | |\n", what, fmtDur(sdk), fmtDur(per), ratioOf(per, sdk))
}

func (r report) roundTripTable(b *strings.Builder) {
	sdk, per := r.median(nameSDK, statPerCall), r.median(namePerimeter, statPerCall)
	ratio := ratioOf(per, sdk)
	fmt.Fprintf(b, "### Round trip of a trivial tool call\n\n")
	fmt.Fprintf(b, "One session of %d `bash {command: \"true\"}` calls, then terminate, per contender per round; %d rounds, "+
		"contenders alternating (ABBA), after a %d-call warm-up each. Per call = (last `user.tool_result` − first "+
		"`user.tool_result`) / %d, from the event log's `processed_at`: whole round trips, start-up excluded. "+
		"Medians over the rounds.\n\n", r.cfg.calls, r.cfg.rounds, warmupCalls, r.cfg.calls-1)
	b.WriteString("| | SDK `EnvironmentWorker` (baseline) | Perimeter `worker` (process runtime) | Perimeter / SDK | Target | |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	fmt.Fprintf(b, "| **Per-call round trip** | %s | %s | **%.2f×** | ≤ %.1f× | %s |\n",
		fmtDur(sdk), fmtDur(per), ratio, targetRatio, verdict(ratio <= targetRatio))
	fmt.Fprintf(b, "| Per call, each round | %s | %s | | | |\n",
		fmtDurs(r.each(nameSDK, statPerCall)), fmtDurs(r.each(namePerimeter, statPerCall)))
	r.row(b, "… in the tool's `Execute` (SDK: the in-process tool; Perimeter: the gate, journal + sandboxd)", statExec)
	r.row(b, "… outside it (control plane, HTTP, the SDK's session runner)", statRest)
	r.row(b, "CPU per call, every process", statCPU)
	r.row(b, "Session created → first tool result", statFirst)
	b.WriteString("\n")
	if len(r.contenders) > 2 {
		r.ladderTable(b)
	}
}

// ladderTable shows the diagnostics: each row takes one cost out of the
// row above it.
func (r report) ladderTable(b *strings.Builder) {
	b.WriteString("Where Perimeter's extra time goes: each row takes one cost out of the row above (same rounds, same alternation).\n\n")
	b.WriteString("| Contender | Per call | Δ vs the row above | In `Execute` | Outside it |\n| --- | --- | --- | --- | --- |\n")
	order := append(slices.Clone(r.contenders[1:]), r.contenders[0])
	var prev time.Duration
	for i, c := range order {
		cur := r.median(c.name, statPerCall)
		delta := ""
		if i > 0 {
			delta = fmtDelta(cur - prev)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", c.label, fmtDur(cur), delta,
			fmtDur(r.median(c.name, statExec)), fmtDur(r.median(c.name, statRest)))
		prev = cur
	}
	b.WriteString("\n")
}

func (r report) concurrentTable(b *strings.Builder) {
	c := r.conc
	fmt.Fprintf(b, "### %d concurrent sessions\n\n", c.sessions)
	fmt.Fprintf(b, "`perimeter worker --insecure-process-runtime --max-sessions %d` as a subprocess; %d sessions of %d `bash true` calls "+
		"created back to back as the worker's long poll begins (an idle SDK `WorkPoller` sleeps 1–3 s between empty polls; "+
		"that wait is left out). The worker's RSS sampled every %s (%d samples), the sandboxes' RSS and PSS every %s.\n\n",
		c.sessions, c.sessions, c.perSession, sampleEvery, c.samples, treeEvery*sampleEvery)
	b.WriteString("| | Value | Target | |\n| --- | --- | --- | --- |\n")
	fmt.Fprintf(b, "| Tool calls | %d × %d = %d | | |\n", c.sessions, c.perSession, c.calls)
	fmt.Fprintf(b, "| Wall time, first create → last scenario end | %s | | |\n", fmtDur(c.wall))
	fmt.Fprintf(b, "| **Aggregate tool calls/s** | **%.0f** | — | |\n", c.callsPerSecond())
	fmt.Fprintf(b, "| … from the first tool result (%s) | %.0f | — | |\n",
		fmtDur(c.busy), c.busyCallsPerSecond())
	total := c.cpuWorker + c.cpuSandboxes + c.cpuPlane
	perCall := func(d time.Duration) string { return fmtDur(d / time.Duration(max(c.calls, 1))) }
	fmt.Fprintf(b, "| CPU per call: worker + sandboxes + control plane (and this bench) | %s + %s + %s = %s | | |\n",
		perCall(c.cpuWorker), perCall(c.cpuSandboxes), perCall(c.cpuPlane), perCall(total))
	fmt.Fprintf(b, "| CPU used, of %d cores × wall time | %.0f%% | | |\n",
		r.machine.cpus, 100*total.Seconds()/(float64(r.machine.cpus)*c.wall.Seconds()))
	if t := r.concTmpfs; t != nil {
		fmt.Fprintf(b, "| Diagnostic: aggregate tool calls/s with the state dir on tmpfs (%s wall) | %.0f | — | |\n",
			fmtDur(t.wall), t.callsPerSecond())
	}
	fmt.Fprintf(b, "| Worker RSS idle → peak (VmHWM) | %s → %s (%s) | | |\n", fmtMiB(c.idleRSS), fmtMiB(c.peakRSS), fmtMiB(c.hwm))
	fmt.Fprintf(b, "| **Worker memory per session**, (peak − idle) / %d | **%s** | ≤ %s | %s |\n",
		c.sessions, fmtMiB(c.workerPerSession()), fmtMiB(targetPerSession), verdict(c.workerPerSession() <= targetPerSession))
	rss, pss, n := c.peakChildren, c.peakPSS, int64(c.sessions)
	b.WriteString("\nThe sandboxes are separate processes, not counted above. RSS counts the pages they share (the perimeter " +
		"binary's text) once per process; PSS divides them among the sharers, so its sum is what they cost together.\n\n")
	b.WriteString("| Per session (sum at the peak / sessions) | RSS | PSS |\n| --- | --- | --- |\n")
	fmt.Fprintf(b, "| sandboxd (%d at the RSS peak, %d at the PSS peak) | %s | %s |\n",
		len(rss.children), len(pss.children), fmtMiB(rss.childrenRSS/n), fmtMiB(pss.childrenPSS/n))
	fmt.Fprintf(b, "| Whole sandbox: sandboxd and its shells (%d / %d processes) | %s | %s |\n\n",
		len(rss.all), len(pss.all), fmtMiB(rss.allRSS/n), fmtMiB(pss.allPSS/n))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func ratioOf(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func fmtDelta(d time.Duration) string {
	if d < 0 {
		return "−" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
}

func fmtDurs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmtDur(d)
	}
	return strings.Join(s, ", ")
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20)) }

// machine describes the host.
type machine struct {
	cpus             int
	cpu, kernel, mem string
	goVersion, tmpFS string
}

func readMachine() machine {
	return machine{
		cpus:      runtime.NumCPU(),
		cpu:       procField("/proc/cpuinfo", "model name"),
		kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		mem:       procField("/proc/meminfo", "MemTotal"),
		goVersion: runtime.Version(),
		tmpFS:     fsType(os.TempDir()),
	}
}

func (m machine) String() string {
	return fmt.Sprintf("nproc %d (%s), %s RAM, Linux %s, %s %s/%s, temp dir (state, journal) on %s",
		m.cpus, m.cpu, m.mem, m.kernel, m.goVersion, runtime.GOOS, runtime.GOARCH, m.tmpFS)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	for line := range strings.Lines(readFile(path)) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// fsType names the filesystem holding path: it decides what the journal's
// fsyncs cost.
func fsType(path string) string {
	var st syscall.Statfs_t
	if syscall.Statfs(path, &st) != nil {
		return "unknown"
	}
	names := map[int64]string{0xEF53: "ext4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x794c7630: "overlayfs"}
	if n, ok := names[int64(st.Type)]; ok {
		return n
	}
	return fmt.Sprintf("fs 0x%x", st.Type)
}
