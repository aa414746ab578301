//go:build unix

package lockfile

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var errHeld = errors.New("held")

// A second holder, here another process, is refused with the caller's
// sentinel; once the first lets go, it gets the lock.
func TestTakeIsExclusiveAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "LOCK")
	l, err := Take(path, errHeld)
	if err != nil {
		t.Fatal(err)
	}
	// A second open file description conflicts like another process's;
	// flock(1), where installed, checks from another process too.
	if _, err := Take(path, errHeld); !errors.Is(err, errHeld) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Take: %v, want %v naming %s", err, errHeld, path)
	}
	if flock, err := exec.LookPath("flock"); err == nil {
		if out, err := exec.Command(flock, "-n", path, "true").CombinedOutput(); err == nil {
			t.Fatalf("another process took the lock while it was held: %s", out)
		}
	}
	l.Close()
	l2, err := Take(path, errHeld)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	l2.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
