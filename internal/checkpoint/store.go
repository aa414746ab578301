package checkpoint

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/perimeterhq/perimeter/internal/lockfile"
)

var (
	// ErrNotFound: no such checkpoint, session or tool call.
	ErrNotFound = errors.New("checkpoint: not found")
	// ErrCorrupt: an object does not hash to its name or does not parse.
	ErrCorrupt = errors.New("checkpoint: corrupt store")
	// ErrLocked: another process has the store open.
	ErrLocked = errors.New("checkpoint: store in use by another process")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("checkpoint: store closed")
	// ErrUnsupported: snapshots and restores need Linux on amd64 or arm64.
	ErrUnsupported = errors.New("checkpoint: unsupported platform")
	// ErrTooManyEntries: the workspace holds more entries than
	// Options.MaxEntries; no checkpoint was taken.
	ErrTooManyEntries = errors.New("checkpoint: too many entries in the workspace")
)

// Options configures a Store. The zero value is the production setting.
type Options struct {
	// NoSync skips every fsync. A crash of the process still leaves the
	// store consistent; a crash of the machine may lose or corrupt the
	// latest checkpoints. Only for tests and stores on tmpfs.
	NoSync bool
	// Parallelism is how many goroutines walk and hash one workspace.
	// Zero means GOMAXPROCS.
	Parallelism int
	// CacheEntries bounds the workspace entries that the sessions' stat
	// caches hold together in memory, at about 180 bytes each
	// (BenchmarkStatCacheBytes); the least recently used caches are dropped
	// first, never the one just made. A session without a cache re-reads
	// every file at its next checkpoint. Zero means 2 million.
	CacheEntries int
	// MaxEntries bounds the entries (files, directories and symlinks, the
	// ones left out included) of a workspace that is checkpointed: a
	// checkpoint of a larger one stops with ErrTooManyEntries as soon as
	// it has listed more, so that a session that makes millions of files
	// cannot make the worker hold a stat cache and walk state for each.
	// Zero means 1 million, a few hundred MB of memory at most.
	MaxEntries int
	// FullScan turns change tracking off: every checkpoint stats every
	// entry of the workspace, as it must anyway when tracking is not
	// available. Tracking (inotify; see watch_linux.go) makes a checkpoint
	// cost what changed rather than the workspace's size, but cannot see
	// writes through a shared mapping that stays mapped across tool calls.
	FullScan bool
	// Transfers is how many objects Push and Pull copy at once. Zero
	// means 16.
	Transfers int
	// Clock stamps checkpoints and decides their age in Prune. Nil means
	// time.Now. The racy-file check always uses the system clock, since it
	// compares with file timestamps.
	Clock func() time.Time
}

// Store is a directory of content-addressed objects and checkpoint indexes,
// shared by all sessions of a worker. Its methods are safe for concurrent
// use; checkpoints of one session run one at a time.
//
// Locking: an flock on <dir>/LOCK keeps other processes out for the
// Store's lifetime. Within the process, gcMu is held shared by every
// Checkpoint and Restore from start to end and exclusively by Prune, so
// Prune never deletes an object that a running checkpoint found already
// present (and so did not write) or that a running restore is reading.
type Store struct {
	dir  string
	opts Options
	lock io.Closer

	// gcMu: shared by Checkpoint, Restore, Push and Pull, exclusive by
	// Prune and Close; guards the set of objects on disk against deletion.
	gcMu sync.RWMutex

	// racyWindow is how far back from a checkpoint's start a file's
	// change time must lie for its stat to vouch for its content at the
	// next checkpoint (see racy). Tests shorten it; nothing else changes it.
	racyWindow time.Duration

	// runs serializes the checkpoints of a session, which share its stat
	// cache, sequence numbers and index file. The locks are striped by
	// session id rather than kept per session, so that none is lost when
	// Forget drops a session's state.
	runs [64]sync.Mutex
	// roots serializes checkpoints and restores of one workspace, so that
	// a checkpoint never records a tree a restore is half way through
	// (an operator's restore of a live session, say). Striped by path.
	roots [64]sync.Mutex

	mu       sync.Mutex // guards the fields below and those of each session
	closed   bool
	spares   spares
	watcher  *watcher // change tracking; nil when off or unavailable
	watchErr error    // why there is no watcher
	sessions map[string]*session
	useTick  uint64 // LRU clock for session caches
}

