package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Key names the tool call a checkpoint is taken before.
type Key struct {
	Session   string
	ToolUseID string
}

// Skip is an entry of the workspace that a checkpoint does not hold.
// Restoring the checkpoint removes whatever is at that path.
type Skip struct {
	Path   string
	Reason string
}

// Reasons for a Skip.
const (
	ReasonFIFO       = "named pipe (FIFO)"
	ReasonSocket     = "socket"
	ReasonCharDevice = "character device"
	ReasonBlkDevice  = "block device"
	ReasonOtherType  = "unsupported file type"
	ReasonPermission = "permission denied"
	ReasonChanged    = "changed during snapshot"
	ReasonMount      = "on another file system (mount point)"
	ReasonTooDeep    = "nested too deep"
	ReasonBadLink    = "symlink target empty or too long"
	ReasonSparse     = "sparse: mostly holes, which a checkpoint would store byte for byte"
)

// Checkpoint describes one recorded checkpoint.
type Checkpoint struct {
	// ID is the hex SHA-256 of the root directory's manifest: equal trees
	// have equal ids, whatever the session.
	ID        string
	Session   string
	ToolUseID string
	// Seq numbers a session's checkpoints from 1, in the order taken.
	Seq  int64
	Time time.Time

	Files    int
	Dirs     int // not counting the root
	Symlinks int
	Bytes    int64 // total size of the files

	// Hashed is how many files this checkpoint read because their stat
	// changed since the session's previous one (or was too recent to vouch
	// for their content). Only set in Checkpoint's result.
	Hashed int
	// Visited is how many directories this checkpoint listed or checked;
	// with change tracking, only those that changed since the session's
	// previous checkpoint and their ancestors. Only set in Checkpoint's
	// result.
	Visited int
	// NewObjects and NewBytes are what this checkpoint added to the store.
	NewObjects int
	NewBytes   int64

	// Skipped lists the entries left out, sorted by path. Checkpoint
	// returns all of them; List and Before at most 100 (NumSkipped has the
	// count).
	Skipped    []Skip
	NumSkipped int
}

// defaultRacyWindow: a file whose change time is less than this before
// the start of the checkpoint that hashed it is hashed again by the next
// one (see isRacy in walk_linux.go). Inode timestamps come from the
// kernel's coarse clock, at most one scheduler tick (10 ms at HZ=100)
// behind the system clock; the window is ten times that. File systems
// with whole-second timestamps get two seconds instead.
const defaultRacyWindow = 100 * time.Millisecond

// maxDepth bounds directory nesting in a snapshot; deeper directories are
// skipped with ReasonTooDeep. Each level holds a file descriptor open.
const maxDepth = 256

// snapCache is the stat cache of a session's latest checkpoint: for every
// directory, what it held and the stat of each entry when it was hashed.
// It is never modified once published; a checkpoint builds a new one,
// sharing the dirState of every directory that did not change.
type snapCache struct {
	root    string
	dirs    map[string]*dirState // by path relative to root; "" is the root
	skipped []Skip               // what the checkpoint left out, sorted by path
}

// id is the checkpoint's id: its root manifest's hash.
func (c *snapCache) id() hash { return c.dirs[""].sum }

// entries is how many names the cache holds, for its memory bound.
func (c *snapCache) entries() int { return int(c.dirs[""].tot.listed) }

// statKey is what the cache compares to decide that an entry is unchanged.
type statKey struct {
	ino   uint64
	size  int64
	mtime int64 // ns
	ctime int64 // ns
	mode  uint32
}

type cachedEntry struct {
	entry
	st   statKey
	racy bool // the stat does not vouch for the content: hash again
}

type dirState struct {
	st    statKey  // the directory's own stat
	racy  bool     // names must be listed again
	names []string // every name listed, skipped ones included, sorted
	ents  []cachedEntry
	sum   hash
	tot   counts // of everything under the directory
}

// counts sums up a directory tree, not counting its root.
type counts struct {
	files, dirs, links int64
	bytes              int64
	listed             int64 // names listed, skipped ones included
	multi              int64 // regular files with more than one link
}

func (c *counts) add(o *counts) {
	c.files += o.files
	c.dirs += o.dirs
	c.links += o.links
	c.bytes += o.bytes
	c.listed += o.listed
	c.multi += o.multi
}

