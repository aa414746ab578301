package checkpoint

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Retention says which checkpoints Prune keeps. Zero fields impose no
// limit.
type Retention struct {
	// MaxCount is how many of each session's newest checkpoints to keep.
	MaxCount int
	// MaxAge removes checkpoints taken longer ago than this.
	MaxAge time.Duration
	// MaxBytes bounds the total size of the objects the remaining
	// checkpoints reference: the oldest checkpoints, across sessions, go
	// first. Each session's newest checkpoint is exempt (the next one
	// builds on it), so the store may stay above MaxBytes.
	MaxBytes int64
}

// PruneReport says what Prune removed and what is left.
type PruneReport struct {
	Removed        int // checkpoints removed
	Kept           int // checkpoints left
	ObjectsRemoved int
	BytesRemoved   int64
	Objects        int   // objects left
	Bytes          int64 // their total size
}

// Prune removes the checkpoints Retention does not keep, then deletes
// every object that no remaining checkpoint references (mark and sweep).
// Objects of the stat caches held in memory (each cached session's latest
// checkpoint, even if removed) are kept, so that the next checkpoint can
// rely on them; Forget releases them.
//
// Prune holds the store exclusively: Checkpoint and Restore calls wait
// for it, and it waits for them. A cancelled or crashed Prune leaves a
// consistent store: indexes are replaced atomically, and only objects
// found unreferenced are deleted.
func (s *Store) Prune(ctx context.Context, r Retention) (PruneReport, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	sessions, err := s.loadAllSessions()
	if err != nil {
		return PruneReport{}, err
	}
	var rep PruneReport

	// Select.
	now := s.opts.Clock()
	keep := make(map[*session][]Checkpoint, len(sessions))
	for _, ss := range sessions {
		k := ss.index.records
		if r.MaxCount > 0 && len(k) > r.MaxCount {
			k = k[len(k)-r.MaxCount:]
		}
		if r.MaxAge > 0 {
			cut := now.Add(-r.MaxAge)
			k = slices.DeleteFunc(slices.Clone(k), func(c Checkpoint) bool { return c.Time.Before(cut) })
		}
		keep[ss] = k
	}
	s.mu.Lock()
	var cached []hash
	for _, ss := range s.sessions {
		if ss.cache != nil {
			cached = append(cached, ss.cache.id())
		}
	}
	s.mu.Unlock()
	if r.MaxBytes > 0 {
		if err := s.selectBytes(ctx, r.MaxBytes, keep, cached); err != nil {
			return rep, err
		}
	}

	// Rewrite the indexes that lose records.
	for _, ss := range sessions {
		k := keep[ss]
		rep.Kept += len(k)
		if len(k) == len(ss.index.records) {
			continue
		}
		rep.Removed += len(ss.index.records) - len(k)
		size, err := ss.index.rewrite(s, k)
		if err != nil {
			return rep, err
		}
		s.mu.Lock()
		ss.index.records, ss.index.size = k, size
		s.mu.Unlock()
	}

	// Mark.
	marked := make(map[hash]int64)
	for _, ss := range sessions {
		for _, c := range keep[ss] {
			h, err := parseHash(c.ID)
			if err != nil {
				return rep, err
			}
			if _, err := s.mark(ctx, h, marked); err != nil {
				return rep, fmt.Errorf("checkpoint: prune: keeping %s: %w", c.ID, err)
			}
		}
	}
	for _, h := range cached {
		if _, err := s.mark(ctx, h, marked); err != nil {
			return rep, fmt.Errorf("checkpoint: prune: %w", err)
		}
	}

	// Sweep.
	objs := filepath.Join(s.dir, objectsDir)
	fans, err := os.ReadDir(objs)
	if err != nil {
		return rep, fmt.Errorf("checkpoint: prune: %w", err)
	}
	for _, fan := range fans {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("checkpoint: prune: %w", err)
		}
		if !fan.IsDir() || len(fan.Name()) != 2 {
			continue
		}
		dir := filepath.Join(objs, fan.Name())
		names, err := os.ReadDir(dir)
		if err != nil {
			return rep, fmt.Errorf("checkpoint: prune: %w", err)
		}
		for _, n := range names {
			var h hash
			x := fan.Name() + n.Name()
			if len(x) != 2*len(h) || strings.ToLower(x) != x {
				continue
			}
			if _, err := hex.Decode(h[:], []byte(x)); err != nil {
				continue
			}
			if _, ok := marked[h]; ok {
				continue
			}
			var size int64
			if info, err := n.Info(); err == nil {
				size = info.Size()
			}
			if err := os.Remove(filepath.Join(dir, n.Name())); err != nil && !os.IsNotExist(err) {
				return rep, fmt.Errorf("checkpoint: prune: %w", err)
			}
			rep.ObjectsRemoved++
			rep.BytesRemoved += size
		}
	}
	rep.Objects = len(marked)
	for _, n := range marked {
		rep.Bytes += n
	}
	// Loading every index above brought all sessions into memory; keep
	// only those with a stat cache or watches (the others load again when
	// used).
	s.mu.Lock()
	for name, ss := range s.sessions {
		if ss.cache == nil && ss.track == nil {
			delete(s.sessions, name)
		}
	}
	s.mu.Unlock()
	return rep, nil
}

