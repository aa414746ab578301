//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

func TestCheckpointReadsOnlyChangedFiles(t *testing.T) {
	s, _ := openStore(t, Options{})
	pause := fastStore(s)
	ws := t.TempDir()
	var paths []string
	for i := range 1000 {
		p := filepath.Join(ws, fmt.Sprintf("d%02d/f%03d", i/25, i))
		writeFile(t, p, fmt.Appendf(nil, "file %d\n", i), 0o644)
		paths = append(paths, p)
	}
	time.Sleep(pause)
	c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	if c.Hashed != 1000 || c.Files != 1000 || c.Dirs != 40 {
		t.Fatalf("first checkpoint: hashed %d files of %d in %d dirs, want 1000 of 1000 in 40", c.Hashed, c.Files, c.Dirs)
	}
	time.Sleep(pause)
	for i := range 10 {
		writeFile(t, paths[i*97], []byte("changed\n"), 0o644)
	}
	// Pause again, or the 10 files are too recent for the stat cache to
	// vouch for them next time (TestRacyFilesAreReadAgain).
	time.Sleep(pause)
	c = mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t2"})
	if c.Hashed != 10 {
		t.Fatalf("after changing 10 files: hashed %d, want 10", c.Hashed)
	}
	c = mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t3"})
	if c.Hashed != 0 || c.NewObjects != 0 {
		t.Fatalf("after changing nothing: hashed %d, %d new objects; want 0, 0", c.Hashed, c.NewObjects)
	}
	// Another root for the same session: the cache does not apply.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "x"), []byte("x"), 0o644)
	if c := mustCheckpoint(t, s, other, Key{Session: "s", ToolUseID: "t4"}); c.Hashed != 1 {
		t.Fatalf("other root: hashed %d, want 1", c.Hashed)
	}
}

func TestRacyFilesAreReadAgain(t *testing.T) {
	// Without change tracking, which vouches for unchanged files by the
	// absence of events instead.
	s, _ := openStore(t, Options{FullScan: true})
	s.racyWindow = 500 * time.Millisecond
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "f"), []byte("one"), 0o644)
	var got []int
	for i := range 4 {
		if i == 2 {
			time.Sleep(600 * time.Millisecond)
		}
		got = append(got, mustCheckpoint(t, s, ws, Key{Session: "s"}).Hashed)
	}
	// The file changed less than the window before checkpoints 1 and 2, so
	// their stat cannot vouch for it; checkpoint 3, long after, can.
	if want := []int{1, 1, 1, 0}; !slices.Equal(got, want) {
		t.Fatalf("files hashed per checkpoint: %v, want %v", got, want)
	}
}

func TestSessionsShareObjects(t *testing.T) {
	s, dir := openStore(t, Options{})
	a, b := t.TempDir(), t.TempDir()
	for _, ws := range []string{a, b} {
		for i := range 50 {
			writeFile(t, filepath.Join(ws, fmt.Sprintf("d%d/f%d", i%5, i)), bytes.Repeat([]byte{byte(i)}, 100+i), 0o644)
		}
		os.Symlink("d0/f0", filepath.Join(ws, "link"))
		os.Mkdir(filepath.Join(ws, "empty"), 0o700)
	}
	ca := mustCheckpoint(t, s, a, Key{Session: "a", ToolUseID: "t"})
	objs, size := objectFiles(t, dir)
	cb := mustCheckpoint(t, s, b, Key{Session: "b", ToolUseID: "t"})
	objs2, size2 := objectFiles(t, dir)
	if cb.ID != ca.ID {
		t.Errorf("equal trees have ids %s and %s", ca.ID, cb.ID)
	}
	if cb.NewObjects != 0 || cb.NewBytes != 0 || len(objs2) != len(objs) || size2 != size {
		t.Errorf("second session added %d objects (%d bytes); store went from %d objects (%d B) to %d (%d B)",
			cb.NewObjects, cb.NewBytes, len(objs), size, len(objs2), size2)
	}
	// 50 contents + 7 manifests (root, d0..d4, empty).
	if len(objs) != 57 {
		t.Errorf("store holds %d objects, want 57", len(objs))
	}
}

func TestStoreGrowsByWhatChanged(t *testing.T) {
	s, dir := openStore(t, Options{})
	ws := t.TempDir()
	var paths []string
	var wsBytes int64
	for i := range 2000 {
		p := filepath.Join(ws, fmt.Sprintf("m%d/p%02d/f%03d.txt", i/500, (i/25)%20, i))
		data := bytes.Repeat(fmt.Appendf(nil, "line %d of file %d\n", i, i), 80)
		writeFile(t, p, data, 0o644)
		paths = append(paths, p)
		wsBytes += int64(len(data))
	}
	mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	_, before := objectFiles(t, dir)
	var changed int64
	for i := range 10 {
		data := bytes.Repeat(fmt.Appendf(nil, "new line %d\n", i), 400)
		writeFile(t, paths[i*199], data, 0o644)
		changed += int64(len(data))
	}
	c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t2"})
	_, after := objectFiles(t, dir)
	growth := after - before
	t.Logf("workspace %d B; changed %d B; store grew %d B (%.2fx)", wsBytes, changed, growth, float64(growth)/float64(changed))
	if growth != c.NewBytes {
		t.Errorf("NewBytes = %d, but the objects grew by %d", c.NewBytes, growth)
	}
	// The changed contents, plus one manifest per directory on the path
	// to each change (10 leaves of 25 entries, 10 of 20, 4 of 20, root).
	if growth < changed || growth > changed+24<<10 {
		t.Errorf("store grew %d bytes for %d bytes changed, want between them and %d", growth, changed, changed+24<<10)
	}
}

