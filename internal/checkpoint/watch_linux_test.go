//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// trackedWorkspace is benchWorkspace's layout at 1100 files: m000 holds
// 40 leaf directories of 25 files each, m001 four; paths[i] is in leaf
// directory i/25.
func trackedWorkspace(t *testing.T) (*Store, string, []string) {
	t.Helper()
	s, _ := openStore(t, Options{})
	ws, paths := benchWorkspace(t, 1100)
	// Old enough for a full walk's stat cache to vouch for them.
	time.Sleep(fastStore(s))
	return s, ws, paths
}

// dirsOf counts the directories of a tree, its root included.
func dirsOf(t *testing.T, root string) int {
	t.Helper()
	n := 1
	for _, nd := range describe(t, root) {
		if nd.Type == "dir" {
			n++
		}
	}
	return n
}

func checkpointAndCompare(t *testing.T, s *Store, ws string, key Key) Checkpoint {
	t.Helper()
	want := describe(t, ws)
	c := mustCheckpoint(t, s, ws, key)
	assertRestores(t, s, c.ID, want, "restore of "+key.ToolUseID)
	return c
}

func TestTrackingVisitsOnlyChangedDirectories(t *testing.T) {
	s, ws, paths := trackedWorkspace(t)
	all := dirsOf(t, ws)
	c := checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
	if c.Visited != all {
		t.Fatalf("first checkpoint visited %d directories, want all %d", c.Visited, all)
	}

	// paths[130] is in m000/p05: the root, m000 and m000/p05 are visited.
	writeFile(t, paths[130], []byte("changed"), 0o644)
	c = checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	if c.Visited != 3 || c.Hashed != 1 {
		t.Fatalf("after one write: visited %d directories and hashed %d files, want 3 and 1", c.Visited, c.Hashed)
	}

	prev := c.ID
	c = checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t2"})
	if c.Visited != 0 || c.Hashed != 0 || c.ID != prev {
		t.Fatalf("after no change: visited %d, hashed %d, id %s; want 0, 0, %s", c.Visited, c.Hashed, c.ID, prev)
	}

	// A directory's own mode is recorded in its parent; a new nested
	// directory is walked whole; a deletion is seen.
	os.Chmod(filepath.Dir(paths[1050]), 0o700)
	writeFile(t, filepath.Join(ws, "m001/new/deep/er/file"), []byte("new"), 0o600)
	os.Remove(paths[999])
	os.Symlink("../p00", paths[998])
	c = checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t3"})
	if c.Visited >= all/2 {
		t.Fatalf("after three changes: visited %d of %d directories", c.Visited, all)
	}
}

func TestTrackingFollowsRenamedDirectories(t *testing.T) {
	s, ws, paths := trackedWorkspace(t)
	checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t0"})

	// Moved between checkpoints, then written in its new place: its
	// watch still names the old path until it is walked again.
	from, to := filepath.Dir(paths[0]), filepath.Join(ws, "m001", "moved")
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(to, "f00.txt"), []byte("written after the move"), 0o644)
	checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t1"})

	writeFile(t, filepath.Join(to, "f01.txt"), []byte("written after the walk"), 0o644)
	if err := os.Rename(to, from); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(from, "f02.txt"), []byte("moved back"), 0o644)
	checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t2"})

	// A directory replaced by another with the same name.
	os.RemoveAll(from)
	writeFile(t, filepath.Join(from, "only"), []byte("replaced"), 0o644)
	checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t3"})
}

