// Command roundtrip benchmarks Perimeter's worker against the official Go
// SDK's in-process EnvironmentWorker, both served by Perimeter's embedded
// control plane on 127.0.0.1:
//
//   - the round trip of a trivial tool call (`bash true`), SDK and Perimeter
//     alternating, with the median per-call time of each and their ratio;
//   - S concurrent sessions on a `perimeter worker` subprocess: aggregate
//     tool calls per second and memory per session.
//
// It prints a markdown table (and writes it to -out) with the targets, met
// or not. It exits non-zero only when something does not work (a scenario
// that does not pass, a worker that does not start), never on a missed
// target. See bench/README.md.
//
// Usage:
//
//	go run ./bench/roundtrip -perimeter ./bin/perimeter [-calls 200] [-rounds 3]
//	    [-sessions 50] [-calls-per-session 20] [-out results.md] [-cpuprofile cpu.out]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	perimeter            string
	calls, rounds        int
	sessions, perSession int
	out, cpuprofile      string
	diagnose             bool
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.perimeter, "perimeter", "", "the built perimeter binary (sandboxd and the worker subprocess); required")
	flag.IntVar(&c.calls, "calls", 200, "tool calls in the round-trip session")
	flag.IntVar(&c.rounds, "rounds", 3, "round-trip rounds; each runs the SDK and Perimeter once, alternating which goes first")
	flag.IntVar(&c.sessions, "sessions", 50, "concurrent sessions (and the worker's --max-sessions)")
	flag.IntVar(&c.perSession, "calls-per-session", 20, "tool calls in each concurrent session")
	flag.StringVar(&c.out, "out", "", "also write the markdown results to this file")
	flag.BoolVar(&c.diagnose, "diagnose", true, "also run Perimeter with its state on tmpfs, and with sandboxd in-process, "+
		"to show where its extra time per call goes")
	flag.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the round-trip rounds to this file; "+
		"the workers' goroutines are labelled contender=<name> (go tool pprof -tagfocus 'contender=^perimeter$')")
	flag.Parse()
	return c
}

func (c config) validate() error {
	switch {
	case c.perimeter == "":
		return errors.New("-perimeter is required (build it with `make build`)")
	case c.calls < 2:
		return errors.New("-calls must be at least 2: the round trip is measured between the first and the last result")
	case c.rounds < 1 || c.sessions < 1 || c.perSession < 1:
		return errors.New("-rounds, -sessions and -calls-per-session must be at least 1")
	}
	return nil
}

func main() {
	cfg := parseFlags()
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	bin, err := filepath.Abs(cfg.perimeter)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("perimeter binary: %w", err)
	}
	root, err := os.MkdirTemp("", "perimeter-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	p, err := setUp(root, cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	tmpfs := ""
	if cfg.diagnose {
		if tmpfs, err = tmpfsDir(); err != nil {
			return err
		}
		if tmpfs != "" {
			defer os.RemoveAll(tmpfs)
		}
	}

	r := &report{date: time.Now(), machine: readMachine(), cfg: cfg, contenders: contenders(bin, tmpfs)}
	if err := r.measureRoundTrips(ctx, p, root); err != nil {
		return fmt.Errorf("round trip: %w", err)
	}
	if err := r.measureConcurrent(ctx, p, bin, root, tmpfs); err != nil {
		return fmt.Errorf("concurrent sessions: %w", err)
	}
	md := r.markdown()
	fmt.Print(md)
	if cfg.out != "" {
		return os.WriteFile(cfg.out, []byte(md), 0o644)
	}
	return nil
}

// measureRoundTrips runs the round trips, under the CPU profile if asked.
func (r *report) measureRoundTrips(ctx context.Context, p *benchPlane, root string) error {
	stopProfile, err := startProfile(r.cfg.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()
	r.rt, err = runRoundTrips(ctx, p, r.contenders, filepath.Join(root, "roundtrip"), r.cfg.rounds, r.cfg.calls)
	return err
}

// measureConcurrent runs the concurrent sessions, then, when tmpfs is set,
// again with the worker's state there (a diagnostic of the journal's share).
func (r *report) measureConcurrent(ctx context.Context, p *benchPlane, bin, root, tmpfs string) error {
	c := r.cfg
	fmt.Fprintf(os.Stderr, "concurrent: %d sessions × %d calls on a perimeter worker subprocess\n", c.sessions, c.perSession)
	var err error
	if r.conc, err = runConcurrent(ctx, p, bin, filepath.Join(root, "concurrent"), c.sessions, c.perSession); err != nil {
		return err
	}
	if tmpfs == "" {
		return nil
	}
	fmt.Fprintln(os.Stderr, "concurrent: again with the state dir on tmpfs")
	tm, err := runConcurrent(ctx, p, bin, filepath.Join(tmpfs, "concurrent"), c.sessions, c.perSession)
	r.concTmpfs = &tm
	return err
}

// setUp writes the scenarios and starts the control plane.
func setUp(root string, cfg config) (*benchPlane, error) {
	dir := filepath.Join(root, "scenarios")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, calls := range map[string]int{roundTripAgent: cfg.calls, warmupAgent: warmupCalls, concurrentAgent: cfg.perSession} {
		if err := writeScenario(dir, name, calls); err != nil {
			return nil, err
		}
	}
	return startPlane(dir)
}

// tmpfsDir makes a temporary directory on /dev/shm for the diagnostics,
// or returns "" (and says so) when /dev/shm is not a tmpfs.
func tmpfsDir() (string, error) {
	if fsType("/dev/shm") != "tmpfs" {
		fmt.Fprintln(os.Stderr, "/dev/shm is not a tmpfs: skipping the diagnostic contenders")
		return "", nil
	}
	return os.MkdirTemp("/dev/shm", "perimeter-bench-")
}

// startProfile starts a CPU profile into path ("" = none) and returns its
// stop.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
