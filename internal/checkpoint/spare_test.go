package checkpoint

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// inodes returns the inode numbers of the files in dir.
func inodes(t *testing.T, dir string) map[uint64]bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[uint64]bool)
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[info.Sys().(*syscall.Stat_t).Ino] = true
	}
	return out
}

func TestNewObjectsAreWrittenToSpareFiles(t *testing.T) {
	s, dir := openStore(t, Options{})
	spare := filepath.Join(dir, "spare")
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "a"), []byte("first"), 0o644)
	mustCheckpoint(t, s, ws, Key{Session: "s"})
	// The first commit starts filling the pool in the background.
	deadline := time.Now().Add(30 * time.Second)
	for len(inodes(t, spare)) < spareTarget {
		if time.Now().After(deadline) {
			t.Fatalf("%d spare files after 30s, want %d", len(inodes(t, spare)), spareTarget)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ready := inodes(t, spare)

	writeFile(t, filepath.Join(ws, "b"), []byte("second"), 0o644)
	want := describe(t, ws)
	c := mustCheckpoint(t, s, ws, Key{Session: "s"})
	if c.NewObjects != 2 {
		t.Fatalf("%d new objects, want the file and the root manifest", c.NewObjects)
	}
	for _, h := range []string{c.ID, hash(sha256.Sum256([]byte("second"))).String()} {
		info, err := os.Stat(filepath.Join(dir, "objects", h[:2], h[2:]))
		if err != nil {
			t.Fatal(err)
		}
		if !ready[info.Sys().(*syscall.Stat_t).Ino] {
			t.Errorf("object %s is not one of the spare files", h)
		}
	}
	assertRestores(t, s, c.ID, want, "restore")

	// A spare file left half written by a crash is never used: Open
	// empties the pool.
	s.Close()
	os.WriteFile(filepath.Join(spare, "999999"), []byte("half written"), 0o600)
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n := len(inodes(t, spare)); n != 0 {
		t.Fatalf("%d spare files after Open, want 0", n)
	}
}
