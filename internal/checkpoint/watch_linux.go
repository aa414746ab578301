//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"
)

// Change tracking. A checkpoint that stats every entry costs time in
// proportion to the workspace, however little changed (about 250 ms for
// 100k files). With tracking, each session's workspace directories are
// watched through inotify(7), and a checkpoint visits only the directories
// that had an event since the previous one began, plus their ancestors;
// every other directory keeps its state from the previous checkpoint, as
// is, without a system call.
//
// One inotify instance serves the whole Store (instances are a scarce
// per-user resource, watches are not). Its events are read by one
// goroutine as they come, so that the kernel's queue does not overflow
// during a long tool call, and once more by the checkpoint itself before
// it starts: events are queued by the system call that makes the change,
// so after the drain every change made before the checkpoint began has
// been counted. Events that arrive during a walk count towards the next
// checkpoint.
//
// Watches are added through /proc/self/fd/N of the directory descriptor
// the walk opened with O_NOFOLLOW, never by path: a sandbox swapping a
// directory for a symlink cannot make the store watch anything but the
// directory it reads. A watch is added before the directory is listed, so
// a change is either seen by that listing or reported afterwards.
//
// The walk falls back to statting everything when it cannot trust the
// events: the first checkpoint of a session (or after its stat cache was
// dropped), after a queue overflow or an unmount, when a watch cannot be
// added (the per-user limit, fs.inotify.max_user_watches), after a failed
// checkpoint, and whenever the workspace holds a regular file with more
// than one hard link, since a write through one link reports only to the
// directory of that link.
//
// inotify shares one blind spot with every event-based tracker: a write
// through a shared writable mapping raises no event until the mapping is
// released (unmapped, or its process exits), which reports IN_CLOSE_WRITE.
// A process that keeps such a mapping across tool calls can have its
// writes missed until then; Options.FullScan turns tracking off.

const watchMask = syscall.IN_MODIFY | syscall.IN_ATTRIB | syscall.IN_CLOSE_WRITE |
	syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO | syscall.IN_CREATE | syscall.IN_DELETE |
	syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF | syscall.IN_ONLYDIR

// watcher is a Store's inotify instance.
type watcher struct {
	fd int
	f  *os.File // owns fd; its poller wakes the reader

	mu   sync.Mutex // guards below and every tracker's fields
	byWD map[int32]watchRef
	buf  []byte
	done bool
}

// watchRef is what a watch descriptor stands for.
type watchRef struct {
	t   *tracker
	rel string // the directory's path in t.root when the watch was added
}

// tracker is one session's share of the watcher: the watches on its
// workspace and the directories that changed since its current epoch
// began. Its fields are guarded by watcher.mu.
type tracker struct {
	w    *watcher
	root string
	wds  map[int32]struct{}
	// dirty holds the directories that had an event this epoch: a
	// directory's own path for an event on an entry in it, and its
	// parent's too for an event on the directory itself.
	dirty map[string]struct{}
	// all: the events do not cover everything since the epoch began; the
	// next checkpoint must visit every directory.
	all bool
	// released: the session is forgotten; a walk still under way adds no
	// watch that nothing would remove.
	released bool
}

func newWatcher() (*watcher, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	w := &watcher{
		fd:   fd,
		f:    os.NewFile(uintptr(fd), "inotify"),
		byWD: make(map[int32]watchRef),
		buf:  make([]byte, 64<<10),
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		w.f.Close()
		return nil, err
	}
	go func() {
		// Read returns only once the file is closed: f reads whatever is
		// queued and asks to be called again when there is more.
		_ = rc.Read(func(uintptr) bool {
			w.mu.Lock()
			w.readLocked()
			w.mu.Unlock()
			return false
		})
	}()
	return w, nil
}

// close removes every watch and stops the reader.
func (w *watcher) close() {
	w.mu.Lock()
	w.done = true
	w.loseAllLocked()
	w.byWD = nil
	w.mu.Unlock()
	w.f.Close()
}

// track returns a tracker for the workspace at root, whose first epoch
// starts with everything to visit.
func (w *watcher) track(root string) *tracker {
	return &tracker{w: w, root: root, wds: make(map[int32]struct{}), dirty: make(map[string]struct{}), all: true}
}