func TestHostileWorkspace(t *testing.T) {
	t.Run("symlinks are recorded as links and never followed", func(t *testing.T) {
		s, dir := openStore(t, Options{})
		outside := t.TempDir()
		secret := []byte("outside secret 8f3a9c")
		writeFile(t, filepath.Join(outside, "secret"), secret, 0o644)
		ws := t.TempDir()
		writeFile(t, filepath.Join(ws, "a"), []byte("a"), 0o644)
		for name, target := range map[string]string{
			"dir": outside, "file": filepath.Join(outside, "secret"), "up": "../../../..", "loop": "loop", "dangling": "nope",
		} {
			if err := os.Symlink(target, filepath.Join(ws, name)); err != nil {
				t.Fatal(err)
			}
		}
		c := mustCheckpoint(t, s, ws, Key{Session: "s"})
		if c.Hashed != 1 || c.Files != 1 || c.Symlinks != 5 {
			t.Fatalf("hashed %d, files %d, symlinks %d; want 1, 1, 5", c.Hashed, c.Files, c.Symlinks)
		}
		objs, _ := objectFiles(t, dir)
		for name := range objs {
			b, _ := os.ReadFile(filepath.Join(dir, "objects", name[:2], name[2:]))
			if bytes.Contains(b, secret) {
				t.Fatalf("object %s holds the content of a file outside the workspace", name)
			}
		}
		assertRestores(t, s, c.ID, describe(t, ws), "restore")
	})

	t.Run("special files are skipped with a reason", func(t *testing.T) {
		s, _ := openStore(t, Options{})
		ws := t.TempDir()
		writeFile(t, filepath.Join(ws, "keep"), []byte("k"), 0o644)
		if err := mkfifo(filepath.Join(ws, "fifo\n\xff")); err != nil {
			t.Fatal(err)
		}
		closeSock, err := unixSocket(filepath.Join(ws, "sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer closeSock()
		want := []string{"fifo\n\xff: " + ReasonFIFO, "sock: " + ReasonSocket}
		err = mknodNull(filepath.Join(ws, "null"))
		testenv.Need(t, err == nil, fmt.Sprintf("root, to make a device node (mknod: %v)", err))
		want = append(want, "null: "+ReasonCharDevice)
		slices.Sort(want)
		c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t"})
		if diff := cmp.Diff(want, skipNames(c.Skipped)); diff != "" {
			t.Fatalf("Skipped (-want +got):\n%s", diff)
		}
		if c.Files != 1 {
			t.Fatalf("files %d, want 1", c.Files)
		}
		// The index keeps the skipped paths byte for byte.
		list, err := s.List("s")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, skipNames(list[0].Skipped)); diff != "" {
			t.Fatalf("List: Skipped (-want +got):\n%s", diff)
		}
		// Restoring removes them: the tree is exactly the checkpoint.
		mustRestore(t, s, ws, c.ID)
		assertTree(t, ws, map[string]node{"keep": {Type: "file", Mode: 0o644, Content: describe(t, ws)["keep"].Content}}, "restore")
	})

	// The writer overwrites the file in place, front to back, with version
	// after version of a repeated byte. At any instant the file is a run of
	// version v+1 followed by a run of v (byte values modulo 256). A read
	// that the writer overtakes sees something else: v then v+1, or more
	// than one boundary.
	instantState := func(b []byte) bool {
		boundaries := 0
		for i := 1; i < len(b); i++ {
			switch b[i-1] - b[i] {
			case 0:
			case 1:
				boundaries++
			default:
				return false
			}
		}
		return boundaries <= 1
	}
	t.Run("a file written while it is read is never recorded torn", func(t *testing.T) {
		for _, size := range []int{64 << 10, 2 << 20} {
			t.Run(fmt.Sprint(size), func(t *testing.T) {
				s, dir := openStore(t, Options{NoSync: true})
				ws := t.TempDir()
				p := filepath.Join(ws, "hot")
				writeFile(t, p, bytes.Repeat([]byte{0}, size), 0o644)
				stop := make(chan struct{})
				var wg sync.WaitGroup
				wg.Go(func() {
					f, err := os.OpenFile(p, os.O_WRONLY, 0)
					if err != nil {
						t.Error(err)
						return
					}
					defer f.Close()
					block := make([]byte, 4096)
					for v := 1; ; v++ {
						for i := range block {
							block[i] = byte(v)
						}
						for off := 0; off < size; off += len(block) {
							select {
							case <-stop:
								return
							default:
							}
							f.WriteAt(block, int64(off))
						}
					}
				})
				recorded, skipped := 0, 0
				for i := range 40 {
					c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: fmt.Sprint(i)})
					if len(c.Skipped) == 1 && c.Skipped[0] == (Skip{Path: "hot", Reason: ReasonChanged}) {
						skipped++
						continue
					}
					ents, err := s.Entries(context.Background(), c.ID)
					if err != nil || len(ents) != 1 {
						t.Fatalf("entries %v, %v", ents, err)
					}
					b, err := os.ReadFile(filepath.Join(dir, "objects", ents[0].Hash[:2], ents[0].Hash[2:]))
					if err != nil {
						t.Fatal(err)
					}
					if len(b) != size || !instantState(b) {
						t.Fatalf("checkpoint %d recorded a torn file: %d bytes, first %d, last %d", i, len(b), b[0], b[len(b)-1])
					}
					recorded++
				}
				close(stop)
				wg.Wait()
				t.Logf("%d consistent versions recorded, %d skipped as changing", recorded, skipped)
			})
		}
	})

	t.Run("large files are streamed", func(t *testing.T) {
		if testing.Short() {
			t.Skip("writes 64 MiB three times")
		}
		s, _ := openStore(t, Options{NoSync: true})
		ws := t.TempDir()
		f, err := os.Create(filepath.Join(ws, "big"))
		if err != nil {
			t.Fatal(err)
		}
		block := make([]byte, 1<<20)
		for i := range 64 {
			for j := range block {
				block[j] = byte(i*7 + j*13)
			}
			f.Write(block)
		}
		f.Close()
		alloc := func(fn func()) uint64 {
			var a, b runtime.MemStats
			runtime.ReadMemStats(&a)
			fn()
			runtime.ReadMemStats(&b)
			return b.TotalAlloc - a.TotalAlloc
		}
		var c Checkpoint
		if n := alloc(func() { c = mustCheckpoint(t, s, ws, Key{Session: "s"}) }); n > 8<<20 {
			t.Errorf("checkpoint of a 64 MiB file allocated %d MiB", n>>20)
		}
		want := describe(t, ws)
		fresh := filepath.Join(t.TempDir(), "r")
		if n := alloc(func() { mustRestore(t, s, fresh, c.ID) }); n > 8<<20 {
			t.Errorf("restore of a 64 MiB file allocated %d MiB", n>>20)
		}
		assertTree(t, fresh, want, "restore")
	})

	t.Run("directories nested too deep are skipped", func(t *testing.T) {
		s, _ := openStore(t, Options{NoSync: true})
		ws := t.TempDir()
		p := ws
		for range maxDepth + 3 {
			p = filepath.Join(p, "d")
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		c := mustCheckpoint(t, s, ws, Key{Session: "s"})
		deep := strings.Repeat("d/", maxDepth) + "d"
		if diff := cmp.Diff([]string{deep + ": " + ReasonTooDeep}, skipNames(c.Skipped)); diff != "" {
			t.Fatalf("Skipped (-want +got):\n%s", diff)
		}
		mustRestore(t, s, ws, c.ID)
		if _, err := os.Lstat(filepath.Join(ws, deep)); !os.IsNotExist(err) {
			t.Fatalf("restore left the skipped directory: %v", err)
		}
	})

	t.Run("a sparse file is skipped, not stored hole by hole", func(t *testing.T) {
		s, store := openStore(t, Options{NoSync: true})
		ws := t.TempDir()
		f, err := os.Create(filepath.Join(ws, "sparse"))
		if err == nil {
			_, err = f.WriteAt([]byte("x"), 1<<40-1) // a terabyte that holds a block
		}
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(ws, "dense"), bytes.Repeat([]byte("d"), sparseMinSize+1), 0o644)
		c := mustCheckpoint(t, s, ws, Key{Session: "s"})
		if diff := cmp.Diff([]string{"sparse: " + ReasonSparse}, skipNames(c.Skipped)); diff != "" {
			t.Errorf("Skipped (-want +got):\n%s", diff)
		}
		if c.Files != 1 || c.NewBytes > 2*sparseMinSize {
			t.Errorf("recorded %d files, %d new bytes; want the dense file alone", c.Files, c.NewBytes)
		}
		var used int64
		filepath.WalkDir(store, func(_ string, d fs.DirEntry, err error) error {
			if info, ierr := d.Info(); err == nil && ierr == nil && !d.IsDir() {
				used += info.Size()
			}
			return nil
		})
		if used > 2*sparseMinSize {
			t.Errorf("the store holds %d bytes", used)
		}
	})

	t.Run("a chain deeper than remove descends at once is removed", func(t *testing.T) {
		s, _ := openStore(t, Options{NoSync: true})
		ws := t.TempDir()
		writeFile(t, filepath.Join(ws, "kept"), []byte("good"), 0o644)
		c := mustCheckpoint(t, s, ws, Key{Session: "s"})
		writeFile(t, filepath.Join(ws, "kept"), []byte("evil"), 0o644)
		// Deeper than any path can name: built a level at a time.
		fd, err := syscall.Open(ws, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		for range maxRemoveDepth + 50 {
			if err != nil {
				break
			}
			if err = syscall.Mkdirat(fd, "d", 0o755); err == nil {
				var next int
				next, err = syscall.Openat(fd, "d", syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
				syscall.Close(fd)
				fd = next
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		syscall.Close(fd)
		rep := mustRestore(t, s, ws, c.ID)
		if b, _ := os.ReadFile(filepath.Join(ws, "kept")); string(b) != "good" {
			t.Errorf("kept = %q after the restore", b)
		}
		if names, _ := os.ReadDir(ws); len(names) != 1 || rep.Removed != maxRemoveDepth+50 {
			t.Errorf("after the restore the workspace holds %v; %d removed, want %d", names, rep.Removed, maxRemoveDepth+50)
		}
	})

	t.Run("other file systems are skipped", func(t *testing.T) {
		s, _ := openStore(t, Options{NoSync: true})
		ws := t.TempDir()
		mnt := filepath.Join(ws, "mnt")
		os.Mkdir(mnt, 0o755)
		unmount, err := mountTmpfs(mnt)
		testenv.Need(t, err == nil, fmt.Sprintf("root, to mount a tmpfs (%v)", err))
		defer unmount()
		writeFile(t, filepath.Join(mnt, "f"), []byte("x"), 0o644)
		c := mustCheckpoint(t, s, ws, Key{Session: "s"})
		if diff := cmp.Diff([]string{"mnt: " + ReasonMount}, skipNames(c.Skipped)); diff != "" {
			t.Fatalf("Skipped (-want +got):\n%s", diff)
		}
	})
}

// TestRestoreNeverFollowsPlantedSymlinks replaces parts of a checkpointed
// workspace with symlinks to a directory outside it, as a sandbox could,
// and checks that Restore puts the workspace back without changing
// anything outside.
func TestRestoreNeverFollowsPlantedSymlinks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, ws, outside string)
	}{
		{"directory replaced by a link to a directory outside", func(t *testing.T, ws, outside string) {
			os.RemoveAll(filepath.Join(ws, "dir"))
			os.Symlink(outside, filepath.Join(ws, "dir"))
		}},
		{"nested directory replaced by a link to a directory outside", func(t *testing.T, ws, outside string) {
			os.RemoveAll(filepath.Join(ws, "dir/sub"))
			os.Symlink(outside, filepath.Join(ws, "dir/sub"))
		}},
		{"file replaced by a link to a file outside", func(t *testing.T, ws, outside string) {
			os.Remove(filepath.Join(ws, "dir/file"))
			os.Symlink(filepath.Join(outside, "file"), filepath.Join(ws, "dir/file"))
		}},
		{"extra link to a directory outside", func(t *testing.T, ws, outside string) {
			os.Symlink(outside, filepath.Join(ws, "extra"))
		}},
		{"extra directory holding a link to a directory outside", func(t *testing.T, ws, outside string) {
			os.Mkdir(filepath.Join(ws, "extra"), 0o755)
			os.Symlink(outside, filepath.Join(ws, "extra/link"))
			os.Symlink("/", filepath.Join(ws, "extra/root"))
		}},
		{"directory replaced by a relative link climbing out", func(t *testing.T, ws, outside string) {
			os.RemoveAll(filepath.Join(ws, "dir"))
			rel, _ := filepath.Rel(ws, outside)
			os.Symlink(rel, filepath.Join(ws, "dir"))
		}},
		{"directory replaced by a link to another directory inside", func(t *testing.T, ws, outside string) {
			os.RemoveAll(filepath.Join(ws, "dir"))
			os.Symlink("other", filepath.Join(ws, "dir"))
		}},
		{"link recorded in the checkpoint replaced by a directory", func(t *testing.T, ws, outside string) {
			os.Remove(filepath.Join(ws, "link"))
			os.Mkdir(filepath.Join(ws, "link"), 0o755)
			writeFile(t, filepath.Join(ws, "link/file"), []byte("planted"), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openStore(t, Options{NoSync: true})
			outside := t.TempDir()
			// The outside directory holds the same names as the workspace,
			// so that a write through a link would land on something.
			for _, p := range []string{"file", "sub/file", "sub/deeper/file", "other/x"} {
				writeFile(t, filepath.Join(outside, p), []byte("outside "+p), 0o644)
			}
			ws := t.TempDir()
			writeFile(t, filepath.Join(ws, "dir/file"), []byte("inside file"), 0o600)
			writeFile(t, filepath.Join(ws, "dir/sub/file"), []byte("inside sub/file"), 0o640)
			writeFile(t, filepath.Join(ws, "dir/sub/deeper/file"), []byte("deeper"), 0o644)
			writeFile(t, filepath.Join(ws, "other/x"), []byte("x"), 0o644)
			os.Symlink(outside, filepath.Join(ws, "link"))
			want := describe(t, ws)
			c := mustCheckpoint(t, s, ws, Key{Session: "s"})

			tc.plant(t, ws, outside)
			before := describe(t, outside)
			mustRestore(t, s, ws, c.ID)
			assertTree(t, outside, before, "the directory outside the workspace")
			assertTree(t, ws, want, "the workspace")
		})
	}
}

// countdownCtx is cancelled at its n-th Err call: a checkpoint interrupted
// at any of the points where it looks at its context.
type countdownCtx struct {
	context.Context
	n atomic.Int64
}

func (c *countdownCtx) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestCancelledCheckpointLeavesStoreConsistent(t *testing.T) {
	s, dir := openStore(t, Options{})
	ws := t.TempDir()
	for i := range 200 {
		writeFile(t, filepath.Join(ws, fmt.Sprintf("d%d/f%d", i%20, i)), fmt.Appendf(nil, "v1 %d", i), 0o644)
	}
	writeFile(t, filepath.Join(ws, "big"), bytes.Repeat([]byte("big v1 "), 200000), 0o644)
	want0 := describe(t, ws)
	c0 := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t0"})

	for i := range 200 {
		writeFile(t, filepath.Join(ws, fmt.Sprintf("d%d/f%d", i%20, i)), fmt.Appendf(nil, "v2 %d", i), 0o644)
	}
	writeFile(t, filepath.Join(ws, "big"), bytes.Repeat([]byte("big v2 "), 200000), 0o644)
	want1 := describe(t, ws)
	objs0, _ := objectFiles(t, dir)
	var c1 Checkpoint
	interrupted := 0
	for n := int64(0); ; n++ {
		ctx := &countdownCtx{Context: context.Background()}
		ctx.n.Store(n)
		c, err := s.Checkpoint(ctx, ws, Key{Session: "s", ToolUseID: "t1"})
		if err == nil {
			c1 = c
			break
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted at check %d: %v", n, err)
		}
		interrupted++
		// Nothing of the interrupted checkpoint is left.
		objs, _ := objectFiles(t, dir)
		if diff := cmp.Diff(objs0, objs); diff != "" {
			t.Fatalf("interrupted at check %d: objects changed (-before +after):\n%s", n, diff)
		}
		if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
			t.Fatalf("interrupted at check %d: %d temporary files left", n, len(tmp))
		}
		if list, _ := s.List("s"); len(list) != 1 {
			t.Fatalf("interrupted at check %d: %d checkpoints listed, want 1", n, len(list))
		}
	}
	t.Logf("interrupted %d times before completing", interrupted)
	if interrupted < 3 {
		t.Fatalf("only %d interruption points", interrupted)
	}
	for _, tc := range []struct {
		c    Checkpoint
		want map[string]node
	}{{c0, want0}, {c1, want1}} {
		assertRestores(t, s, tc.c.ID, tc.want, "restore of "+tc.c.ToolUseID)
	}

	// A crash instead leaves temporary files and unreferenced objects:
	// Open removes the first, Prune the second.
	os.WriteFile(filepath.Join(dir, "tmp", "obj-123"), []byte("partial"), 0o600)
	orphan := filepath.Join(dir, "objects", "00", strings.Repeat("0", 62))
	os.MkdirAll(filepath.Dir(orphan), 0o700)
	os.WriteFile(orphan, []byte("orphan"), 0o600)
	s.Close()
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("Open left %d temporary files", len(tmp))
	}
	rep, err := s2.Prune(context.Background(), Retention{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ObjectsRemoved != 1 || rep.Removed != 0 {
		t.Fatalf("Prune: %+v, want 1 object and no checkpoint removed", rep)
	}
	assertRestores(t, s2, c1.ID, want1, "restore after Prune")
}

func TestIndexSurvivesTornAppend(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	for i := range 2 {
		writeFile(t, filepath.Join(ws, "f"), fmt.Appendf(nil, "%d", i), 0o644)
		mustCheckpoint(t, s, ws, Key{Session: "sess\xff", ToolUseID: fmt.Sprint("toolu_\n", i)})
	}
	idx := s.indexPath("sess\xff")
	s.Close()
	for _, torn := range []string{`{"seq":77,"time_unix_nano":17`, "\x00\x00\x00\x00\n\x00\x00"} {
		f, err := os.OpenFile(idx, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(torn)
		f.Close()
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		list, err := s.List("sess\xff")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) < 2 || list[1].ToolUseID != "toolu_\n1" {
			t.Fatalf("after a torn append %q: %d checkpoints: %+v", torn, len(list), list)
		}
		c := mustCheckpoint(t, s, ws, Key{Session: "sess\xff", ToolUseID: "next"})
		if c.Seq != int64(len(list))+1 {
			t.Fatalf("seq %d after %d checkpoints", c.Seq, len(list))
		}
		s.Close()
		data, _ := os.ReadFile(idx)
		if bytes.Contains(data, []byte(torn)) || !bytes.HasSuffix(data, []byte("}\n")) {
			t.Fatalf("the torn append is still in the index:\n%q", data)
		}
	}
}

func TestOpenLocksStore(t *testing.T) {
	s, dir := openStore(t, Options{})
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	if _, err := s.Checkpoint(context.Background(), t.TempDir(), Key{Session: "s"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Checkpoint after Close: %v, want ErrClosed", err)
	}
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestBeforeFindsTheCheckpointOfAToolCall(t *testing.T) {
	s, _ := openStore(t, Options{})
	ws := t.TempDir()
	var ids []string
	for i, tool := range []string{"toolu_1", "toolu_2", "toolu_2", "toolu_3"} {
		writeFile(t, filepath.Join(ws, "f"), fmt.Appendf(nil, "%d", i), 0o644)
		ids = append(ids, mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: tool}).ID)
	}
	c, err := s.Before("s", "toolu_2")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != ids[1] || c.Seq != 2 {
		t.Fatalf("Before(toolu_2) = seq %d %s, want seq 2 %s", c.Seq, c.ID, ids[1])
	}
	if _, err := s.Before("s", "toolu_9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Before(unknown): %v, want ErrNotFound", err)
	}
	list, err := s.List("s")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for _, c := range list {
		seqs = append(seqs, c.Seq)
	}
	if !slices.Equal(seqs, []int64{1, 2, 3, 4}) {
		t.Fatalf("List seqs %v", seqs)
	}
	if list, _ := s.List("nobody"); len(list) != 0 {
		t.Fatalf("List of an unknown session: %v", list)
	}
	if _, err := s.Restore(context.Background(), ws, strings.Repeat("ab", 32)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Restore(unknown id): %v, want ErrNotFound", err)
	}
}

