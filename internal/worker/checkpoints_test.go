package worker

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
)

// Each call that may write is checkpointed; when the session's work item
// ends, the store lets go of the session's cache and workspace watches.
func TestASessionsCheckpointStateIsReleasedWhenItEnds(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: write
    input: {file_path: a.txt, content: "alpha\n"}
    expect: {is_error: false}
  - tool: read
    input: {file_path: a.txt}
    expect: {is_error: false, contains: alpha}
  - tool: bash
    input: {command: "mkdir -p d/e && echo beta > d/e/b.txt"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "echo gamma > a.txt"}
    expect: {is_error: false}
  - tool: bash
    input: {command: "echo delta > a.txt"}
    expect: {is_error: false}
  - end: terminate
`)})
	store := openStore(t)
	spans := tracetest.NewSpanRecorder()
	opts := h.workerOptions(t.TempDir())
	opts.Checkpoints = store
	opts.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	h.startWorker(opts)
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	waitFor(t, "work item stopped", func() bool { return h.workState(id) == "stopped" })

	list, err := store.List(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 {
		t.Fatalf("%d checkpoints, want 4 (before the write and each bash; read takes none)", len(list))
	}
	waitFor(t, "the store to forget the session", func() bool { return store.Sessions() == 0 })

	// Each checkpoint's span says how many directories it looked at:
	// only those changed since the previous one (the last one leaves d
	// and d/e alone).
	var visited []string
	for _, sp := range spans.Ended() {
		if sp.Name() == "perimeter.checkpoint" {
			visited = append(visited, attr(sp, "perimeter.checkpoint.visited_dirs"))
		}
	}
	if !slices.Equal(visited, []string{"1", "1", "3", "1"}) {
		t.Errorf("checkpoint spans visited %v directories, want [1 1 3 1]", visited)
	}
}

// brokenRemote is an object store that answers every request with an
// error, and counts the requests a push makes (Exists, then Put).
type brokenRemote struct{ pushes atomic.Int64 }

func (r *brokenRemote) Exists(context.Context, string) (bool, error) {
	r.pushes.Add(1)
	return false, errors.New("service unavailable")
}

func (r *brokenRemote) Put(context.Context, string, io.Reader, int64) error {
	r.pushes.Add(1)
	return errors.New("service unavailable")
}

func (r *brokenRemote) Get(context.Context, string) (io.ReadCloser, error) {
	return nil, errors.New("service unavailable")
}

// When the workspace saved under a session's key cannot be loaded, the
// session starts empty, and its end saves nothing over the saved one:
// neither to the object store nor here.
func TestAWorkspaceThatFailedToLoadIsNotSavedOver(t *testing.T) {
	h := newHarness(t, 5*time.Second, map[string]string{"s": scenario(`
  - tool: bash
    input: {command: "ls; echo new > b.txt"}
    expect: {is_error: false}
  - end: terminate
`)})
	store := openStore(t)
	remote := &brokenRemote{}
	opts := h.workerOptions(t.TempDir())
	opts.Checkpoints, opts.PersistKey, opts.PersistRemote = store, "project", remote
	h.startWorker(opts)
	id := h.newSessionWith("s", map[string]string{"project": "p1"})
	h.waitScenario(id, "passed")
	waitFor(t, "work item stopped", func() bool { return h.workState(id) == "stopped" })
	waitFor(t, "the worker to decline the save", func() bool {
		return strings.Contains(h.logs.String(), "not saving the workspace")
	})
	if n := remote.pushes.Load(); n != 0 {
		t.Errorf("%d push requests to the object store, want none", n)
	}
	if list, err := store.List("persist:p1"); err != nil || len(list) != 0 {
		t.Errorf("saved here: %d checkpoints, %v; want none", len(list), err)
	}
}

// openStore opens a checkpoint store for the test, closed when it ends.
func openStore(t *testing.T) *checkpoint.Store {
	t.Helper()
	store, err := checkpoint.Open(filepath.Join(t.TempDir(), "checkpoints"), checkpoint.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}