// session is the in-memory state of one session's checkpoints; its fields
// are guarded by Store.mu.
type session struct {
	name string
	// index is the session's index file as loaded. It is loaded or
	// replaced only by a holder of the session's run lock or by Prune, so
	// never while an append is under way.
	index   *sessionIndex
	cache   *snapCache // stat cache of the latest checkpoint, or nil
	track   *tracker   // change tracking of the workspace, or nil
	lastUse uint64
}

func (s *Store) runLock(session string) *sync.Mutex { return stripe(&s.runs, session) }

func (s *Store) rootLock(root string) *sync.Mutex { return stripe(&s.roots, root) }

func stripe(locks *[64]sync.Mutex, key string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(key))
	return &locks[h.Sum32()%uint32(len(locks))]
}

const (
	lockName     = "LOCK"
	objectsDir   = "objects"
	sessionsDir  = "sessions"
	tmpDir       = "tmp"
	spareDir     = "spare"
	defaultCache = 2_000_000
	// defaultMaxEntries is Options.MaxEntries when unset.
	defaultMaxEntries = 1_000_000
)

// Open opens the store in dir, creating it if needed, and takes the lock
// that keeps other processes out until Close.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Parallelism <= 0 {
		opts.Parallelism = runtime.GOMAXPROCS(0)
	}
	if opts.CacheEntries <= 0 {
		opts.CacheEntries = defaultCache
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = defaultMaxEntries
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	s := &Store{
		dir:        dir,
		opts:       opts,
		racyWindow: defaultRacyWindow,
		sessions:   make(map[string]*session),
	}
	for _, d := range []string{dir, filepath.Join(dir, objectsDir), filepath.Join(dir, sessionsDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("checkpoint: open store: %w", err)
		}
	}
	lock, err := lockfile.Take(filepath.Join(dir, lockName), ErrLocked)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	// Temporary files belong to checkpoints that never finished; with the
	// lock held nobody else can be writing them.
	// So do spare files, which may have been taken and half written.
	for _, d := range []string{tmpDir, spareDir} {
		tmp := filepath.Join(dir, d)
		if err := os.RemoveAll(tmp); err != nil {
			lock.Close()
			return nil, fmt.Errorf("checkpoint: clean %s: %w", tmp, err)
		}
		if err := os.Mkdir(tmp, 0o700); err != nil {
			lock.Close()
			return nil, fmt.Errorf("checkpoint: open store: %w", err)
		}
	}
	s.spares.dir = filepath.Join(dir, spareDir)
	if opts.FullScan {
		s.watchErr = errFullScan
	} else {
		s.watcher, s.watchErr = newWatcher()
	}
	return s, nil
}

// Close waits for running checkpoints, restores and prunes, then releases
// the store. Later calls return ErrClosed.
func (s *Store) Close() error {
	s.spares.close()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.sessions = nil
	if s.watcher != nil {
		s.watcher.close()
	}
	return s.lock.Close()
}

// Forget drops the in-memory state of a session that has ended: its stat
// cache (whose objects Prune keeps while it is held) and its loaded index.
// Its checkpoints stay in the store.
func (s *Store) Forget(session string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[session]; ss != nil && ss.track != nil {
		ss.track.release()
	}
	delete(s.sessions, session)
}

// Sessions is how many sessions the store holds in memory: their stat
// caches, loaded indexes and watched workspaces. Forget releases one.
func (s *Store) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// errFullScan: Options.FullScan turned change tracking off.
var errFullScan = errors.New("change tracking is off (full scan)")

// ChangeTracking returns nil when checkpoints track the changes to a
// workspace, or why every checkpoint stats every file instead.
func (s *Store) ChangeTracking() error { return s.watchErr }

// trackerLocked returns the change tracker of a session's workspace at
// root, or nil without tracking. s.mu is held, and so is the session's
// run lock.
func (s *Store) trackerLocked(ss *session, root string) *tracker {
	if s.watcher == nil {
		return nil
	}
	if ss.track != nil && ss.track.root != root {
		ss.track.release()
		ss.track = nil
	}
	if ss.track == nil {
		ss.track = s.watcher.track(root)
	}
	return ss.track
}