func TestDiff(t *testing.T) {
	s, _ := openStore(t, Options{})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "same"), []byte("same"), 0o644)
	writeFile(t, filepath.Join(ws, "gone"), []byte("gone"), 0o644)
	writeFile(t, filepath.Join(ws, "edit"), []byte("old"), 0o644)
	writeFile(t, filepath.Join(ws, "chmod"), []byte("x"), 0o644)
	writeFile(t, filepath.Join(ws, "becomes/dir"), []byte("x"), 0o644)
	writeFile(t, filepath.Join(ws, "tree/a"), []byte("a"), 0o644)
	writeFile(t, filepath.Join(ws, "tree/b"), []byte("b"), 0o644)
	os.Symlink("one", filepath.Join(ws, "link"))
	from := mustCheckpoint(t, s, ws, Key{Session: "s"})

	os.Remove(filepath.Join(ws, "gone"))
	writeFile(t, filepath.Join(ws, "edit"), []byte("new"), 0o644)
	os.Chmod(filepath.Join(ws, "chmod"), 0o600)
	os.RemoveAll(filepath.Join(ws, "becomes"))
	writeFile(t, filepath.Join(ws, "becomes"), []byte("file now"), 0o644)
	writeFile(t, filepath.Join(ws, "tree/b"), []byte("b2"), 0o644)
	writeFile(t, filepath.Join(ws, "new/sub/f"), []byte("f"), 0o644)
	os.Remove(filepath.Join(ws, "link"))
	os.Symlink("two", filepath.Join(ws, "link"))
	to := mustCheckpoint(t, s, ws, Key{Session: "s"})

	changes, err := s.Diff(context.Background(), from.ID, to.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, fmt.Sprintf("%s %s", c.Kind, c.Path))
	}
	want := []string{
		"type becomes", "removed becomes/dir", "mode chmod", "modified edit", "removed gone",
		"modified link", "added new", "added new/sub", "added new/sub/f", "modified tree/b",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Diff (-want +got):\n%s", diff)
	}
	if none, err := s.Diff(context.Background(), to.ID, to.ID); err != nil || len(none) != 0 {
		t.Fatalf("Diff of a checkpoint with itself: %v, %v", none, err)
	}
}

