//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// smallFile: files up to this size are read into memory once, hashed and,
// if new, written from there; larger ones are streamed twice (hash, then
// copy while hashing again), so memory stays bounded.
const smallFile = 256 << 10

const chunk = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, smallFile); return &b }}

// walker takes one snapshot. Directories are walked by up to
// Options.Parallelism goroutines (see tokens); each directory's files are
// read by the goroutine that lists it.
type walker struct {
	s     *Store
	ctx   context.Context
	txn   *txn
	prev  *snapCache // nil: no stat cache, every file is read
	track *tracker   // nil: directories are not watched
	// visit, when not nil, holds the only directories that may have
	// changed since prev (see tracker.begin); the others are kept as prev
	// has them. Nil: every directory is visited.
	visit   map[string]bool
	rootDev uint64
	// Entries whose change time is at or after these (ns) are racy: for
	// file systems with sub-second timestamps, and with whole seconds.
	racyFine, racyCoarse int64
	sem                  tokens // a token per goroutine at work

	mu      sync.Mutex // guards dirs and skipped
	dirs    map[string]*dirState
	skipped []Skip
	// prevSkips holds prev's skipped entries by the directory they are
	// in, for directories kept as they were; built on first use.
	prevSkips     map[string][]Skip
	prevSkipsOnce sync.Once

	hashed, visited atomic.Int64
	// entries counts the names listed, and those under directories kept
	// from prev, against Options.MaxEntries.
	entries atomic.Int64
}

// count adds n entries, and fails once there are more than the store
// allows.
func (w *walker) count(n int) error {
	if max := w.s.opts.MaxEntries; w.entries.Add(int64(n)) > int64(max) {
		return fmt.Errorf("%w: more than %d; no checkpoint was taken (checkpoints.max_entries raises the bound)", ErrTooManyEntries, max)
	}
	return nil
}

// isRacy reports whether an entry's stat fails to vouch for its content at
// the next checkpoint. Any change to a file sets its change time (ctime)
// to the kernel's coarse clock, which is at most a tick behind the system
// clock and cannot be set by the file's owner. A file hashed at time t can
// therefore change again with its stat unchanged only if its ctime is
// within a tick of t (or, where timestamps are whole seconds, within their
// granularity, up to two seconds): such entries are hashed again next
// time, as git does with "racily clean" index entries. The reference is
// the walk's start, which is earlier than any read, so the test errs on
// the side of reading.
func (w *walker) isRacy(k statKey) bool {
	if k.ctime%1e9 == 0 && k.mtime%1e9 == 0 {
		return k.ctime >= w.racyCoarse
	}
	return k.ctime >= w.racyFine
}

// snapshot records the tree under root. With a tracker whose events
// cover everything since prev (tracked: prev is the checkpoint the
// tracker's epoch began with), only the directories that changed are
// visited; a workspace with hard-linked files is visited whole.
func (s *Store) snapshot(ctx context.Context, root string, prev *snapCache, tracked bool, t *txn, track *tracker) (snapResult, error) {
	var visit map[string]bool
	if track != nil {
		v, ok := track.begin()
		if ok && tracked && prev.dirs[""].tot.multi == 0 {
			visit = v
		}
	}
	res, err := s.walk(ctx, root, prev, t, track, visit)
	if err == nil && visit != nil && res.cache.dirs[""].tot.multi > 0 {
		// A file with another link may have been written through a
		// directory that had no event.
		res, err = s.walk(ctx, root, prev, t, track, nil)
	}
	return res, err
}