// selectBytes drops from keep the oldest checkpoints, across sessions,
// until the objects of the rest fit in max. Each session's newest
// checkpoint and the cached roots count first and are never dropped.
func (s *Store) selectBytes(ctx context.Context, max int64, keep map[*session][]Checkpoint, cached []hash) error {
	marked := make(map[hash]int64)
	var total int64
	add := func(id string) error {
		h, err := parseHash(id)
		if err != nil {
			return err
		}
		n, err := s.mark(ctx, h, marked)
		total += n
		return err
	}
	for _, h := range cached {
		if err := add(h.String()); err != nil {
			return err
		}
	}
	type ref struct {
		ss *session
		c  Checkpoint
	}
	var rest []ref
	for ss, k := range keep {
		if len(k) == 0 {
			continue
		}
		if err := add(k[len(k)-1].ID); err != nil {
			return err
		}
		for _, c := range k[:len(k)-1] {
			rest = append(rest, ref{ss, c})
		}
	}
	// Newest first.
	slices.SortFunc(rest, func(a, b ref) int {
		if c := b.c.Time.Compare(a.c.Time); c != 0 {
			return c
		}
		if c := cmp.Compare(b.c.Seq, a.c.Seq); c != 0 {
			return c
		}
		return strings.Compare(b.ss.name, a.ss.name)
	})
	drop := make(map[*session]map[int64]bool)
	over := total > max
	for _, r := range rest {
		if !over {
			if err := add(r.c.ID); err != nil {
				return err
			}
			over = total > max
		}
		if over {
			if drop[r.ss] == nil {
				drop[r.ss] = make(map[int64]bool)
			}
			drop[r.ss][r.c.Seq] = true
		}
	}
	for ss, seqs := range drop {
		keep[ss] = slices.DeleteFunc(slices.Clone(keep[ss]), func(c Checkpoint) bool { return seqs[c.Seq] })
	}
	return nil
}

// mark adds the manifest h and everything it references to marked, with
// their sizes, and returns the bytes it added.
func (s *Store) mark(ctx context.Context, h hash, marked map[hash]int64) (int64, error) {
	if _, ok := marked[h]; ok {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b, err := s.readObject(h)
	if err != nil {
		return 0, err
	}
	ents, err := decodeManifest(b)
	if err != nil {
		return 0, fmt.Errorf("object %s: %w", h, err)
	}
	marked[h] = int64(len(b))
	added := int64(len(b))
	for i := range ents {
		e := &ents[i]
		switch e.kind {
		case kindFile:
			if _, ok := marked[e.sum]; !ok {
				marked[e.sum] = e.size
				added += e.size
			}
		case kindDir:
			n, err := s.mark(ctx, e.sum, marked)
			if err != nil {
				return added, err
			}
			added += n
		}
	}
	return added, nil
}

// loadAllSessions loads the index of every session in the store. s.gcMu
// is held exclusively.
func (s *Store) loadAllSessions() ([]*session, error) {
	dir := filepath.Join(s.dir, sessionsDir)
	files, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	var out []*session
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".jsonl") {
			continue
		}
		path := filepath.Join(dir, f.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		ix := &sessionIndex{path: path}
		ix.records, ix.size, ix.nextSeq, err = parseIndex(data, &ix.session)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: index %s: %w", path, err)
		}
		if ix.session == "" || s.indexPath(ix.session) != path {
			continue // not an index this store wrote
		}
		ss := s.sessions[ix.session]
		if ss == nil {
			ss = &session{name: ix.session}
			s.sessions[ix.session] = ss
		}
		if ss.index == nil {
			ss.index = ix // as read: no need to read it again
		}
		out = append(out, ss)
	}
	return out, nil
}