func TestPrune(t *testing.T) {
	type taken struct {
		c    Checkpoint
		want map[string]node
	}
	// setup takes 5 checkpoints in each of 2 sessions, an hour apart: a's
	// first, then b's. Checkpoint i of each holds one file of 1000*i bytes,
	// its own.
	setup := func(t *testing.T) (*Store, string, *atomic.Int64, map[string]taken) {
		var now atomic.Int64
		now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
		s, dir := openStore(t, Options{Clock: func() time.Time { return time.Unix(0, now.Load()) }})
		all := make(map[string]taken)
		for _, sess := range []string{"a", "b"} {
			ws := t.TempDir()
			for i := range 5 {
				writeFile(t, filepath.Join(ws, "f"), bytes.Repeat(fmt.Appendf(nil, "%s%d", sess, i), 500*(i+1)), 0o644)
				c := mustCheckpoint(t, s, ws, Key{Session: sess, ToolUseID: fmt.Sprint(i)})
				all[c.ID] = taken{c, describe(t, ws)}
				now.Add(int64(time.Hour))
			}
		}
		// Without this, the caches of both sessions keep their latest
		// objects whatever the retention.
		s.Forget("a")
		s.Forget("b")
		return s, dir, &now, all
	}
	check := func(t *testing.T, s *Store, dir string, all map[string]taken, wantKept map[string][]int64) {
		t.Helper()
		referenced := make(map[string]bool)
		for sess, seqs := range wantKept {
			list, err := s.List(sess)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, c := range list {
				got = append(got, c.Seq)
				assertRestores(t, s, c.ID, all[c.ID].want, fmt.Sprintf("restore of %s/%d", sess, c.Seq))
				ents, err := s.Entries(context.Background(), c.ID)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ents {
					referenced[e.Hash] = true
				}
			}
			if !slices.Equal(got, seqs) {
				t.Fatalf("session %s keeps %v, want %v", sess, got, seqs)
			}
		}
		// Every content object left is referenced; the rest are manifests.
		objs, _ := objectFiles(t, dir)
		for name := range objs {
			b, _ := os.ReadFile(filepath.Join(dir, "objects", name[:2], name[2:]))
			if !referenced[name] && !bytes.HasPrefix(b, []byte(manifestMagic)) {
				t.Fatalf("object %s (%d bytes) is referenced by no checkpoint", name, len(b))
			}
		}
	}
	t.Run("by count", func(t *testing.T) {
		s, dir, _, all := setup(t)
		rep, err := s.Prune(context.Background(), Retention{MaxCount: 2})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Removed != 6 || rep.Kept != 4 || rep.ObjectsRemoved == 0 {
			t.Fatalf("%+v", rep)
		}
		check(t, s, dir, all, map[string][]int64{"a": {4, 5}, "b": {4, 5}})
	})
	t.Run("by age", func(t *testing.T) {
		s, dir, _, all := setup(t)
		// Now is 10 h after the first: a's are 10 to 6 h old, b's 5 to 1.
		if _, err := s.Prune(context.Background(), Retention{MaxAge: 5*time.Hour + time.Minute}); err != nil {
			t.Fatal(err)
		}
		check(t, s, dir, all, map[string][]int64{"a": nil, "b": {1, 2, 3, 4, 5}})
		if _, err := s.Prune(context.Background(), Retention{MaxAge: 3*time.Hour + time.Minute}); err != nil {
			t.Fatal(err)
		}
		check(t, s, dir, all, map[string][]int64{"a": nil, "b": {3, 4, 5}})
	})
	t.Run("by bytes", func(t *testing.T) {
		s, dir, _, all := setup(t)
		// Each checkpoint is its file (1000*seq bytes) and a manifest of
		// 45 bytes. The newest of each session are exempt (2*5045 bytes);
		// then, newest first, b/4 (4045), b/3, b/2 (19225 in all) fit in
		// 20000, and b/1 (1045) does not: it and all older ones go.
		rep, err := s.Prune(context.Background(), Retention{MaxBytes: 20000})
		if err != nil {
			t.Fatal(err)
		}
		check(t, s, dir, all, map[string][]int64{"a": {5}, "b": {2, 3, 4, 5}})
		if rep.Bytes != 19225 || rep.Removed != 5 {
			t.Fatalf("%+v, want 19225 bytes left and 5 checkpoints removed", rep)
		}
		_, onDisk := objectFiles(t, dir)
		if onDisk != rep.Bytes {
			t.Fatalf("report says %d bytes left, disk holds %d", rep.Bytes, onDisk)
		}
	})
}

