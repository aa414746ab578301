package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
)

// Scenario (agent) names.
const (
	roundTripAgent  = "bench_roundtrip"
	warmupAgent     = "bench_warmup"
	concurrentAgent = "bench_concurrent"
	warmupCalls     = 10
)

// roundResult is one contender serving one session.
type roundResult struct {
	// perCall is (last tool result − first tool result) / (calls − 1), from
	// the event log's processed_at: calls − 1 whole round trips, each from a
	// result's post through the next agent.tool_use, its execution and its
	// result. (The control plane emits the first agent.tool_use when the
	// session is created, before any worker claims it, so a span starting
	// there would include the session's start-up.)
	perCall time.Duration
	// firstResult is session creation → first tool result: claim, session
	// fetch, sandbox start, stream attach and the first call.
	firstResult time.Duration
	// execPerCall is the mean time inside the tool's Execute: the SDK's
	// in-process tool, or Perimeter's gate (journal begin, sandbox call,
	// journal finish). The rest of perCall is the control plane, HTTP and
	// the SDK's session runner.
	execPerCall time.Duration
	// cpuPerCall is CPU time (this process and its reaped children, so the
	// control plane, the worker and any sandbox) over the whole round,
	// divided by calls.
	cpuPerCall time.Duration
}

// roundTrip starts c on a fresh state directory, serves one session of the
// given scenario, and stops it.
func roundTrip(ctx context.Context, p *benchPlane, c contender, dir, agent string, calls int) (roundResult, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return roundResult{}, err
	}
	if err := p.WaitPollsOver(ctx); err != nil {
		return roundResult{}, err
	}
	var timer execTimer
	run, cleanup, err := c.newRun(p, dir, &timer)
	if err != nil {
		return roundResult{}, fmt.Errorf("%s: %w", c.name, err)
	}
	defer cleanup()
	cpu0 := cpuTime()
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	// The label lets `go tool pprof -tagfocus 'contender=^perimeter$'` pick
	// out the worker's goroutines from the control plane's.
	go pprof.Do(wctx, pprof.Labels("contender", c.name), func(ctx context.Context) { done <- run(ctx) })

	res, err := serveOne(ctx, p, agent, calls)
	cancel()
	select {
	case runErr := <-done:
		if runErr != nil {
			err = errors.Join(err, fmt.Errorf("%s worker: %w", c.name, runErr))
		}
	case <-time.After(time.Minute):
		err = errors.Join(err, fmt.Errorf("%s worker did not stop within a minute", c.name))
	}
	res.cpuPerCall = (cpuTime() - cpu0) / time.Duration(calls)
	res.execPerCall = timer.mean()
	return res, err
}

// serveOne creates a session, waits for its scenario to pass and its work
// item to stop, and measures it from its event log.
func serveOne(ctx context.Context, p *benchPlane, agent string, calls int) (roundResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	created := time.Now()
	id, err := p.createSession(ctx, agent)
	if err != nil {
		return roundResult{}, err
	}
	if err := p.waitPassed(ctx, id, 50*time.Millisecond); err != nil {
		return roundResult{}, err
	}
	if err := p.waitStopped(ctx, id); err != nil {
		return roundResult{}, err
	}
	evs, err := p.events(ctx, id)
	if err != nil {
		return roundResult{}, err
	}
	return measure(evs, created, calls)
}

// measure reads the round trip off the event log.
func measure(evs []event, created time.Time, calls int) (roundResult, error) {
	var firstResult, lastResult time.Time
	n := 0
	for _, e := range evs {
		if e.Type != "user.tool_result" {
			continue
		}
		if n == 0 {
			firstResult = e.ProcessedAt
		}
		lastResult = e.ProcessedAt
		n++
	}
	if n != calls {
		return roundResult{}, fmt.Errorf("%w: the event log has %d tool results, want %d", errScenarioFailed, n, calls)
	}
	res := roundResult{firstResult: firstResult.Sub(created)}
	if n > 1 {
		res.perCall = lastResult.Sub(firstResult) / time.Duration(n-1)
	}
	return res, nil
}

// roundTripResults are every round of every contender, in run order.
type roundTripResults map[string][]roundResult

// runRoundTrips warms each contender up, then runs rounds rounds, each
// contender once per round, in order on even rounds and in reverse on odd
// ones (ABBA…), so drift on a noisy machine hits them alike.
func runRoundTrips(ctx context.Context, p *benchPlane, cs []contender, root string, rounds, calls int) (roundTripResults, error) {
	dir := func(c contender, what string) string {
		return filepath.Join(cmp.Or(c.stateRoot, root), what+"-"+c.name)
	}
	out := roundTripResults{}
	for _, c := range cs {
		if _, err := roundTrip(ctx, p, c, dir(c, "warmup"), warmupAgent, warmupCalls); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	for r := range rounds {
		order := slices.Clone(cs)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			res, err := roundTrip(ctx, p, c, dir(c, fmt.Sprintf("round%d", r)), roundTripAgent, calls)
			if err != nil {
				return nil, fmt.Errorf("round %d: %w", r+1, err)
			}
			fmt.Fprintf(os.Stderr, "round trip: round %d/%d %-16s %9s per call, %9s in Execute (first result after %s)\n",
				r+1, rounds, c.name, fmtDur(res.perCall), fmtDur(res.execPerCall), fmtDur(res.firstResult))
			out[c.name] = append(out[c.name], res)
		}
	}
	return out, nil
}

// cpuTime is the user+system CPU time of this process and of its children
// that have been waited for (and theirs, recursively).
func cpuTime() time.Duration {
	return stats.CPU(syscall.RUSAGE_SELF) + stats.CPU(syscall.RUSAGE_CHILDREN)
}