func (s *Store) walk(ctx context.Context, root string, prev *snapCache, t *txn, track *tracker, visit map[string]bool) (snapResult, error) {
	start := time.Now()
	w := &walker{
		s:          s,
		ctx:        ctx,
		txn:        t,
		prev:       prev,
		track:      track,
		visit:      visit,
		racyFine:   start.Add(-s.racyWindow).UnixNano(),
		racyCoarse: start.Add(-max(s.racyWindow, 2*time.Second)).UnixNano(),
		sem:        make(tokens, s.opts.Parallelism),
		dirs:       make(map[string]*dirState),
	}
	fd, err := openat(-100 /* AT_FDCWD */, root, openDir, 0)
	if err != nil {
		return snapResult{}, fmt.Errorf("checkpoint: open workspace: %w", &os.PathError{Op: "open", Path: root, Err: err})
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return snapResult{}, fmt.Errorf("checkpoint: stat workspace: %w", err)
	}
	w.rootDev = st.Dev
	var prevRoot *dirState
	if prev != nil {
		prevRoot = prev.dirs[""]
	}
	var d *dirState
	if w.unchanged("", keyOf(&st), prevRoot) {
		d = prevRoot
		w.keep("", d)
	} else {
		w.sem.run(func() { d, err = w.walkDir(fd, "", 0, keyOf(&st), prevRoot) })
		if err != nil {
			return snapResult{}, err
		}
	}
	// Directories kept from prev were counted, not listed.
	if err := w.count(0); err != nil {
		return snapResult{}, err
	}
	slices.SortFunc(w.skipped, func(a, b Skip) int { return strings.Compare(a.Path, b.Path) })
	return snapResult{
		cache:   &snapCache{root: root, dirs: w.dirs, skipped: w.skipped},
		hashed:  int(w.hashed.Load()),
		visited: int(w.visited.Load()),
	}, nil
}

// unchanged reports whether the directory at rel, whose stat is now st,
// is known to be as prev recorded it without looking inside: no event
// came from it or from anywhere under it.
func (w *walker) unchanged(rel string, st statKey, prev *dirState) bool {
	return w.visit != nil && prev != nil && !w.visit[rel] && prev.st == st
}

// keep records the directory at rel, and everything under it, as the
// previous checkpoint had them, skipped entries included.
func (w *walker) keep(rel string, d *dirState) {
	w.entries.Add(d.tot.listed)
	w.prevSkipsOnce.Do(func() {
		w.prevSkips = make(map[string][]Skip)
		for _, sk := range w.prev.skipped {
			dir := parentOf(sk.Path)
			w.prevSkips[dir] = append(w.prevSkips[dir], sk)
		}
	})
	var add func(rel string, d *dirState)
	kept := make(map[string]*dirState)
	var skips []Skip
	add = func(rel string, d *dirState) {
		kept[rel] = d
		skips = append(skips, w.prevSkips[rel]...)
		for i := range d.ents {
			if d.ents[i].kind != kindDir {
				continue
			}
			sub := joinPath(rel, d.ents[i].name)
			if sd := w.prev.dirs[sub]; sd != nil {
				add(sub, sd)
			}
		}
	}
	add(rel, d)
	w.mu.Lock()
	maps.Copy(w.dirs, kept)
	w.skipped = append(w.skipped, skips...)
	w.mu.Unlock()
}

func (w *walker) skip(rel, name, reason string) {
	w.mu.Lock()
	w.skipped = append(w.skipped, Skip{Path: joinPath(rel, name), Reason: reason})
	w.mu.Unlock()
}

func reasonFor(err error) string {
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return ReasonPermission
	}
	return err.Error()
}

// testHookBeforeWatch, when set by a test, runs between a directory's open
// and its watch: where a sandbox would swap the directory for a symlink.
var testHookBeforeWatch func(rel string)

// testHookListed, when set by a test, sees and may change each directory
// listing as the kernel returned it.
var testHookListed func(rel string, names []string) []string

