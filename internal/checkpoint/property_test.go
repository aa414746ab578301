//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var seedFlag = flag.Uint64("checkpoint.seed", 0, "seed for the random operation sequences (0: from the clock)")

// names includes a newline, invalid UTF-8, a space and non-ASCII, and
// collides often so that operations replace each other's entries.
var names = []string{"a", "b", "c.txt", "d e", "new\nline", "\xff\xfe", "ü", "x"}

var linkTargets = []string{"a", "../x", "/etc/passwd", "/nonexistent/dir", "a/b", "\xff", "../../..", "."}

// workspaceOps applies random operations to a workspace.
type workspaceOps struct {
	t    testing.TB
	rng  *rand.Rand
	root string
	log  []string
}

// entries returns the workspace's paths (relative), optionally only of
// one type, sorted.
func (w *workspaceOps) entries(kind string) []string {
	var out []string
	for p, n := range describe(w.t, w.root) {
		if kind == "" || n.Type == kind {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func (w *workspaceOps) pick(kind string) (string, bool) {
	e := w.entries(kind)
	if len(e) == 0 {
		return "", false
	}
	return e[w.rng.IntN(len(e))], true
}

// newPath returns a fresh-or-existing path in a random existing directory.
func (w *workspaceOps) newPath() string {
	dirs := append(w.entries("dir"), "")
	d := dirs[w.rng.IntN(len(dirs))]
	n := names[w.rng.IntN(len(names))]
	if strings.Count(d, "/") >= 3 {
		d = ""
	}
	if d == "" {
		return n
	}
	return d + "/" + n
}

func (w *workspaceOps) abs(rel string) string { return filepath.Join(w.root, rel) }

func (w *workspaceOps) content() []byte {
	var n int
	switch r := w.rng.IntN(20); {
	case r == 0:
		n = 0
	case r == 1:
		n = smallFile + 1 + w.rng.IntN(100<<10) // streamed
	default:
		n = w.rng.IntN(6 << 10)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(w.rng.Uint32())
	}
	return b
}

var fileModes = []os.FileMode{0o644, 0o600, 0o755, 0o444, 0o640 | os.ModeSetuid, 0o750 | os.ModeSetgid, 0o640}
var dirModes = []os.FileMode{0o755, 0o700, 0o777 | os.ModeSticky, 0o770 | os.ModeSetgid, 0o750}

// clear removes whatever is at rel.
func (w *workspaceOps) clear(rel string) {
	if err := os.RemoveAll(w.abs(rel)); err != nil {
		w.t.Fatal(err)
	}
}

func (w *workspaceOps) step() {
	t := w.t
	ops := []func() string{
		func() string { // create or overwrite a file
			p := w.newPath()
			w.clear(p)
			writeFile(t, w.abs(p), w.content(), fileModes[w.rng.IntN(len(fileModes))])
			return "create " + p
		},
		func() string { // modify in place, same size, same inode
			p, ok := w.pick("file")
			if !ok {
				return ""
			}
			f, err := os.OpenFile(w.abs(p), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			info, _ := f.Stat()
			if info.Size() == 0 {
				f.Write([]byte{byte(w.rng.Uint32())})
				return "grow " + p
			}
			f.WriteAt([]byte{byte(w.rng.Uint32()), 0x5a}, w.rng.Int64N(info.Size()))
			return "modify " + p
		},
		func() string { // append
			p, ok := w.pick("file")
			if !ok {
				return ""
			}
			f, err := os.OpenFile(w.abs(p), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("more\n"))
			f.Close()
			return "append " + p
		},
		func() string { // delete anything
			p, ok := w.pick("")
			if !ok {
				return ""
			}
			w.clear(p)
			return "delete " + p
		},
		func() string { // rename anything
			p, ok := w.pick("")
			if !ok {
				return ""
			}
			q := w.newPath()
			if q == p || strings.HasPrefix(q, p+"/") {
				return ""
			}
			w.clear(q)
			if err := os.Rename(w.abs(p), w.abs(q)); err != nil {
				// The destination's parent may have been p itself.
				return ""
			}
			return "rename " + p + " -> " + q
		},
		func() string { // chmod a file
			p, ok := w.pick("file")
			if !ok {
				return ""
			}
			m := fileModes[w.rng.IntN(len(fileModes))]
			os.Chmod(w.abs(p), m)
			return fmt.Sprintf("chmod %v %s", m, p)
		},
		func() string { // chmod a directory
			p, ok := w.pick("dir")
			if !ok {
				return ""
			}
			m := dirModes[w.rng.IntN(len(dirModes))]
			os.Chmod(w.abs(p), m)
			return fmt.Sprintf("chmod %v %s", m, p)
		},
		func() string { // symlink, possibly replacing a file
			p := w.newPath()
			w.clear(p)
			target := linkTargets[w.rng.IntN(len(linkTargets))]
			if err := os.Symlink(target, w.abs(p)); err != nil {
				t.Fatal(err)
			}
			return "symlink " + p + " -> " + target
		},
		func() string { // hard link to a file; writes through either name change both
			p, ok := w.pick("file")
			if !ok {
				return ""
			}
			q := w.newPath()
			if q == p {
				return ""
			}
			w.clear(q)
			if err := os.Link(w.abs(p), w.abs(q)); err != nil {
				return "" // q's parent may be missing
			}
			return "link " + p + " -> " + q
		},
		func() string { // nested empty directories
			p := w.newPath() + "/" + names[w.rng.IntN(len(names))]
			if _, err := os.Lstat(w.abs(filepath.Dir(p))); err == nil {
				return "" // exists as something else, perhaps
			}
			if err := os.MkdirAll(w.abs(p), 0o755); err != nil {
				return ""
			}
			return "mkdir -p " + p
		},
		func() string { // replace a directory by a file
			p, ok := w.pick("dir")
			if !ok {
				return ""
			}
			w.clear(p)
			writeFile(t, w.abs(p), w.content(), 0o644)
			return "dir->file " + p
		},
		func() string { // replace a file by a directory with a file in it
			p, ok := w.pick("file")
			if !ok {
				return ""
			}
			w.clear(p)
			writeFile(t, w.abs(p+"/"+names[w.rng.IntN(len(names))]), w.content(), 0o600)
			return "file->dir " + p
		},
	}
	for {
		if what := ops[w.rng.IntN(len(ops))](); what != "" {
			w.log = append(w.log, what)
			return
		}
	}
}

func seed(t *testing.T) uint64 {
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -checkpoint.seed=%d)", s, s)
	return s
}

// TestRestoreReproducesEveryCheckpoint runs random sequences of file
// operations with a checkpoint after each, then restores the checkpoints
// in random order, in place and into an empty directory, and compares each
// tree with the one described independently when it was taken.
func TestRestoreReproducesEveryCheckpoint(t *testing.T) {
	steps := 60
	if testing.Short() {
		steps = 20
	}
	for _, tc := range []struct {
		name      string
		statCache bool // pause so that the stat cache vouches for old files
		fullScan  bool
	}{
		{"full scan, recent files are always read", false, true},
		{"full scan, stat cache vouches for old files", true, true},
		{"change tracking", false, false},
		{"change tracking, old files", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed(t), 7))
			s, _ := openStore(t, Options{FullScan: tc.fullScan})
			var pause time.Duration
			if tc.statCache {
				pause = fastStore(s)
			}
			ws := filepath.Join(t.TempDir(), "ws")
			os.Mkdir(ws, 0o755)
			ops := &workspaceOps{t: t, rng: rng, root: ws}
			defer func() {
				if t.Failed() {
					t.Logf("operations:\n%s", strings.Join(ops.log, "\n"))
				}
			}()
			var want []map[string]node
			var cps []Checkpoint
			hashedTotal, visitedTotal := 0, 0
			for i := range steps {
				for range 1 + rng.IntN(3) {
					ops.step()
				}
				ops.log = append(ops.log, fmt.Sprintf("-- checkpoint %d", i))
				want = append(want, describe(t, ws))
				c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: fmt.Sprint("toolu_", i)})
				if len(c.Skipped) != 0 {
					t.Fatalf("checkpoint %d skipped %v", i, skipNames(c.Skipped))
				}
				hashedTotal += c.Hashed
				visitedTotal += c.Visited
				cps = append(cps, c)
				time.Sleep(pause)
			}
			t.Logf("%d checkpoints, %d files hashed and %d directories visited in all", len(cps), hashedTotal, visitedTotal)

			order := rng.Perm(len(cps))
			order = append(order, order[:len(order)/2]...) // some twice
			for _, i := range order {
				mustRestore(t, s, ws, cps[i].ID)
				assertTree(t, ws, withoutSetID(want[i]), fmt.Sprintf("restore of checkpoint %d in place", i))
				if !hasSetID(want[i]) {
					// The restored tree checkpoints to the same id.
					time.Sleep(pause)
					again := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: fmt.Sprint("again_", i)})
					if again.ID != cps[i].ID {
						t.Fatalf("checkpoint after restoring %d: id %s, want %s", i, again.ID, cps[i].ID)
					}
				}
				if rng.IntN(4) == 0 {
					assertRestores(t, s, cps[i].ID, withoutSetID(want[i]), fmt.Sprintf("restore of checkpoint %d into a new directory", i))
				}
			}

			// The manifests agree with the trees too.
			for i, c := range cps {
				ents, err := s.Entries(context.Background(), c.ID)
				if err != nil {
					t.Fatal(err)
				}
				got := make(map[string]node)
				for _, e := range ents {
					n := node{Type: string(e.Type), Mode: uint32(e.Mode.Perm())}
					if e.Mode&os.ModeSetuid != 0 {
						n.Mode |= 0o4000
					}
					if e.Mode&os.ModeSetgid != 0 {
						n.Mode |= 0o2000
					}
					if e.Mode&os.ModeSticky != 0 {
						n.Mode |= 0o1000
					}
					switch e.Type {
					case File:
						n.Content = fmt.Sprintf("%s/%d", e.Hash[:16], e.Size)
					case Symlink:
						n.Target, n.Mode = e.Target, 0
					}
					got[e.Path] = n
				}
				if diff := cmp.Diff(want[i], got); diff != "" {
					t.Fatalf("Entries of checkpoint %d (-want +got):\n%s", i, diff)
				}
			}
		})
	}
}