// TestPruneRacesCheckpoints prunes while two sessions take checkpoints;
// every checkpoint that remains must restore.
func TestPruneRacesCheckpoints(t *testing.T) {
	s, _ := openStore(t, Options{NoSync: true})
	var mu sync.Mutex
	want := make(map[string]map[string]node)
	var wg sync.WaitGroup
	for _, sess := range []string{"a", "b"} {
		wg.Go(func() {
			ws := t.TempDir()
			for i := range 25 {
				writeFile(t, filepath.Join(ws, fmt.Sprintf("d%d/f%d", i%3, i%7)), fmt.Appendf(nil, "%s %d", sess, i), 0o644)
				if i%5 == 0 {
					os.RemoveAll(filepath.Join(ws, fmt.Sprintf("d%d", i%3)))
				}
				d := describe(t, ws)
				c, err := s.Checkpoint(context.Background(), ws, Key{Session: sess, ToolUseID: fmt.Sprint(i)})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[c.ID] = d
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := s.Prune(context.Background(), Retention{MaxCount: 2}); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	for _, sess := range []string{"a", "b"} {
		list, _ := s.List(sess)
		for _, c := range list {
			assertRestores(t, s, c.ID, want[c.ID], fmt.Sprintf("restore of %s/%d", sess, c.Seq))
		}
	}
}

func TestStatCachesStayWithinBudget(t *testing.T) {
	s, _ := openStore(t, Options{CacheEntries: 150})
	pause := fastStore(s)
	var roots []string
	for i := range 3 {
		ws := t.TempDir()
		for j := range 60 {
			writeFile(t, filepath.Join(ws, fmt.Sprint(j)), fmt.Appendf(nil, "%d %d", i, j), 0o644)
		}
		roots = append(roots, ws)
	}
	time.Sleep(pause)
	for i, ws := range roots {
		mustCheckpoint(t, s, ws, Key{Session: fmt.Sprint(i)})
	}
	// 3 caches of 60 entries exceed 150: the least recently used one, of
	// session 0, was dropped; sessions 1 and 2 kept theirs.
	time.Sleep(pause)
	var hashed []int
	for _, i := range []int{2, 1, 0} {
		hashed = append(hashed, mustCheckpoint(t, s, roots[i], Key{Session: fmt.Sprint(i)}).Hashed)
	}
	if want := []int{0, 0, 60}; !slices.Equal(hashed, want) {
		t.Fatalf("files hashed by sessions 2, 1, 0: %v, want %v", hashed, want)
	}
}

// A session's first checkpoint of a workspace another session has
// checkpointed (as when a workspace is saved under its persistence key)
// reads only what changed since, like that session's next one would.
func TestAFirstCheckpointBorrowsTheStatCacheOfItsRoot(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("full scan=%v", full), func(t *testing.T) {
			s, _ := openStore(t, Options{FullScan: full})
			pause := fastStore(s)
			ws, paths := benchWorkspace(t, 300)
			time.Sleep(pause)
			mustCheckpoint(t, s, ws, Key{Session: "live", ToolUseID: "t0"})
			writeFile(t, paths[7], []byte("changed"), 0o644)
			time.Sleep(pause)
			want := describe(t, ws)
			c := mustCheckpoint(t, s, ws, Key{Session: "persist:p", ToolUseID: "save"})
			if c.Hashed != 1 {
				t.Fatalf("hashed %d files, want the 1 that changed", c.Hashed)
			}
			assertRestores(t, s, c.ID, want, "the borrowing checkpoint")
		})
	}
}

// A checkpoint's index line is made durable only after its objects and
// their directory entries are, so that a crash of the machine at any point
// leaves every recorded checkpoint complete.
func TestACheckpointIsRecordedOnlyOnceItsObjectsAreDurable(t *testing.T) {
	s, dir := openStore(t, Options{})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "a"), []byte("one"), 0o644)
	mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
	before, _ := objectFiles(t, dir)

	var mu sync.Mutex
	var synced []string
	testHookFsynced = func(p string) {
		mu.Lock()
		synced = append(synced, p)
		mu.Unlock()
	}
	defer func() { testHookFsynced = nil }()
	writeFile(t, filepath.Join(ws, "b"), []byte("two"), 0o644)
	writeFile(t, filepath.Join(ws, "d", "c"), []byte("three"), 0o644)
	c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	testHookFsynced = nil

	after, _ := objectFiles(t, dir)
	newDirs := map[string]bool{}
	for name := range after {
		if _, ok := before[name]; !ok {
			newDirs[filepath.Join(dir, "objects", name[:2])] = true
		}
	}
	if len(newDirs) == 0 || c.NewObjects != 4 {
		t.Fatalf("%d new objects in %d directories; want 4 (b, c, the root and d manifests)", c.NewObjects, len(newDirs))
	}
	at := func(p string) int { return slices.Index(synced, p) }
	index := at(s.indexPath("s"))
	if index != len(synced)-1 {
		t.Fatalf("the index is not the last thing fsynced: %q", synced)
	}
	firstDir := len(synced)
	for d := range newDirs {
		i := at(d)
		if i < 0 || i > index {
			t.Fatalf("object directory %s fsynced at %d, index at %d: %q", d, i, index, synced)
		}
		firstDir = min(firstDir, i)
	}
	// The objects' own files, before any rename is made durable.
	if firstDir < c.NewObjects {
		t.Fatalf("%d files fsynced before the first object directory, want the %d objects: %q", firstDir, c.NewObjects, synced)
	}
}