// snapResult is what a walk of a workspace produced.
type snapResult struct {
	cache   *snapCache
	hashed  int // files read
	visited int // directories listed or checked
}

// Checkpoint records the tree under root as the state before the tool call
// key names. Its cost is the stat of every entry plus reading only the
// files whose stat changed since the session's previous checkpoint of the
// same root. Symlinks are recorded as links and never followed; FIFOs,
// sockets, devices, unreadable entries and files that keep changing while
// read are skipped and listed in Checkpoint.Skipped.
//
// A cancelled ctx stops the walk and leaves the store as it was (objects
// already written are removed or, if a crash interrupts, collected by the
// next Prune).
func (s *Store) Checkpoint(ctx context.Context, root string, key Key) (_ Checkpoint, err error) {
	if key.Session == "" {
		return Checkpoint{}, fmt.Errorf("checkpoint: empty session id")
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	root = filepath.Clean(root)

	run := s.runLock(key.Session)
	run.Lock()
	defer run.Unlock()
	rl := s.rootLock(root)
	rl.Lock()
	defer rl.Unlock()
	s.mu.Lock()
	ss, err := s.sessionLocked(key.Session)
	var prev *snapCache
	var ix *sessionIndex
	var track *tracker
	if err == nil {
		prev, ix = ss.cache, ss.index
		track = s.trackerLocked(ss, root)
	}
	s.mu.Unlock()
	if err != nil {
		return Checkpoint{}, err
	}
	if track != nil {
		defer func() {
			if err != nil {
				// Its events were taken; the next walk must visit all.
				track.fail()
			}
		}()
	}
	if prev != nil && prev.root != root {
		prev = nil
	}
	// The tracker's events date from this session's previous checkpoint,
	// so they say what changed since prev only if prev is that one. A
	// session without one (its first checkpoint here, as when a workspace
	// is saved under its persistence key) borrows another session's stat
	// cache of the same root, which spares reading unchanged files.
	tracked := prev != nil
	if prev == nil {
		s.mu.Lock()
		prev = s.freshestCacheLocked(root)
		s.mu.Unlock()
	}

	now := s.opts.Clock()
	t := s.newTxn()
	res, err := s.snapshot(ctx, root, prev, tracked, t, track)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		t.abort()
		if ctx.Err() != nil {
			return Checkpoint{}, fmt.Errorf("checkpoint: %w", ctx.Err())
		}
		return Checkpoint{}, err
	}
	objs, newBytes, err := t.commit()
	if err != nil {
		t.abort()
		return Checkpoint{}, err
	}
	s.spares.refill()
	tot := res.cache.dirs[""].tot
	c := Checkpoint{
		ID:         res.cache.id().String(),
		Session:    key.Session,
		ToolUseID:  key.ToolUseID,
		Seq:        ix.nextSeq,
		Time:       now,
		Files:      int(tot.files),
		Dirs:       int(tot.dirs),
		Symlinks:   int(tot.links),
		Bytes:      tot.bytes,
		Hashed:     res.hashed,
		Visited:    res.visited,
		NewObjects: objs,
		NewBytes:   newBytes,
		Skipped:    slices.Clone(res.cache.skipped),
		NumSkipped: len(res.cache.skipped),
	}
	if err := s.appendRecord(ix, c); err != nil {
		return Checkpoint{}, err
	}
	s.setCache(ss, res.cache)
	return c, nil
}

// appendRecord appends c, whose objects are durable, to the session index
// ix. The session's run lock is held.
func (s *Store) appendRecord(ix *sessionIndex, c Checkpoint) error {
	rec := c
	rec.Hashed, rec.Visited = 0, 0
	rec.Skipped = rec.Skipped[:min(len(rec.Skipped), maxRecordedSkips)]
	size, err := ix.writeRecord(s, &rec)
	if err != nil {
		return err
	}
	s.mu.Lock()
	// If Forget dropped the session meanwhile, ix is no one's: the next
	// checkpoint loads the file again.
	ix.size, ix.nextSeq = size, c.Seq+1
	ix.records = append(ix.records, rec)
	s.mu.Unlock()
	return nil
}

// freshestCacheLocked returns the most recently used stat cache of root,
// whatever session it belongs to, or nil. s.mu is held.
func (s *Store) freshestCacheLocked(root string) *snapCache {
	var cache *snapCache
	var lastUse uint64
	for _, ss := range s.sessions {
		if ss.cache != nil && ss.cache.root == root && ss.lastUse >= lastUse {
			cache, lastUse = ss.cache, ss.lastUse
		}
	}
	return cache
}