// sessionLocked returns the state of a session, creating it and loading
// its index. s.mu is held, and so is the session's run lock or gcMu
// exclusively: nothing is appending to the index file.
func (s *Store) sessionLocked(name string) (*session, error) {
	if s.closed {
		return nil, ErrClosed
	}
	ss := s.sessions[name]
	if ss == nil {
		ss = &session{name: name}
		s.sessions[name] = ss
	}
	if ss.index == nil {
		idx, err := loadIndex(s.indexPath(name), name)
		if err != nil {
			return nil, err
		}
		ss.index = idx
	}
	return ss, nil
}

// recordsLocked returns a session's checkpoints: from memory, or read
// from disk and not kept, since an append may be under way. s.mu is held.
func (s *Store) recordsLocked(name string) ([]Checkpoint, error) {
	if s.closed {
		return nil, ErrClosed
	}
	if ss := s.sessions[name]; ss != nil && ss.index != nil {
		return ss.index.records, nil
	}
	ix, err := loadIndex(s.indexPath(name), name)
	if err != nil {
		return nil, err
	}
	return ix.records, nil
}

// setCache publishes a session's new stat cache, unless the session was
// forgotten meanwhile, and drops the least recently used caches while they
// hold more than Options.CacheEntries entries.
func (s *Store) setCache(ss *session, c *snapCache) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[ss.name] != ss {
		return
	}
	s.useTick++
	ss.cache, ss.lastUse = c, s.useTick
	total := 0
	for _, o := range s.sessions {
		if o.cache != nil {
			total += o.cache.entries()
		}
	}
	for total > s.opts.CacheEntries {
		var oldest *session
		for _, o := range s.sessions {
			if o.cache != nil && o != ss && (oldest == nil || o.lastUse < oldest.lastUse) {
				oldest = o
			}
		}
		if oldest == nil {
			return
		}
		total -= oldest.cache.entries()
		oldest.cache = nil
	}
}

func (s *Store) objectPath(h hash) string {
	x := h.String()
	return filepath.Join(s.dir, objectsDir, x[:2], x[2:])
}

func (s *Store) hasObject(h hash) bool {
	_, err := os.Lstat(s.objectPath(h))
	return err == nil
}

// openObject opens object h; a missing one is a corrupt store.
func (s *Store) openObject(h hash) (*os.File, error) {
	f, err := os.Open(s.objectPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: object %s is missing", ErrCorrupt, h)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return f, nil
}

// readObject returns a small object (a manifest), checking its hash.
func (s *Store) readObject(h hash) ([]byte, error) {
	f, err := s.openObject(h)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: read object %s: %w", h, err)
	}
	if sha256.Sum256(b) != h {
		return nil, fmt.Errorf("%w: object %s does not match its hash", ErrCorrupt, h)
	}
	return b, nil
}

// readManifest returns the entries of the directory manifest h.
func (s *Store) readManifest(h hash) ([]entry, error) {
	b, err := s.readObject(h)
	if err != nil {
		return nil, err
	}
	ents, err := decodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", h, err)
	}
	return ents, nil
}

// txn collects the objects one checkpoint adds. They are written to tmp/
// as the walk finds them and become visible only in commit: fsynced,
// renamed to objects/, their directories fsynced. An aborted txn leaves
// no trace but unreferenced temporary files, which abort removes.
type txn struct {
	s *Store

	mu       sync.Mutex // guards the fields below
	pending  map[hash]string
	order    []hash
	newBytes int64
}

func (s *Store) newTxn() *txn {
	return &txn{s: s, pending: make(map[hash]string)}
}

// reserve reports whether h still has to be written: it is neither in the
// store nor already being written by this txn. A true result obliges the
// caller to call done or release.
func (t *txn) reserve(h hash) bool {
	t.mu.Lock()
	if _, ok := t.pending[h]; ok {
		t.mu.Unlock()
		return false
	}
	t.pending[h] = ""
	t.mu.Unlock()
	if t.s.hasObject(h) {
		t.release(h)
		return false
	}
	return true
}

func (t *txn) release(h hash) {
	t.mu.Lock()
	delete(t.pending, h)
	t.mu.Unlock()
}

func (t *txn) done(h hash, tmp string, size int64) {
	t.mu.Lock()
	t.pending[h] = tmp
	t.order = append(t.order, h)
	t.newBytes += size
	t.mu.Unlock()
}