// A checkpoint of a workspace waits for a restore of it under way, and
// the other way round, so that neither sees the other half done.
func TestCheckpointAndRestoreOfOneWorkspaceTakeTurns(t *testing.T) {
	s, _ := openStore(t, Options{NoSync: true})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "f"), []byte("one"), 0o644)
	c := mustCheckpoint(t, s, ws, Key{Session: "s"})
	for _, op := range []struct {
		name string
		run  func() error
	}{
		{"checkpoint", func() error { _, err := s.Checkpoint(context.Background(), ws, Key{Session: "s"}); return err }},
		{"restore", func() error { _, err := s.Restore(context.Background(), ws, c.ID); return err }},
	} {
		// What the other operation holds while it works.
		busy := s.rootLock(filepath.Clean(ws))
		busy.Lock()
		done := make(chan error, 1)
		go func() { done <- op.run() }()
		select {
		case err := <-done:
			busy.Unlock()
			t.Fatalf("%s ran while the workspace was busy: %v", op.name, err)
		case <-time.After(100 * time.Millisecond):
		}
		busy.Unlock()
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
	}
}

// A listing can return a name twice when the name is removed and created
// again between two getdents(2) calls of a large directory: btrfs, XFS and
// tmpfs before Linux 6.6 list by an offset that the new entry takes anew.
// The checkpoint records the name once, so that it can be restored.
func TestANameListedTwiceIsRecordedOnce(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("full scan=%v", full), func(t *testing.T) {
			s, _ := openStore(t, Options{FullScan: full})
			ws := t.TempDir()
			writeFile(t, filepath.Join(ws, "a"), []byte("a"), 0o644)
			writeFile(t, filepath.Join(ws, "d", "f"), []byte("f"), 0o644)
			want := describe(t, ws)
			testHookListed = func(rel string, names []string) []string {
				return append(names, names...)
			}
			defer func() { testHookListed = nil }()
			c := mustCheckpoint(t, s, ws, Key{Session: "s"})
			testHookListed = nil
			if c.Files != 2 || c.Dirs != 1 {
				t.Fatalf("recorded %d files and %d directories, want 2 and 1", c.Files, c.Dirs)
			}
			assertRestores(t, s, c.ID, want, "restore")
			if _, err := s.Prune(context.Background(), Retention{}); err != nil {
				t.Fatalf("Prune: %v", err)
			}
		})
	}
}

