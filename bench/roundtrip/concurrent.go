package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/examples"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
)

// sampleEvery is how often the sampler reads the worker's RSS; every
// treeEvery-th sample also reads its descendants' RSS and PSS, which means
// reading every process's stat: ~10 ms on a small VM, too much to do every
// time. Their total is a plateau while every session is open.
const (
	sampleEvery = 50 * time.Millisecond
	treeEvery   = 10
)

// concurrentResult is the concurrent-sessions measurement.
type concurrentResult struct {
	sessions, perSession, calls int
	// wall is first session created → last scenario end (the last session's
	// session.status_terminated, from the event log).
	wall time.Duration
	// busy is first tool result → last scenario end.
	busy time.Duration
	// idleRSS is the worker's RSS, polling, before any session; peakRSS the
	// highest sample during the run; hwm the kernel's VmHWM at the end.
	idleRSS, peakRSS, hwm int64
	// CPU time during the run: the worker process, its sandboxes (reaped
	// children and theirs), and this process (the control plane, sampling).
	cpuWorker, cpuSandboxes, cpuPlane time.Duration
	// peakChildren is the sandbox processes at the sample where their total
	// RSS peaked; peakPSS where their total PSS peaked.
	peakChildren, peakPSS tree
	samples               int
}

func (r concurrentResult) callsPerSecond() float64 { return float64(r.calls) / r.wall.Seconds() }

func (r concurrentResult) busyCallsPerSecond() float64 { return float64(r.calls) / r.busy.Seconds() }

// workerPerSession is (peak − idle) / sessions: the worker's own memory cost
// of a session.
func (r concurrentResult) workerPerSession() int64 {
	return (r.peakRSS - r.idleRSS) / int64(r.sessions)
}

// runConcurrent starts `perimeter worker` as a subprocess serving p, runs
// sessions sessions of perSession calls at once, and samples memory.
func runConcurrent(ctx context.Context, p *benchPlane, bin, stateDir string, sessions, perSession int) (concurrentResult, error) {
	res := concurrentResult{sessions: sessions, perSession: perSession}
	if err := p.WaitPollsOver(ctx); err != nil {
		return res, err
	}
	w, err := startWorkerProc(p, bin, stateDir, sessions)
	if err != nil {
		return res, err
	}
	defer w.stop()
	if err := w.waitReady(30 * time.Second); err != nil {
		return res, err
	}
	time.Sleep(time.Second) // let start-up garbage settle
	if res.idleRSS, err = medianRSS(w.pid(), 5, 100*time.Millisecond); err != nil {
		return res, err
	}
	cpu0, err := readStat(w.pid())
	if err != nil {
		return res, err
	}
	self0 := stats.CPU(syscall.RUSAGE_SELF)

	s := startSampler(w.pid())
	start, ids, err := launch(ctx, p, sessions)
	s.stop()
	if err != nil {
		return res, err
	}
	res.peakRSS, res.peakChildren, res.peakPSS, res.samples = s.peakRSS, s.peakTree, s.peakPSS, s.samples
	res.hwm, _ = statusField(w.pid(), "VmHWM")

	span, err := eventSpan(ctx, p, ids)
	if err != nil {
		return res, err
	}
	if want := sessions * perSession; span.results != want {
		return res, fmt.Errorf("%w: %d tool results across the sessions, want %d", errScenarioFailed, span.results, want)
	}
	res.calls, res.wall, res.busy = span.results, span.end.Sub(start), span.end.Sub(span.firstResult)

	// The sandboxes' CPU is known once the worker has reaped them.
	waitNoChildren(w.pid(), 10*time.Second)
	cpu1, err := readStat(w.pid())
	if err != nil {
		return res, err
	}
	res.cpuWorker, res.cpuSandboxes = cpu1.cpu-cpu0.cpu, cpu1.childCPU-cpu0.childCPU
	res.cpuPlane = stats.CPU(syscall.RUSAGE_SELF) - self0
	return res, nil
}

// launch creates n sessions as the worker's next long poll begins, and
// waits for them all to pass. It returns when the first was created.
func launch(ctx context.Context, p *benchPlane, n int) (time.Time, []string, error) {
	if err := p.NextPoll(ctx); err != nil {
		return time.Time{}, nil, err
	}
	start := time.Now()
	ids, err := createSessions(ctx, p, n)
	if err != nil {
		return start, nil, err
	}
	return start, ids, waitAll(ctx, p, ids)
}