// A write through one hard link raises an event only in that link's
// directory: the other name's directory must be visited anyway.
func TestTrackingHardLinks(t *testing.T) {
	for _, sameEpoch := range []bool{false, true} {
		t.Run(fmt.Sprintf("link and write before one checkpoint=%v", sameEpoch), func(t *testing.T) {
			s, ws, paths := trackedWorkspace(t)
			checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
			other := filepath.Join(ws, "m001", "p00", "link")
			if err := os.Link(paths[0], other); err != nil {
				t.Fatal(err)
			}
			if !sameEpoch {
				checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
			}
			f, err := os.OpenFile(other, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("written through the other link")
			f.Close()
			time.Sleep(fastStore(s))
			c := checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t2"})
			if c.Hashed != 2 {
				t.Fatalf("hashed %d files, want both names of the written file", c.Hashed)
			}
		})
	}
}

func TestTrackingFallsBackWhenEventsWereLost(t *testing.T) {
	s, ws, paths := trackedWorkspace(t)
	all := dirsOf(t, ws)
	checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
	writeFile(t, paths[5], []byte("changed"), 0o644)
	// What the kernel reports when its queue overflowed.
	s.watcher.mu.Lock()
	s.watcher.applyLocked(-1, syscall.IN_Q_OVERFLOW, false)
	s.watcher.mu.Unlock()
	c := checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	if c.Visited != all {
		t.Fatalf("after an overflow: visited %d directories, want all %d", c.Visited, all)
	}
	writeFile(t, paths[6], []byte("changed"), 0o644)
	if c := checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t2"}); c.Visited != 3 {
		t.Fatalf("after the full walk: visited %d directories, want 3", c.Visited)
	}
}

func TestTrackingKeepsSessionsApart(t *testing.T) {
	s, _ := openStore(t, Options{})
	a, pa := benchWorkspace(t, 200)
	b, _ := benchWorkspace(t, 200)
	time.Sleep(fastStore(s))
	mustCheckpoint(t, s, a, Key{Session: "a"})
	mustCheckpoint(t, s, b, Key{Session: "b"})
	writeFile(t, pa[0], []byte("a only"), 0o644)
	if c := mustCheckpoint(t, s, b, Key{Session: "b"}); c.Visited != 0 {
		t.Fatalf("session b visited %d directories after a write in a's workspace", c.Visited)
	}
	if c := mustCheckpoint(t, s, a, Key{Session: "a"}); c.Hashed != 1 {
		t.Fatalf("session a hashed %d files, want 1", c.Hashed)
	}
}

func TestForgetAndCloseRemoveWatches(t *testing.T) {
	s, _ := openStore(t, Options{})
	a, _ := benchWorkspace(t, 200)
	b, _ := benchWorkspace(t, 200)
	mustCheckpoint(t, s, a, Key{Session: "a"})
	mustCheckpoint(t, s, b, Key{Session: "b"})
	watches := func() int {
		s.watcher.mu.Lock()
		defer s.watcher.mu.Unlock()
		return len(s.watcher.byWD)
	}
	per := dirsOf(t, a)
	if n := watches(); n != 2*per {
		t.Fatalf("%d watches, want %d", n, 2*per)
	}
	// A walk still under way when its session is forgotten adds nothing.
	s.mu.Lock()
	tr := s.sessions["a"].track
	s.mu.Unlock()
	s.Forget("a")
	if n := watches(); n != per {
		t.Fatalf("after Forget: %d watches, want %d", n, per)
	}
	fd, err := syscall.Open(filepath.Join(a, "m000"), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	tr.watch(fd, "m000")
	syscall.Close(fd)
	if n := watches(); n != per {
		t.Fatalf("a forgotten session's walk added a watch: %d watches, want %d", n, per)
	}
	w := s.watcher
	s.Close()
	if _, err := syscall.InotifyAddWatch(w.fd, a, watchMask); err != syscall.EBADF {
		t.Fatalf("after Close, the inotify descriptor is still open: %v", err)
	}
}

// The sandbox may swap a watched directory for a symlink to somewhere
// else: the store watches what it walked, never the link's target.
func TestTrackingNeverWatchesThroughSymlinks(t *testing.T) {
	s, ws, paths := trackedWorkspace(t)
	moved, decoy := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(decoy, "secret"), []byte("host file"), 0o600)
	// Between the walk's open of m000/p00 and its watch, the directory is
	// moved out and a symlink to decoy put in its place.
	dir := filepath.Dir(paths[0])
	testHookBeforeWatch = func(rel string) {
		if rel != "m000/p00" {
			return
		}
		if err := os.Rename(dir, filepath.Join(moved, "p00")); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(decoy, dir); err != nil {
			t.Error(err)
		}
	}
	mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
	testHookBeforeWatch = nil
	c := checkpointAndCompare(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	// The store watched the directory it opened, not the symlink's target.
	writeFile(t, filepath.Join(decoy, "secret"), []byte("changed outside"), 0o600)
	if again := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t2"}); again.Visited != 0 || again.ID != c.ID {
		t.Fatalf("a change outside the workspace was tracked: visited %d, id %s, want 0, %s", again.Visited, again.ID, c.ID)
	}
}