// A session that makes more files than the store allows gets no
// checkpoint, whether the new files are in directories the checkpoint
// lists or next to ones it keeps from the last checkpoint; with fewer
// again, checkpoints resume.
func TestAWorkspaceOverMaxEntriesIsNotCheckpointed(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("full scan=%v", full), func(t *testing.T) {
			s, _ := openStore(t, Options{FullScan: full, MaxEntries: 50})
			if !full {
				if err := s.ChangeTracking(); err != nil {
					t.Fatal(err)
				}
			}
			ws := t.TempDir()
			files := func(dir string, from, to int) {
				for i := from; i < to; i++ {
					writeFile(t, filepath.Join(ws, dir, fmt.Sprintf("f%03d", i)), []byte("x"), 0o644)
				}
			}
			files("a", 0, 30)
			files("b", 0, 15)
			c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t1"}) // 47 entries
			if c.Files != 45 || c.Dirs != 2 {
				t.Fatalf("recorded %d files and %d directories, want 45 and 2", c.Files, c.Dirs)
			}
			want := describe(t, ws)

			// a is unchanged and kept from the last checkpoint; b grows.
			files("b", 15, 25)
			_, err := s.Checkpoint(context.Background(), ws, Key{Session: "s", ToolUseID: "t2"})
			if !errors.Is(err, ErrTooManyEntries) || !strings.Contains(err.Error(), "max_entries") {
				t.Fatalf("57 entries against a bound of 50: %v, want ErrTooManyEntries naming the setting", err)
			}
			// One directory past the bound on its own.
			files("c", 0, 200)
			if _, err := s.Checkpoint(context.Background(), ws, Key{Session: "s", ToolUseID: "t3"}); !errors.Is(err, ErrTooManyEntries) {
				t.Fatalf("a directory of 200: %v, want ErrTooManyEntries", err)
			}
			list, err := s.List("s")
			if err != nil || len(list) != 1 {
				t.Fatalf("checkpoints after the refusals: %d, %v; want the first alone", len(list), err)
			}

			if err := os.RemoveAll(filepath.Join(ws, "c")); err != nil {
				t.Fatal(err)
			}
			for i := 15; i < 25; i++ {
				if err := os.Remove(filepath.Join(ws, "b", fmt.Sprintf("f%03d", i))); err != nil {
					t.Fatal(err)
				}
			}
			c4 := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t4"})
			if c4.Files != 45 {
				t.Fatalf("back under the bound: %d files recorded, want 45", c4.Files)
			}
			assertRestores(t, s, c.ID, want, "the first checkpoint")
		})
	}
}