// createSessions creates n sessions back to back.
func createSessions(ctx context.Context, p *benchPlane, n int) ([]string, error) {
	ids := make([]string, 0, n)
	for range n {
		id, err := p.createSession(ctx, concurrentAgent)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// waitAll waits for every session's scenario to pass, one at a time, so the
// polling stays light.
func waitAll(ctx context.Context, p *benchPlane, ids []string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for _, id := range ids {
		if err := p.waitPassed(ctx, id, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// span is what the sessions' event logs say about the run as a whole.
type span struct {
	firstResult time.Time // the earliest user.tool_result
	end         time.Time // the latest session.status_terminated
	results     int       // user.tool_result events
}

func eventSpan(ctx context.Context, p *benchPlane, ids []string) (span, error) {
	var sp span
	for _, id := range ids {
		evs, err := p.events(ctx, id)
		if err != nil {
			return sp, err
		}
		for _, e := range evs {
			switch e.Type {
			case "user.tool_result":
				sp.results++
				if sp.firstResult.IsZero() || e.ProcessedAt.Before(sp.firstResult) {
					sp.firstResult = e.ProcessedAt
				}
			case "session.status_terminated":
				if e.ProcessedAt.After(sp.end) {
					sp.end = e.ProcessedAt
				}
			}
		}
	}
	if sp.end.IsZero() || sp.firstResult.IsZero() {
		return sp, fmt.Errorf("%w: no tool result, or no session reached session.status_terminated", errScenarioFailed)
	}
	return sp, nil
}

// waitNoChildren waits up to d for pid to have no child processes.
func waitNoChildren(pid int, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		procs, err := allProcs()
		if err != nil || len(descendants(pid, procs).children) == 0 {
			return
		}
	}
}

func medianRSS(pid, n int, every time.Duration) (int64, error) {
	var xs []int64
	for i := range n {
		if i > 0 {
			time.Sleep(every)
		}
		v, err := vmRSS(pid)
		if err != nil {
			return 0, err
		}
		xs = append(xs, v)
	}
	slices.Sort(xs)
	return xs[len(xs)/2], nil
}

// sampler records the worker's peak RSS and its descendants' peak total
// RSS and PSS.
type sampler struct {
	pid  int
	quit chan struct{}
	done chan struct{}

	// Written by the sampling goroutine, read after done.
	peakRSS           int64
	peakTree, peakPSS tree
	samples           int
}

func startSampler(pid int) *sampler {
	s := &sampler{pid: pid, quit: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *sampler) loop() {
	defer close(s.done)
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-s.quit:
			s.sample()
			return
		case <-t.C:
		}
	}
}

func (s *sampler) sample() {
	if rss, err := vmRSS(s.pid); err == nil {
		s.peakRSS = max(s.peakRSS, rss)
	}
	s.samples++
	if s.samples%treeEvery != 1 {
		return
	}
	if procs, err := allProcs(); err == nil {
		t := descendants(s.pid, procs)
		if t.allRSS > s.peakTree.allRSS {
			s.peakTree = t
		}
		if t.addPSS(); t.allPSS > s.peakPSS.allPSS {
			s.peakPSS = t
		}
	}
}

func (s *sampler) stop() {
	close(s.quit)
	<-s.done
}

// workerProc is a `perimeter worker` subprocess.
type workerProc struct {
	cmd   *exec.Cmd
	ready chan struct{} // closed when it logs that it is polling
	done  chan struct{} // closed when it has exited

	mu   sync.Mutex // guards tail
	tail []string   // its last output lines
}

const tailLines = 20

func startWorkerProc(p *benchPlane, bin, stateDir string, sessions int) (*workerProc, error) {
	// Nobody approves here: the calls pass the gate by the allow-all
	// example policy (each still decided and recorded).
	policy, err := examples.Policies.ReadFile("policies/allow-all.yaml")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o711); err != nil {
		return nil, err
	}
	policyFile := filepath.Join(stateDir, "allow-all.yaml")
	if err := os.WriteFile(policyFile, policy, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "worker", "--insecure-process-runtime",
		"--max-sessions", strconv.Itoa(sessions), "--state-dir", stateDir,
		"--admin-listen", "off", "--max-idle", "1s", "--policy", policyFile)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + stateDir,
		"ANTHROPIC_BASE_URL=" + p.URL, "ANTHROPIC_ENVIRONMENT_ID=" + envID, "ANTHROPIC_ENVIRONMENT_KEY=" + envKey,
	}
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = wr, wr
	err = cmd.Start()
	wr.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start perimeter worker: %w", err)
	}
	w := &workerProc{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
	go w.read(r)
	go func() { _ = cmd.Wait(); close(w.done) }()
	return w, nil
}

func (w *workerProc) pid() int { return w.cmd.Process.Pid }

// read keeps the output's tail and spots the "polling for work" line.
func (w *workerProc) read(r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	polling := false
	for sc.Scan() {
		line := sc.Text()
		if !polling && strings.Contains(line, "polling for work") {
			polling = true
			close(w.ready)
		}
		w.mu.Lock()
		w.tail = append(w.tail, line)
		if len(w.tail) > tailLines {
			w.tail = w.tail[1:]
		}
		w.mu.Unlock()
	}
}

func (w *workerProc) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.tail, "\n")
}

func (w *workerProc) waitReady(d time.Duration) error {
	select {
	case <-w.ready:
		return nil
	case <-w.done:
		return fmt.Errorf("perimeter worker exited (%s) before polling:\n%s", w.cmd.ProcessState, w.output())
	case <-time.After(d):
		return fmt.Errorf("perimeter worker not polling after %s:\n%s", d, w.output())
	}
}

// stop drains the worker with SIGTERM, or kills it after 30s.
func (w *workerProc) stop() {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "perimeter worker did not drain within 30s; killing it")
		_ = w.cmd.Process.Kill()
		<-w.done
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		fmt.Fprintf(os.Stderr, "perimeter worker exited with %d:\n%s\n", code, w.output())
	}
}
