// Package testenv decides what tests do when something they need (a built
// binary, Docker, root, bubblewrap) is missing: skip with the reason on a
// laptop, fail in CI, where PERIMETER_TEST_STRICT=1 turns every such skip
// into a failure so a missing install step can never pass silently.
package testenv

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Strict reports whether missing prerequisites fail tests.
func Strict() bool { return os.Getenv("PERIMETER_TEST_STRICT") == "1" }

// Need skips (or, when Strict, fails) t unless ok, naming what is missing.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if Strict() {
		t.Fatalf("PERIMETER_TEST_STRICT=1 and this test needs %s", what)
	}
	t.Skipf("needs %s (set PERIMETER_TEST_STRICT=1 to make this a failure)", what)
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Binary builds ./cmd/perimeter once per test process, with the slim
// sandboxd embedded as `make build` does, and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		removeStaleBinaries()
		dir, err := os.MkdirTemp("", binPrefix+strconv.Itoa(os.Getpid())+"-")
		if err != nil {
			buildErr = err
			return
		}
		// Searchable by the unprivileged uid bwrap sandboxes run as.
		if buildErr = os.Chmod(dir, 0o755); buildErr != nil {
			return
		}
		binPath = filepath.Join(dir, "perimeter")
		// As `make build` does: the slim sandboxd first, embedded through
		// an overlay (see internal/sandboxbin). Static, so isolating
		// backends can mount it into any image.
		slim := filepath.Join(dir, "perimeter-sandboxd")
		overlay := filepath.Join(dir, "overlay.json")
		ov, _ := json.Marshal(map[string]map[string]string{"Replace": {
			filepath.Join(root, "internal", "sandboxbin", "slim", "perimeter-sandboxd"): slim,
		}})
		if buildErr = os.WriteFile(overlay, ov, 0o644); buildErr != nil {
			return
		}
		for _, args := range [][]string{
			{"build", "-o", slim, "./cmd/perimeter-sandboxd"},
			{"build", "-overlay", overlay, "-o", binPath, "./cmd/perimeter"},
		} {
			cmd := exec.Command("go", args...)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			cmd.Dir = root
			if buildOut, buildErr = cmd.CombinedOutput(); buildErr != nil {
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("build perimeter: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// Sandboxd is the slim sandboxd (cmd/perimeter-sandboxd) that Binary
// builds next to the perimeter binary and embeds in it: the executable the
// worker installs and starts in its sandboxes.
func Sandboxd(t testing.TB) string {
	t.Helper()
	return filepath.Join(filepath.Dir(Binary(t)), "perimeter-sandboxd")
}

// binPrefix names the directories Binary builds into:
// binPrefix<pid>-<random>, by the test process's pid.
const binPrefix = "perimeter-testbin-"

// removeStaleBinaries removes what Binary built for test processes that
// are gone. A process cannot remove its own when its last test ends (the
// binary is shared by all of them, and a test binary has no hook after
// the last), so the next one does: 160 MiB per test process otherwise.
func removeStaleBinaries() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binPrefix+"*"))
	for _, dir := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), binPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil && errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
			_ = os.RemoveAll(dir)
		}
	}
}

// ShortDir is a directory right under $TMPDIR, removed when t ends: its
// path is short enough for unix sockets under it (t.TempDir's grows with
// the test's name), and its parents are searchable by the unprivileged
// uid a sandbox may run as (t.TempDir's are 0700).
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Buffer is a goroutine-safe sink for logs and process output.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Len returns how many bytes were written.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Len()
}

// ResultTexts returns the text of every tool result in a session's event
// log (events decoded as JSON objects), in order.
func ResultTexts(events []map[string]any) []string {
	var out []string
	for _, e := range events {
		if e["type"] != "user.tool_result" && e["type"] != "user.custom_tool_result" {
			continue
		}
		out = append(out, BlockText(e["content"]))
	}
	return out
}

// BlockText concatenates the text of a decoded content-block list.
func BlockText(content any) string {
	var b strings.Builder
	blocks, _ := content.([]any)
	for _, c := range blocks {
		if m, ok := c.(map[string]any); ok {
			if s, ok := m["text"].(string); ok {
				b.WriteString(s)
			}
		}
	}
	return b.String()
}