// walkDir records the directory open at fd, whose own stat is self, given
// its state at the previous checkpoint (or nil).
func (w *walker) walkDir(fd int, rel string, depth int, self statKey, prev *dirState) (*dirState, error) {
	if err := w.ctx.Err(); err != nil {
		return nil, err
	}
	if w.track != nil {
		if testHookBeforeWatch != nil {
			testHookBeforeWatch(rel)
		}
		// Before listing: a change after this point raises an event.
		w.track.watch(fd, rel)
	}
	w.visited.Add(1)
	d := &dirState{st: self, racy: w.isRacy(self)}
	if prev != nil && !prev.racy && prev.st == self {
		// Adding, removing or renaming an entry sets the directory's
		// mtime and ctime: the listing is the same as last time.
		d.names = prev.names
	} else {
		bp := bufPool.Get().(*[]byte)
		// One name past the bound is enough to refuse the checkpoint.
		names, err := readDirNames(fd, (*bp)[:cap(*bp)], w.s.opts.MaxEntries+1)
		bufPool.Put(bp)
		if err != nil {
			return nil, &os.PathError{Op: "readdir", Path: rel, Err: err}
		}
		if testHookListed != nil {
			names = testHookListed(rel, names)
		}
		// A name removed and created again between two getdents(2)
		// calls can be listed twice (btrfs, XFS, and tmpfs before Linux
		// 6.6 list by offset, and the new entry takes a later one); a
		// manifest with a name twice would not decode, and nor would the
		// checkpoint restore.
		slices.Sort(names)
		d.names = slices.Compact(names)
	}
	if err := w.count(len(d.names)); err != nil {
		return nil, err
	}
	var prevEnts []cachedEntry
	if prev != nil {
		prevEnts = prev.ents
	}
	d.ents = make([]cachedEntry, 0, len(d.names))
	type subdir struct {
		i    int // in d.ents
		name string
		st   statKey
	}
	var subs []subdir
	var nameBuf []byte
	var st syscall.Stat_t
	j := 0
	for _, name := range d.names {
		var p *cachedEntry
		for j < len(prevEnts) && prevEnts[j].name < name {
			j++
		}
		if j < len(prevEnts) && prevEnts[j].name == name {
			p = &prevEnts[j]
		}
		if err := fstatat(fd, name, &nameBuf, &st); err != nil {
			if err != syscall.ENOENT {
				w.skip(rel, name, reasonFor(err))
			}
			continue
		}
		if st.Dev != w.rootDev {
			w.skip(rel, name, ReasonMount)
			continue
		}
		k := keyOf(&st)
		if st.Nlink > 1 && k.mode&syscall.S_IFMT == syscall.S_IFREG {
			d.tot.multi++
		}
		ce := cachedEntry{entry: entry{name: name, mode: k.mode & modeMask}, st: k, racy: w.isRacy(k)}
		switch k.mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			ce.kind = kindFile
			if p != nil && p.kind == kindFile && !p.racy && p.st == k {
				ce.sum, ce.size = p.sum, p.size
				break
			}
			sum, k2, reason, err := w.hashFile(fd, name, k, &nameBuf)
			if err != nil {
				return nil, err
			}
			if reason != "" {
				if reason != vanished {
					w.skip(rel, name, reason)
				}
				continue
			}
			ce.sum, ce.size, ce.st, ce.racy = sum, k2.size, k2, w.isRacy(k2)
			ce.mode = k2.mode & modeMask
		case syscall.S_IFLNK:
			ce.kind = kindSymlink
			if p != nil && p.kind == kindSymlink && !p.racy && p.st == k {
				ce.target, ce.size = p.target, p.size
				break
			}
			target, err := readlinkat(fd, name, k.size)
			if err != nil {
				if err == syscall.ENOENT {
					continue
				}
				if err == syscall.EINVAL { // no longer a link
					w.skip(rel, name, ReasonChanged)
				} else {
					w.skip(rel, name, reasonFor(err))
				}
				continue
			}
			if target == "" || len(target) > maxTarget {
				w.skip(rel, name, ReasonBadLink)
				continue
			}
			ce.target, ce.size = target, int64(len(target))
		case syscall.S_IFDIR:
			ce.kind = kindDir
			if depth >= maxDepth {
				w.skip(rel, name, ReasonTooDeep)
				continue
			}
			subs = append(subs, subdir{i: len(d.ents), name: name, st: k})
		case syscall.S_IFIFO:
			w.skip(rel, name, ReasonFIFO)
			continue
		case syscall.S_IFSOCK:
			w.skip(rel, name, ReasonSocket)
			continue
		case syscall.S_IFCHR:
			w.skip(rel, name, ReasonCharDevice)
			continue
		case syscall.S_IFBLK:
			w.skip(rel, name, ReasonBlkDevice)
			continue
		default:
			w.skip(rel, name, ReasonOtherType)
			continue
		}
		d.ents = append(d.ents, ce)
	}

	if len(subs) > 0 {
		states := make([]*dirState, len(subs))
		errs := make([]error, len(subs))
		f := fanout{t: w.sem}
		for n, sd := range subs {
			childRel := joinPath(rel, sd.name)
			var childPrev *dirState
			if w.prev != nil {
				childPrev = w.prev.dirs[childRel]
			}
			if w.unchanged(childRel, sd.st, childPrev) {
				states[n] = childPrev
				w.keep(childRel, childPrev)
				continue
			}
			f.do(func() {
				states[n], errs[n] = w.openDir(fd, rel, sd.name, childRel, depth+1, sd.st, childPrev)
			})
		}
		f.wait()
		drop := false
		for n, sd := range subs {
			if errs[n] != nil {
				return nil, errs[n]
			}
			if states[n] == nil {
				drop = true
				d.ents[sd.i].name = "" // skipped or vanished
				continue
			}
			d.ents[sd.i].sum = states[n].sum
			d.tot.add(&states[n].tot)
		}
		if drop {
			d.ents = slices.DeleteFunc(d.ents, func(e cachedEntry) bool { return e.name == "" })
		}
	}

	d.tot.listed += int64(len(d.names))
	for i := range d.ents {
		switch d.ents[i].kind {
		case kindFile:
			d.tot.files++
			d.tot.bytes += d.ents[i].size
		case kindSymlink:
			d.tot.links++
		case kindDir:
			d.tot.dirs++
		}
	}
	if prev != nil && len(prev.ents) == len(d.ents) && sameEntries(prev.ents, d.ents) {
		d.sum = prev.sum
	} else {
		bp := bufPool.Get().(*[]byte)
		buf := encodeManifest((*bp)[:0], len(d.ents), func(i int) *entry { return &d.ents[i].entry })
		sum, err := w.txn.putBytes(buf)
		if cap(buf) <= 4*smallFile {
			*bp = buf[:0]
		}
		bufPool.Put(bp)
		if err != nil {
			return nil, err
		}
		d.sum = sum
	}
	w.mu.Lock()
	w.dirs[rel] = d
	w.mu.Unlock()
	return d, nil
}