// createTemp opens a new temporary file in the store: a spare one if
// there is one left.
func (t *txn) createTemp() (*os.File, error) {
	if f := t.s.spares.take(); f != nil {
		return f, nil
	}
	f, err := os.CreateTemp(filepath.Join(t.s.dir, tmpDir), "obj-")
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return f, nil
}

// putBytes adds an object held in memory.
func (t *txn) putBytes(data []byte) (hash, error) {
	h := hash(sha256.Sum256(data))
	return h, t.putHashed(h, data)
}

// putHashed adds an object held in memory whose hash the caller computed.
func (t *txn) putHashed(h hash, data []byte) error {
	if !t.reserve(h) {
		return nil
	}
	f, err := t.createTemp()
	if err != nil {
		t.release(h)
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		t.release(h)
		return fmt.Errorf("checkpoint: write object: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		t.release(h)
		return fmt.Errorf("checkpoint: write object: %w", err)
	}
	t.done(h, f.Name(), int64(len(data)))
	return nil
}

// bulkSync is the number of files above which commit flushes the whole
// file system once (syncfs) instead of fsyncing each file: a first
// checkpoint of a large workspace adds thousands of objects, and fsyncs
// cost a few milliseconds each even when issued in parallel.
const bulkSync = 64

// commit makes the txn's objects durable and visible. It is not
// interruptible: once the walk is over, finishing is cheaper than undoing.
func (t *txn) commit() (objects int, bytes int64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.order) == 0 {
		return 0, 0, nil
	}
	sync := !t.s.opts.NoSync
	if sync {
		tmps := make([]string, len(t.order))
		for i, h := range t.order {
			tmps[i] = t.pending[h]
		}
		if err := syncPaths(filepath.Join(t.s.dir, tmpDir), tmps, false); err != nil {
			return 0, 0, err
		}
	}
	dirs := make(map[string]bool)
	for _, h := range t.order {
		dst := t.s.objectPath(h)
		dir := filepath.Dir(dst)
		if !dirs[dir] {
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return 0, 0, fmt.Errorf("checkpoint: %w", err)
			}
			dirs[dir] = true
		}
		if err := os.Rename(t.pending[h], dst); err != nil {
			return 0, 0, fmt.Errorf("checkpoint: commit object: %w", err)
		}
	}
	if sync {
		list := make([]string, 0, len(dirs)+1)
		for d := range dirs {
			list = append(list, d)
		}
		// objects/ itself gains the entries of fan-out directories
		// created above.
		list = append(list, filepath.Join(t.s.dir, objectsDir))
		if err := syncPaths(t.s.dir, list, true); err != nil {
			return 0, 0, err
		}
	}
	n, b := len(t.order), t.newBytes
	t.order, t.pending, t.newBytes = nil, map[hash]string{}, 0
	return n, b, nil
}

// abort removes the txn's temporary files.
func (t *txn) abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, h := range t.order {
		os.Remove(t.pending[h])
	}
	t.order, t.pending = nil, map[hash]string{}
}

// syncPaths fsyncs the given files or directories in parallel, or, past
// bulkSync of them, calls syncfs once on the file system holding fsRoot.
func syncPaths(fsRoot string, paths []string, dirs bool) error {
	if len(paths) > bulkSync {
		if err := syncFS(fsRoot); err == nil {
			return nil
		}
		// Fall through: fsync each one.
	}
	const workers = 32
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan string)
	for range min(workers, len(paths)) {
		wg.Go(func() {
			for p := range next {
				if err := syncPath(p); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, p := range paths {
		next <- p
	}
	close(next)
	wg.Wait()
	if first != nil {
		what := "file"
		if dirs {
			what = "directory"
		}
		return fmt.Errorf("checkpoint: fsync %s: %w", what, first)
	}
	return nil
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = fsync(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// testHookFsynced, when set by a test, learns of every file and directory
// fsynced, in order.
var testHookFsynced func(path string)

// fsync is every fsync the store makes.
func fsync(f *os.File) error {
	err := f.Sync()
	if err == nil && testHookFsynced != nil {
		testHookFsynced(f.Name())
	}
	return err
}

// writeFileAtomic replaces path with data: temporary file, fsync, rename,
// fsync of the directory.
func (s *Store) writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "idx-")
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if err == nil && !s.opts.NoSync {
		err = fsync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err == nil && !s.opts.NoSync {
		err = syncPath(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("checkpoint: write %s: %w", path, err)
	}
	return nil
}