func TestStoreSaysWhetherItTracksChanges(t *testing.T) {
	on, _ := openStore(t, Options{})
	if err := on.ChangeTracking(); err != nil {
		t.Fatalf("ChangeTracking() = %v with inotify available", err)
	}
	off, _ := openStore(t, Options{FullScan: true})
	if err := off.ChangeTracking(); !errors.Is(err, errFullScan) {
		t.Fatalf("ChangeTracking() = %v with FullScan, want %v", err, errFullScan)
	}
}

func TestChangeTrackingReportsTheWatchLimit(t *testing.T) {
	ok, detail := ChangeTracking()
	limit, err := os.ReadFile("/proc/sys/fs/inotify/max_user_watches")
	testenv.Need(t, err == nil, "/proc/sys/fs/inotify")
	if !ok || !strings.Contains(detail, strings.TrimSpace(string(limit))) {
		t.Fatalf("ChangeTracking() = %v, %q; want true and the limit %s", ok, detail, limit)
	}
}

// What a checkpoint leaves out of a directory it does not visit is still
// reported: restoring it removes those entries too.
func TestTrackingReportsSkippedEntriesOfUnchangedDirectories(t *testing.T) {
	s, ws, paths := trackedWorkspace(t)
	fifo := filepath.Join(filepath.Dir(paths[0]), "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	first := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t0"})
	writeFile(t, paths[1000], []byte("elsewhere"), 0o644)
	c := mustCheckpoint(t, s, ws, Key{Session: "s", ToolUseID: "t1"})
	if c.Visited >= first.Visited {
		t.Fatalf("visited %d directories, want fewer than %d", c.Visited, first.Visited)
	}
	if got := skipNames(c.Skipped); len(got) != 1 || !strings.HasPrefix(got[0], "m000/p00/pipe: ") {
		t.Fatalf("skipped %v, want the FIFO in the unchanged directory", got)
	}
	mustRestore(t, s, ws, c.ID)
	if _, err := os.Lstat(fifo); !os.IsNotExist(err) {
		t.Fatalf("the skipped FIFO survived a restore: %v", err)
	}
}

// A session whose first checkpoint failed has watches but no stat cache;
// Prune, which drops sessions it loaded only to read their indexes, keeps
// it, so that Forget still removes its watches.
func TestPruneKeepsWatchedSessions(t *testing.T) {
	s, _ := openStore(t, Options{})
	a, _ := benchWorkspace(t, 200)
	ctx := &countdownCtx{Context: context.Background()}
	ctx.n.Store(6)
	if _, err := s.Checkpoint(ctx, a, Key{Session: "a"}); err == nil {
		t.Fatal("the interrupted checkpoint succeeded")
	}
	watches := func() int {
		s.watcher.mu.Lock()
		defer s.watcher.mu.Unlock()
		return len(s.watcher.byWD)
	}
	if watches() == 0 {
		t.Fatal("the interrupted walk added no watch; the test needs one")
	}
	if _, err := s.Prune(context.Background(), Retention{}); err != nil {
		t.Fatal(err)
	}
	s.Forget("a")
	if n := watches(); n != 0 {
		t.Fatalf("%d watches left after Prune and Forget, want 0", n)
	}
}