func sameEntries(a, b []cachedEntry) bool {
	for i := range a {
		if !a[i].sameRecord(&b[i].entry) {
			return false
		}
	}
	return true
}

// openDir opens and walks a subdirectory. A nil state with a nil error
// means it is left out (skipped or vanished).
func (w *walker) openDir(parent int, rel, name, childRel string, depth int, st statKey, prev *dirState) (*dirState, error) {
	fd, err := openat(parent, name, openDir, 0)
	switch {
	case err == nil:
	case err == syscall.ENOENT:
		return nil, nil
	case err == syscall.ELOOP || err == syscall.ENOTDIR:
		// Replaced by a symlink or a file after the stat: never followed.
		w.skip(rel, name, ReasonChanged)
		return nil, nil
	default:
		w.skip(rel, name, reasonFor(err))
		return nil, nil
	}
	defer syscall.Close(fd)
	d, err := w.walkDir(fd, childRel, depth, st, prev)
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Op == "readdir" {
		w.skip(rel, name, reasonFor(pe.Err))
		return nil, nil
	}
	return d, err
}

// vanished is the skip reason of an entry deleted while it was being
// recorded: it is left out without a Skip, as if deleted just before.
const vanished = "\x00vanished"

// hashFile reads the regular file name in dirfd, whose lstat was k, and
// stores its content. It returns the stat the content belongs to, or a
// skip reason. The
// content is kept only if the file's stat after reading equals its stat
// before; otherwise the file is read once more, then skipped.
func (w *walker) hashFile(dirfd int, name string, k statKey, nameBuf *[]byte) (hash, statKey, string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			var st syscall.Stat_t
			if err := fstatat(dirfd, name, nameBuf, &st); err != nil {
				if err == syscall.ENOENT {
					return hash{}, k, vanished, nil
				}
				return hash{}, k, reasonFor(err), nil
			}
			k = keyOf(&st)
			if k.mode&syscall.S_IFMT != syscall.S_IFREG {
				return hash{}, k, ReasonChanged, nil
			}
		}
		fd, err := openRegular(dirfd, name, syscall.O_RDONLY)
		switch {
		case err == nil:
		case err == syscall.ENOENT:
			return hash{}, k, vanished, nil
		case err == errNotRegular:
			continue // replaced by a symlink, FIFO or device after the stat
		default:
			return hash{}, k, reasonFor(err), nil
		}
		if k.size > sparseMinSize {
			var fst syscall.Stat_t
			if syscall.Fstat(fd, &fst) == nil && fst.Blocks*512 < k.size/sparseRatio {
				syscall.Close(fd)
				return hash{}, k, ReasonSparse, nil
			}
		}
		w.hashed.Add(1)
		sum, ok, err := w.readFile(fd, k)
		syscall.Close(fd)
		if err != nil {
			return hash{}, k, "", err
		}
		if ok {
			return sum, k, "", nil
		}
	}
	return hash{}, k, ReasonChanged, nil
}

