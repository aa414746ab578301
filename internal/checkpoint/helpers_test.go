//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// node is what the test's own describer sees at a path: it uses only the
// os package (Lstat, ReadDir, ReadFile, Readlink), never this package.
type node struct {
	Type    string // "file", "dir", "symlink", "other"
	Mode    uint32 // permission, setuid, setgid and sticky bits
	Content string // files: hex SHA-256 and size
	Target  string // symlinks
}

// describe returns every entry under root, by path relative to root.
func describe(t testing.TB, root string) map[string]node {
	t.Helper()
	out := make(map[string]node)
	var walk func(dir, rel string)
	walk = func(dir, rel string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("describe: %v", err)
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			r := e.Name()
			if rel != "" {
				r = rel + "/" + e.Name()
			}
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil {
				t.Fatalf("describe: %v", err)
			}
			n := node{Mode: st.Mode & 0o7777}
			switch st.Mode & syscall.S_IFMT {
			case syscall.S_IFREG:
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatalf("describe: %v", err)
				}
				sum := sha256.Sum256(b)
				n.Type, n.Content = "file", fmt.Sprintf("%s/%d", hex.EncodeToString(sum[:8]), len(b))
			case syscall.S_IFDIR:
				n.Type = "dir"
				walk(p, r)
			case syscall.S_IFLNK:
				target, err := os.Readlink(p)
				if err != nil {
					t.Fatalf("describe: %v", err)
				}
				n.Type, n.Target, n.Mode = "symlink", target, 0
			default:
				n.Type = "other"
			}
			out[r] = n
		}
	}
	walk(root, "")
	return out
}

// withoutSetID is what a tree looks like after Restore: no setuid/setgid.
func withoutSetID(m map[string]node) map[string]node {
	out := make(map[string]node, len(m))
	for k, v := range m {
		v.Mode &^= 0o6000
		out[k] = v
	}
	return out
}

func hasSetID(m map[string]node) bool {
	for _, v := range m {
		if v.Mode&0o6000 != 0 {
			return true
		}
	}
	return false
}

func openStore(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func mustCheckpoint(t testing.TB, s *Store, root string, key Key) Checkpoint {
	t.Helper()
	c, err := s.Checkpoint(context.Background(), root, key)
	if err != nil {
		t.Fatalf("Checkpoint(%v): %v", key, err)
	}
	return c
}

func mustRestore(t testing.TB, s *Store, root, id string) RestoreReport {
	t.Helper()
	r, err := s.Restore(context.Background(), root, id)
	if err != nil {
		t.Fatalf("Restore(%s): %v", id, err)
	}
	return r
}

func writeFile(t testing.TB, path string, data []byte, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// objectFiles returns the store's objects and their total size, read from
// disk.
func objectFiles(t testing.TB, store string) (map[string]int64, int64) {
	t.Helper()
	out := make(map[string]int64)
	var total int64
	fans, _ := os.ReadDir(filepath.Join(store, "objects"))
	for _, f := range fans {
		ents, err := os.ReadDir(filepath.Join(store, "objects", f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			out[f.Name()+e.Name()] = info.Size()
			total += info.Size()
		}
	}
	return out, total
}

// assertTree fails unless root holds exactly want.
func assertTree(t testing.TB, root string, want map[string]node, what string) {
	t.Helper()
	if diff := cmp.Diff(want, describe(t, root)); diff != "" {
		t.Fatalf("%s: tree differs (-want +got):\n%s", what, diff)
	}
}

// assertRestores restores checkpoint id into a new directory and checks
// that it holds want.
func assertRestores(t testing.TB, s *Store, id string, want map[string]node, what string) {
	t.Helper()
	fresh := filepath.Join(t.TempDir(), "restored")
	mustRestore(t, s, fresh, id)
	assertTree(t, fresh, want, what)
}

// fastStore shortens the racy window so that tests can make the stat
// cache vouch for files written a moment ago: pause after a checkpoint
// before changing anything.
func fastStore(s *Store) (pause time.Duration) {
	s.racyWindow = 20 * time.Millisecond
	return 30 * time.Millisecond
}

func skipNames(sk []Skip) []string {
	var out []string
	for _, x := range sk {
		out = append(out, x.Path+": "+x.Reason)
	}
	return out
}