// readLocked reads and applies the queued events, until none is left.
func (w *watcher) readLocked() {
	for !w.done {
		n, err := syscall.Read(w.fd, w.buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return // EAGAIN: nothing queued
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
			end := off + syscall.SizeofInotifyEvent + int(ev.Len)
			if end > n {
				// The kernel returns whole events only; should one ever be
				// cut, nothing after it can be trusted.
				w.loseAllLocked()
				break
			}
			named := ev.Len > 0 && w.buf[off+syscall.SizeofInotifyEvent] != 0
			w.applyLocked(ev.Wd, ev.Mask, named)
			off = end
		}
	}
}

func (w *watcher) applyLocked(wd int32, mask uint32, named bool) {
	if mask&syscall.IN_Q_OVERFLOW != 0 {
		w.loseAllLocked()
		return
	}
	ref, ok := w.byWD[wd]
	if !ok {
		return // a watch removed meanwhile
	}
	t := ref.t
	if mask&syscall.IN_UNMOUNT != 0 {
		t.all = true
	}
	if mask&syscall.IN_IGNORED != 0 {
		// The directory is gone (its parent had the event) or its file
		// system was unmounted.
		delete(w.byWD, wd)
		delete(t.wds, wd)
	}
	t.dirty[ref.rel] = struct{}{}
	if !named && ref.rel != "" {
		// The directory itself changed (mode, moved, deleted): so did
		// its entry in its parent.
		t.dirty[parentOf(ref.rel)] = struct{}{}
	}
}

// loseAllLocked makes every tracker's next checkpoint visit everything.
func (w *watcher) loseAllLocked() {
	for _, ref := range w.byWD {
		ref.t.all = true
	}
}

func parentOf(rel string) string {
	for i := len(rel) - 1; i >= 0; i-- {
		if rel[i] == '/' {
			return rel[:i]
		}
	}
	return ""
}

// begin starts a new epoch: it applies every event queued so far and
// returns the directories to visit for the checkpoint about to walk, as
// the set of changed directories and all their ancestors. ok is false
// when the events do not cover everything and every directory must be
// visited.
func (t *tracker) begin() (visit map[string]bool, ok bool) {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.readLocked()
	all, dirty := t.all || w.done, t.dirty
	t.all, t.dirty = w.done, make(map[string]struct{})
	if all {
		return nil, false
	}
	visit = make(map[string]bool, 2*len(dirty)+1)
	for rel := range dirty {
		for !visit[rel] {
			visit[rel] = true
			if rel == "" {
				break
			}
			rel = parentOf(rel)
		}
	}
	return visit, true
}

// fail makes the next checkpoint visit everything: the walk of this epoch
// did not finish, or could not watch a directory.
func (t *tracker) fail() {
	t.w.mu.Lock()
	t.all = true
	t.w.mu.Unlock()
}

// watch adds (or renews) the watch on the directory open at fd, whose
// path in the workspace is rel. When it cannot, the tracker is failed.
func (t *tracker) watch(fd int, rel string) {
	w := t.w
	path := "/proc/self/fd/" + strconv.Itoa(fd)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || t.released {
		t.all = true
		return
	}
	// Held across the call, so that the reader cannot meet an event of
	// a new watch before it is known.
	wd, err := syscall.InotifyAddWatch(w.fd, path, watchMask)
	if err != nil {
		t.all = true
		return
	}
	id := int32(wd)
	if old, ok := w.byWD[id]; ok && old.t != t {
		// The same directory in another session's workspace: neither
		// can trust its events for it any more.
		old.t.all = true
		delete(old.t.wds, id)
	}
	w.byWD[id] = watchRef{t: t, rel: rel}
	t.wds[id] = struct{}{}
}

// release removes the tracker's watches.
func (t *tracker) release() {
	w := t.w
	w.mu.Lock()
	defer w.mu.Unlock()
	t.all, t.released = true, true
	if w.done {
		return
	}
	for wd := range t.wds {
		if ref, ok := w.byWD[wd]; ok && ref.t == t {
			delete(w.byWD, wd)
			syscall.InotifyRmWatch(w.fd, uint32(wd))
		}
	}
	t.wds = make(map[int32]struct{})
}

// ChangeTracking reports whether this host lets checkpoints track changes
// (see Options.FullScan), and how many directories one user may watch.
func ChangeTracking() (ok bool, detail string) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		return false, fmt.Sprintf("inotify unavailable (%v): every checkpoint stats every file of the workspace; raise fs.inotify.max_user_instances if it is EMFILE", err)
	}
	syscall.Close(fd)
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_watches")
	if err != nil {
		return true, "inotify"
	}
	return true, fmt.Sprintf("inotify, up to %s watched directories per user (fs.inotify.max_user_watches); past that, checkpoints stat every file", strings.TrimSpace(string(b)))
}