// A file over sparseMinSize whose blocks hold less than 1/sparseRatio of
// its size is skipped: a checkpoint stores every byte of a file, holes
// included, so a sandbox could otherwise turn a few kilobytes of its disk
// into terabytes of the store's. Reading stops at the size checked, so the
// store gets at most sparseRatio times what the file held.
const (
	sparseMinSize = 64 << 20
	sparseRatio   = 8
)

// unchanged reports whether the file open at fd still has stat k.
func unchanged(fd int, k statKey) bool {
	var st syscall.Stat_t
	return syscall.Fstat(fd, &st) == nil && keyOf(&st) == k
}

// readFile hashes the file open at fd and stores its content if the store
// lacks it. ok is false if the file changed while being read.
func (w *walker) readFile(fd int, k statKey) (sum hash, ok bool, err error) {
	if k.size <= smallFile {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		buf := (*bp)[:k.size]
		n := 0
		for n < len(buf) {
			m, err := read(fd, buf[n:])
			if err != nil {
				return sum, false, nil
			}
			if m == 0 {
				return sum, false, nil // shrank
			}
			n += m
		}
		if !unchanged(fd, k) {
			return sum, false, nil
		}
		sum = sha256.Sum256(buf)
		if err := w.txn.putHashed(sum, buf); err != nil {
			return sum, false, err
		}
		return sum, true, nil
	}

	// Large file: hash it; if new, copy it while hashing again.
	sum, ok, err = w.streamFile(fd, k, nil)
	if err != nil || !ok || !w.txn.reserve(sum) {
		return sum, ok, err
	}
	f, err := w.txn.createTemp()
	if err != nil {
		w.txn.release(sum)
		return sum, false, err
	}
	again, ok, err := w.streamFile(fd, k, f)
	cerr := f.Close()
	if err == nil && cerr != nil {
		err = fmt.Errorf("checkpoint: write object: %w", cerr)
	}
	if err != nil || !ok || again != sum {
		os.Remove(f.Name())
		w.txn.release(sum)
		return sum, false, err
	}
	w.txn.done(sum, f.Name(), k.size)
	return sum, true, nil
}

// streamFile reads the file open at fd from the start, hashing it and
// copying it to dst if not nil.
func (w *walker) streamFile(fd int, k statKey, dst *os.File) (sum hash, ok bool, err error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:chunk]
	h := sha256.New()
	var off int64
	for off < k.size {
		if err := w.ctx.Err(); err != nil {
			return sum, false, err
		}
		m, rerr := pread(fd, buf[:min(int64(len(buf)), k.size-off)], off)
		if rerr != nil || m == 0 {
			return sum, false, nil
		}
		h.Write(buf[:m])
		if dst != nil {
			if _, err := dst.Write(buf[:m]); err != nil {
				return sum, false, fmt.Errorf("checkpoint: write object: %w", err)
			}
		}
		off += int64(m)
	}
	if !unchanged(fd, k) {
		return sum, false, nil
	}
	h.Sum(sum[:0])
	return sum, true, nil
}
