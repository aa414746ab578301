//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const asNobodyEnv = "CHECKPOINT_TEST_AS_NOBODY"

// TestUnreadableEntriesAreSkipped needs a user that permissions apply to:
// run as root, it runs itself again as nobody.
func TestUnreadableEntriesAreSkipped(t *testing.T) {
	if os.Geteuid() == 0 {
		if os.Getenv(asNobodyEnv) != "" {
			t.Fatal("still root after switching to nobody")
		}
		rerunAsNobody(t)
		return
	}
	s, _ := openStore(t, Options{})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "ok"), []byte("ok"), 0o644)
	writeFile(t, filepath.Join(ws, "secret"), []byte("s"), 0o000)
	writeFile(t, filepath.Join(ws, "locked/f"), []byte("f"), 0o644)
	writeFile(t, filepath.Join(ws, "nosearch/f"), []byte("f"), 0o644)
	os.Chmod(filepath.Join(ws, "locked"), 0o000)
	os.Chmod(filepath.Join(ws, "nosearch"), 0o644) // listable, but no entry can be stat'ed
	t.Cleanup(func() {
		os.Chmod(filepath.Join(ws, "locked"), 0o755)
		os.Chmod(filepath.Join(ws, "nosearch"), 0o755)
	})
	c := mustCheckpoint(t, s, ws, Key{Session: "s"})
	want := []string{"locked: " + ReasonPermission, "nosearch/f: " + ReasonPermission, "secret: " + ReasonPermission}
	if diff := cmp.Diff(want, skipNames(c.Skipped)); diff != "" {
		t.Fatalf("Skipped (-want +got):\n%s", diff)
	}
	// Restoring removes what was skipped, unreadable or not (the owner may
	// change its mode), and leaves the rest.
	mustRestore(t, s, ws, c.ID)
	assertTree(t, ws, map[string]node{
		"ok":       {Type: "file", Mode: 0o644, Content: "2689367b205c16ce/2"},
		"nosearch": {Type: "dir", Mode: 0o644},
	}, "restore")
}

func rerunAsNobody(t *testing.T) {
	// The test binary may sit in a directory only root can enter: run a
	// copy from one anybody can.
	dir, err := os.MkdirTemp("", "checkpoint-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "checkpoint.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(dst, src)
	src.Close()
	dst.Close()
	cmd := exec.Command(bin, "-test.run=^TestUnreadableEntriesAreSkipped$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), asNobodyEnv+"=1", "TMPDIR="+os.TempDir(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody:\n%s", out)
	if err != nil {
		t.Fatalf("as nobody: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestUnreadableEntriesAreSkipped") {
		t.Fatal("as nobody: the test did not pass")
	}
}
