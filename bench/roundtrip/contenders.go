package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/lib/environments"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// maxIdle keeps a session attached briefly after its turn; the bench
// scenarios terminate, so it never expires during a measurement.
const maxIdle = 2 * time.Second

// Contender names. The first two are the comparison; the others are
// diagnostics that take one cost out of Perimeter at a time.
const (
	nameSDK       = "sdk"
	namePerimeter = "perimeter"
	nameTmpfs     = "perimeter-tmpfs"
	nameInproc    = "perimeter-inproc"
)

// contender is a worker implementation under test.
type contender struct {
	name  string // for logs and the pprof label
	label string // for the report
	// stateRoot, when set, holds the contender's state directories instead
	// of the bench's temp directory.
	stateRoot string
	// newRun returns a worker's Run serving the plane's queue with its state
	// in dir, and what to call once Run has returned. t gets the time each
	// call spends in the tool's Execute.
	newRun func(p *benchPlane, dir string, t *execTimer) (run func(context.Context) error, cleanup func(), err error)
}

// contenders are the SDK baseline and Perimeter, then, when tmpfs names a
// tmpfs directory, the diagnostics: Perimeter with its state (the journal)
// on tmpfs, and that with sandboxd in-process too.
func contenders(bin, tmpfs string) []contender {
	cs := []contender{
		sdkContender(),
		perimeterContender(namePerimeter, "Perimeter `worker`, process runtime", process.New(process.Options{Binary: bin}), ""),
	}
	if tmpfs != "" {
		cs = append(cs,
			perimeterContender(nameTmpfs, "… with the state dir on tmpfs (journal fsyncs ≈ free)", process.New(process.Options{Binary: bin}), tmpfs),
			perimeterContender(nameInproc, "… and sandboxd in-process (no process boundary)", inprocRuntime{}, tmpfs),
		)
	}
	return cs
}

// workerLogger formats every record, as a production worker would, into
// nothing.
func workerLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

// sdkContender is the official SDK's in-process EnvironmentWorker: the
// tools run in the worker process, with no sandbox and no journal. Its
// tools are the default agent_toolset_20260401, each wrapped in a timer.
func sdkContender() contender {
	return contender{name: nameSDK, label: "SDK `EnvironmentWorker` (baseline)",
		newRun: func(p *benchPlane, dir string, t *execTimer) (func(context.Context) error, func(), error) {
			idle := maxIdle
			w := environments.NewEnvironmentWorker(p.WorkerClient(), environments.EnvironmentWorkerOptions{
				EnvironmentID: envID, EnvironmentKey: envKey, Workdir: dir, MaxIdle: &idle, Logger: workerLogger(),
				ToolsFunc: func(env *agenttoolset.AgentToolContext) []anthropic.BetaTool {
					return t.wrap(agenttoolset.BetaAgentToolset20260401(env))
				},
			})
			return w.Run, func() {}, nil
		}}
}

// perimeterContender is Perimeter's worker on rt: every call goes through
// the gate (journal, log line, metrics, span) to sandboxd. A hook reads
// each call's gate time.
func perimeterContender(name, label string, rt sandbox.Runtime, stateRoot string) contender {
	return contender{name: name, label: label, stateRoot: stateRoot,
		newRun: func(p *benchPlane, dir string, t *execTimer) (func(context.Context) error, func(), error) {
			w, err := worker.New(worker.Options{
				Client: p.WorkerClient(), EnvironmentID: envID, EnvironmentKey: envKey,
				Runtime: rt, StateDir: dir, MaxIdle: maxIdle, Logger: workerLogger(),
				Hooks: []worker.Hook{t},
			})
			if err != nil {
				return nil, nil, err
			}
			return w.Run, func() { _ = w.Close() }, nil
		}}
}