// RestoreReport says what Restore changed.
type RestoreReport struct {
	Written int // files and symlinks written
	Created int // directories created
	Removed int // entries removed, each one under a removed directory too
	Chmod   int // entries whose mode was changed in place
	Kept    int // entries that already matched
	// DroppedSetID lists the files and directories recorded with setuid or
	// setgid, which Restore never sets: they are restored without them.
	DroppedSetID []string
}

// Restore makes the tree under root exactly checkpoint id: contents,
// modes, symlinks, empty directories, and nothing else. root is created if
// missing. Restore works through directory file descriptors opened with
// O_NOFOLLOW, so a symlink the sandbox planted (say dir -> /etc) is removed
// and replaced, never written or deleted through. Files are written to a
// temporary name in their directory and renamed into place. The root
// directory's own mode and owner are left as they are.
//
// Restore is not atomic as a whole: if it fails or ctx is cancelled, root
// holds a mix of old and restored entries, and running it again finishes.
// Any checkpoint in the store can be restored, whatever session took it.
func (s *Store) Restore(ctx context.Context, root string, id string) (RestoreReport, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return RestoreReport{}, err
	}
	h, err := s.rootOf(id)
	if err != nil {
		return RestoreReport{}, err
	}
	root = filepath.Clean(root)
	rl := s.rootLock(root)
	rl.Lock()
	defer rl.Unlock()
	// A stat cache of the same root lets Restore know that a file already
	// holds the recorded content without reading it.
	s.mu.Lock()
	cache := s.freshestCacheLocked(root)
	s.mu.Unlock()
	rep, err := s.restore(ctx, root, h, cache)
	if err != nil && ctx.Err() != nil {
		return rep, fmt.Errorf("checkpoint: restore: %w", ctx.Err())
	}
	return rep, err
}

// List returns a session's checkpoints, oldest first.
func (s *Store) List(session string) ([]Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.recordsLocked(session)
	if err != nil {
		return nil, err
	}
	return append([]Checkpoint(nil), recs...), nil
}

// Before returns the checkpoint taken just before the tool call
// toolUseID: the first one recorded for it, should the call have been
// checkpointed again after a crash.
func (s *Store) Before(session, toolUseID string) (Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.recordsLocked(session)
	if err != nil {
		return Checkpoint{}, err
	}
	for _, c := range recs {
		if c.ToolUseID == toolUseID {
			return c, nil
		}
	}
	return Checkpoint{}, fmt.Errorf("%w: no checkpoint before tool call %q of session %q", ErrNotFound, toolUseID, session)
}

// Entries returns every entry of a checkpoint, depth first, each
// directory's entries in bytewise order of name.
func (s *Store) Entries(ctx context.Context, id string) ([]Entry, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	h, err := s.rootOf(id)
	if err != nil {
		return nil, err
	}
	var out []Entry
	err = s.flatten(ctx, h, "", func(e Entry) { out = append(out, e) })
	return out, err
}

// rootOf returns the root manifest of checkpoint id, after checking that
// the store holds it and that it is a manifest.
func (s *Store) rootOf(id string) (hash, error) {
	h, err := parseHash(id)
	if err != nil {
		return h, err
	}
	f, err := os.Open(s.objectPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return h, fmt.Errorf("%w: checkpoint %s", ErrNotFound, id)
	}
	if err != nil {
		return h, fmt.Errorf("checkpoint: %w", err)
	}
	defer f.Close()
	magic := make([]byte, len(manifestMagic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != manifestMagic {
		return h, fmt.Errorf("%w: %s is not a checkpoint", ErrNotFound, id)
	}
	return h, nil
}

// flatten calls fn for every entry under the manifest h.
func (s *Store) flatten(ctx context.Context, h hash, dir string, fn func(Entry)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	ents, err := s.readManifest(h)
	if err != nil {
		return err
	}
	for i := range ents {
		e := &ents[i]
		fn(publicEntry(dir, e))
		if e.kind == kindDir {
			if err := s.flatten(ctx, e.sum, joinPath(dir, e.name), fn); err != nil {
				return err
			}
		}
	}
	return nil
}
