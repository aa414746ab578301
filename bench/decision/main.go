// Command decision measures how long the policy gate takes to decide a tool
// call: policy.Evaluate on the synthetic 100-rule policy (policy.Synthetic:
// exact names, prefix and general globs, "*", about half the rules with a CEL
// condition), over varied calls (policy.SyntheticCalls), against a target of
// a 50 µs median. As a baseline measured in the same run, it times the same
// calls on a policy of one rule that allows every tool.
//
// Every call is timed on its own. The two policies take turns in blocks of
// 1000 calls, after a warm-up, so that noise on the machine falls on both.
// It prints a markdown table (and writes it to -out); a missed target never
// fails the run.
//
// Usage:
//
//	go run ./bench/decision [-calls 100000] [-rules 100] [-out results.md]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/perimeterhq/perimeter/internal/policy"
)

// target is the 100-rule policy's p50 goal.
const target = 50 * time.Microsecond

// block is how many calls one policy evaluates before the other takes over.
const block = 1000

const oneRule = `version: 1
default:
  decision: ask
rules:
  - name: everything
    tools: ["*"]
    decision: allow
`

func main() {
	calls := flag.Int("calls", 100000, "calls to time per policy")
	rules := flag.Int("rules", 100, "rules in the synthetic policy")
	out := flag.String("out", "", "also write the markdown results to this file")
	flag.Parse()
	if *calls < 1 || *rules < 1 {
		fmt.Fprintln(os.Stderr, "decision: -calls and -rules must be at least 1")
		os.Exit(2)
	}
	md, err := run(*calls, *rules)
	if err != nil {
		fmt.Fprintln(os.Stderr, "decision:", err)
		os.Exit(1)
	}
	fmt.Print(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "decision:", err)
			os.Exit(1)
		}
	}
}

func run(n, rules int) (string, error) {
	start := time.Now()
	many, err := policy.Parse("synthetic.yaml", policy.Synthetic(rules))
	if err != nil {
		return "", fmt.Errorf("synthetic policy: %w", err)
	}
	parse := time.Since(start)
	one, err := policy.Parse("one-rule.yaml", []byte(oneRule))
	if err != nil {
		return "", fmt.Errorf("one-rule policy: %w", err)
	}
	calls := policy.SyntheticCalls(min(n, 10000))

	// Warm up both (CEL's lazily built state, the allocator, the CPU's
	// caches and frequency).
	for i := range min(len(calls), 2000) {
		many.Evaluate(calls[i])
		one.Evaluate(calls[i])
	}

	manyT := make([]time.Duration, 0, n)
	oneT := make([]time.Duration, 0, n)
	decisions := map[policy.Decision]int{}
	matched := 0
	for done := 0; done < n; done += block {
		end := min(done+block, n)
		for i := done; i < end; i++ {
			c := calls[i%len(calls)]
			t0 := time.Now()
			res := many.Evaluate(c)
			manyT = append(manyT, time.Since(t0))
			decisions[res.Decision]++
			matched += len(res.Matched)
		}
		for i := done; i < end; i++ {
			c := calls[i%len(calls)]
			t0 := time.Now()
			one.Evaluate(c)
			oneT = append(oneT, time.Since(t0))
		}
	}
	slices.Sort(manyT)
	slices.Sort(oneT)

	var b strings.Builder
	fmt.Fprintf(&b, "## Policy decision time\n\n")
	fmt.Fprintf(&b, "Run on %s with `go run ./bench/decision -calls %d -rules %d`: %s, %s/%s, %d CPUs.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), n, rules, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	fmt.Fprintf(&b, "`policy.Evaluate` of %d calls per policy (%d distinct from `policy.SyntheticCalls`), each timed on its own; the policies take turns in blocks of %d calls after a warm-up. The %d-rule policy is `policy.Synthetic(%d)` (parsed and compiled in %s); the baseline is one rule allowing `\"*\"`.\n\n",
		n, len(calls), block, rules, rules, round(parse))
	fmt.Fprintf(&b, "| Policy | p50 | p95 | p99 | max | %d-rule p50 / 1-rule p50 |\n", rules)
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| %d rules | %s | %s | %s | %s | **%.0f×** |\n", rules,
		round(pct(manyT, 50)), round(pct(manyT, 95)), round(pct(manyT, 99)), round(manyT[len(manyT)-1]),
		float64(pct(manyT, 50))/float64(max(pct(oneT, 50), 1)))
	fmt.Fprintf(&b, "| 1 rule (baseline) | %s | %s | %s | %s | 1× |\n\n",
		round(pct(oneT, 50)), round(pct(oneT, 95)), round(pct(oneT, 99)), round(oneT[len(oneT)-1]))
	ratio := float64(pct(manyT, 50)) / float64(target)
	verdict := "met"
	if ratio > 1 {
		verdict = "**not met**"
	}
	fmt.Fprintf(&b, "Target: %d-rule p50 ≤ %s: %s (p50 / target = %.2f).\n\n", rules, target, verdict, ratio)
	fmt.Fprintf(&b, "Decisions of the %d-rule policy: allow %d, ask %d, defer %d, deny %d; %.1f rules matched per call on average.\n",
		rules, decisions[policy.Allow], decisions[policy.Ask], decisions[policy.Defer], decisions[policy.Deny], float64(matched)/float64(n))
	return b.String(), nil
}

// pct returns the p-th percentile (nearest rank) of sorted samples.
func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p+99)/100 - 1
	return sorted[max(i, 0)]
}

// round shortens a duration for the table.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d >= time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	}
	return d
}
