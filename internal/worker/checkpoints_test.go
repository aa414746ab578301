package worker

import (
	"path/filepath"
	"testing"
	"time"

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
  - end: terminate
`)})
	store, err := checkpoint.Open(filepath.Join(t.TempDir(), "checkpoints"), checkpoint.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	opts := h.workerOptions(t.TempDir())
	opts.Checkpoints = store
	h.startWorker(opts)
	id := h.newSession("s")
	h.waitScenario(id, "passed")
	waitFor(t, "work item stopped", func() bool { return h.workState(id) == "stopped" })

	list, err := store.List(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d checkpoints, want 2 (before write and bash; read takes none)", len(list))
	}
	waitFor(t, "the store to forget the session", func() bool { return store.Sessions() == 0 })
}
