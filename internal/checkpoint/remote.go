package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
)

// Remote is an object store that checkpoints are copied to and from.
// Names are "/"-separated paths such as "objects/<hex>"; a Remote may add a
// prefix of its own. Put must make an object visible whole or not at all,
// as every S3-compatible store does.
type Remote interface {
	Exists(ctx context.Context, name string) (bool, error)
	Put(ctx context.Context, name string, r io.Reader, size int64) error
	// Get opens an object; a missing one is an error wrapping ErrNotFound.
	Get(ctx context.Context, name string) (io.ReadCloser, error)
}

// Remote layout (see the package doc).
const (
	remoteObjects = "objects/"
	remoteTrees   = "trees/"
	remoteRefs    = "refs/"
)

func objectName(h hash) string { return remoteObjects + h.String() }
func treeName(h hash) string   { return remoteTrees + h.String() }

// Transfer says what Push or Pull copied.
type Transfer struct {
	// Copied and CopiedBytes count the objects copied and their size.
	Copied      int
	CopiedBytes int64
	// Skipped and SkippedBytes count the objects already at the
	// destination. Push counts a directory it finds complete on the remote
	// as one object, its manifest, and visits nothing under it.
	Skipped      int
	SkippedBytes int64
}

// defaultTransfers is how many objects Push and Pull copy at once when
// Options.Transfers is zero: a workspace is mostly small files, for which
// a request's round trip costs more than its bytes.
const defaultTransfers = 16

// maxManifest bounds a manifest fetched from a remote, which is read into
// memory before its hash can be checked: about a million entries.
const maxManifest = 64 << 20

// Limits on the tree a remote checkpoint expands to, counting a
// subdirectory named more than once each time, so that no count overflows.
const (
	maxTreeEntries = math.MaxInt32
	maxTreeBytes   = 1 << 62
)

// Push copies checkpoint id to r: every file content to objects/<hex> and
// every directory manifest to trees/<hex>, a manifest only after all that
// it names, so that a manifest on the remote vouches for its whole
// subtree. Push does not descend into a directory whose manifest the
// remote already holds and copies no file it already holds, so pushing a
// workspace that changed a little since its last push costs a request per
// changed file and per directory on the path to one. Objects are read
// from the store and checked against their hash before they are sent.
func (s *Store) Push(ctx context.Context, id string, r Remote) (Transfer, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return Transfer{}, err
	}
	root, err := s.rootOf(id)
	if err != nil {
		return Transfer{}, err
	}
	p := &pusher{s: s, r: r, copier: newCopier(ctx, s.opts.Transfers)}
	err = p.run(func() error {
		_, err := p.tree(root)
		return err
	})
	return p.tr, err
}

// Pull copies checkpoint id from r into the store and records it as a
// checkpoint of key, like one Checkpoint took, so that List shows it,
// Restore writes it and Prune keeps its objects. Only objects the store
// lacks are fetched. Everything fetched is checked before it enters the
// store: an object that does not hash to its name, or a file whose length
// differs from its manifest's record, is an error wrapping ErrCorrupt that
// names it; so is a manifest that does not parse or nests deeper than a
// checkpoint can. Objects are written as Checkpoint writes them (to tmp/,
// then fsynced and renamed), large ones streamed, and the index line
// appended after. A failed or cancelled Pull records nothing and leaves no
// object behind.
//
// A checkpoint id that the remote does not hold is an error wrapping
// ErrNotFound; any other object missing from it is ErrCorrupt.
func (s *Store) Pull(ctx context.Context, id string, r Remote, key Key) (Checkpoint, Transfer, error) {
	if key.Session == "" {
		return Checkpoint{}, Transfer{}, fmt.Errorf("checkpoint: empty session id")
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return Checkpoint{}, Transfer{}, err
	}
	root, err := parseHash(id)
	if err != nil {
		return Checkpoint{}, Transfer{}, err
	}
	now := s.opts.Clock()
	p := &puller{s: s, r: r, txn: s.newTxn(), copier: newCopier(ctx, s.opts.Transfers)}
	var st treeStats
	err = p.run(func() error {
		var err error
		st, err = p.tree(root, 0)
		return err
	})
	if err == nil {
		err = p.check()
	}
	if err != nil {
		p.txn.abort()
		return Checkpoint{}, p.tr, err
	}
	objs, newBytes, err := p.txn.commit()
	if err != nil {
		p.txn.abort()
		return Checkpoint{}, p.tr, err
	}

	run := s.runLock(key.Session)
	run.Lock()
	defer run.Unlock()
	s.mu.Lock()
	ss, err := s.sessionLocked(key.Session)
	var ix *sessionIndex
	if err == nil {
		ix = ss.index
	}
	s.mu.Unlock()
	if err != nil {
		return Checkpoint{}, p.tr, err
	}
	c := Checkpoint{
		ID:         id,
		Session:    key.Session,
		ToolUseID:  key.ToolUseID,
		Seq:        ix.nextSeq,
		Time:       now,
		Files:      int(st.files),
		Dirs:       int(st.dirs),
		Symlinks:   int(st.symlinks),
		Bytes:      st.bytes,
		NewObjects: objs,
		NewBytes:   newBytes,
	}
	if err := s.appendRecord(ix, c); err != nil {
		return Checkpoint{}, p.tr, err
	}
	return c, p.tr, nil
}

func (s *Store) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// copier runs one Push or Pull on up to Options.Transfers goroutines
// (see tokens), as the snapshot walker does. Each object is copied once
// however often the tree names it: later askers wait for the first (a
// flight) and share its result.
type copier struct {
	parent context.Context // the caller's: check looks at it
	ctx    context.Context // for requests; cancelled at the first error
	cancel context.CancelCauseFunc
	sem    tokens

	mu      sync.Mutex // guards the fields below
	flights map[flightKey]*flight
	tr      Transfer
	err     error // the first error
}

type flightKey struct {
	h    hash
	tree bool // a manifest, rather than a file with the same bytes
}

type flight struct {
	done chan struct{} // closed when st and err are set
	st   treeStats
	err  error
}

// treeStats sums up a tree pulled from a remote.
type treeStats struct {
	files, dirs, symlinks int64
	bytes                 int64
	height                int // directory levels below the root
}

// add counts a subdirectory's tree, or with sub false a file.
func (t *treeStats) add(o treeStats, sub bool) error {
	t.files += o.files
	t.dirs += o.dirs
	t.symlinks += o.symlinks
	if sub {
		t.height = max(t.height, o.height+1)
	}
	if t.files+t.dirs+t.symlinks > maxTreeEntries || o.bytes > maxTreeBytes-t.bytes {
		return errTooLarge
	}
	t.bytes += o.bytes
	return nil
}

var errTooLarge = fmt.Errorf("%w: the tree holds more entries or bytes than a checkpoint can", ErrCorrupt)

func newCopier(ctx context.Context, n int) *copier {
	if n <= 0 {
		n = defaultTransfers
	}
	c := &copier{parent: ctx, sem: make(tokens, n), flights: make(map[flightKey]*flight)}
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	return c
}

// run calls fn on the calling goroutine, holding a token.
func (c *copier) run(fn func() error) error {
	defer c.cancel(nil)
	var err error
	c.sem.run(func() { err = fn() })
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return err
}

// fail records the copy's first error and cancels the requests under way.
func (c *copier) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		c.cancel(err)
	}
	c.mu.Unlock()
}

// check returns the copy's first error, or the caller's context's.
func (c *copier) check() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.parent.Err(); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// once runs fn for key the first time key is asked for; later calls wait
// for that one and return its result.
func (c *copier) once(key flightKey, fn func() (treeStats, error)) (treeStats, error) {
	c.mu.Lock()
	f, ok := c.flights[key]
	if !ok {
		f = &flight{done: make(chan struct{})}
		c.flights[key] = f
	}
	c.mu.Unlock()
	if ok {
		select {
		case <-f.done:
		default:
			c.sem.lend(func() { <-f.done })
		}
		return f.st, f.err
	}
	f.st, f.err = fn()
	if f.err != nil {
		c.fail(f.err)
	}
	close(f.done)
	return f.st, f.err
}

// counted adds an object to the transfer's counts.
func (c *copier) counted(copied bool, size int64) {
	c.mu.Lock()
	if copied {
		c.tr.Copied++
		c.tr.CopiedBytes += size
	} else {
		c.tr.Skipped++
		c.tr.SkippedBytes += size
	}
	c.mu.Unlock()
}

// group returns a group for the copies of one directory's entries.
func (c *copier) group() *group { return &group{c: c, f: fanout{t: c.sem}} }

// group runs the copies of one directory's entries.
type group struct {
	c *copier
	f fanout
}

// do runs fn on a new goroutine if a token is free, inline otherwise. An
// error fails the whole copy; once one has, do starts nothing more.
func (g *group) do(fn func() error) {
	if g.c.check() != nil {
		return
	}
	g.f.do(func() {
		if err := fn(); err != nil {
			g.c.fail(err)
		}
	})
}

// wait waits for the group and returns the copy's first error, if any.
func (g *group) wait() error {
	g.f.wait()
	return g.c.check()
}

type pusher struct {
	*copier
	s *Store
	r Remote
}

// tree copies the directory manifest h and everything under it, the
// manifest last.
func (p *pusher) tree(h hash) (treeStats, error) {
	return p.once(flightKey{h, true}, func() (treeStats, error) {
		if err := p.check(); err != nil {
			return treeStats{}, err
		}
		b, err := p.s.readObject(h)
		if err != nil {
			return treeStats{}, err
		}
		ents, err := decodeManifest(b)
		if err != nil {
			return treeStats{}, fmt.Errorf("%w (object %s)", err, h)
		}
		name := treeName(h)
		there, err := p.r.Exists(p.ctx, name)
		if err != nil {
			return treeStats{}, fmt.Errorf("checkpoint: remote %s: %w", name, err)
		}
		if there {
			p.counted(false, int64(len(b)))
			return treeStats{}, nil
		}
		g := p.group()
		for i := range ents {
			e := &ents[i]
			switch e.kind {
			case kindFile:
				g.do(func() error { return p.file(e.sum) })
			case kindDir:
				g.do(func() error {
					_, err := p.tree(e.sum)
					return err
				})
			}
		}
		if err := g.wait(); err != nil {
			return treeStats{}, err
		}
		if err := p.r.Put(p.ctx, name, bytes.NewReader(b), int64(len(b))); err != nil {
			return treeStats{}, fmt.Errorf("checkpoint: remote %s: %w", name, err)
		}
		p.counted(true, int64(len(b)))
		return treeStats{}, nil
	})
}

// file copies the file content h unless the remote has it.
func (p *pusher) file(h hash) error {
	_, err := p.once(flightKey{h, false}, func() (treeStats, error) {
		if err := p.check(); err != nil {
			return treeStats{}, err
		}
		name := objectName(h)
		there, err := p.r.Exists(p.ctx, name)
		if err != nil {
			return treeStats{}, fmt.Errorf("checkpoint: remote %s: %w", name, err)
		}
		if there {
			var size int64
			if info, err := os.Lstat(p.s.objectPath(h)); err == nil {
				size = info.Size()
			}
			p.counted(false, size)
			return treeStats{}, nil
		}
		size, err := p.s.sendObject(p.ctx, h, func(r io.Reader, size int64) error {
			return p.r.Put(p.ctx, name, r, size)
		})
		if err != nil {
			return treeStats{}, err
		}
		p.counted(true, size)
		return treeStats{}, nil
	})
	return err
}

// sendObject calls send with the content of object h, after checking it
// against its hash, so that a store damaged on disk never spreads the
// damage to a remote shared by other workers. Small objects are read
// once, into memory; larger ones twice, hashing and then sending.
func (s *Store) sendObject(ctx context.Context, h hash, send func(io.Reader, int64) error) (int64, error) {
	f, err := s.openObject(h)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	size := info.Size()
	var body io.Reader = f
	if size <= smallObject {
		b := make([]byte, size)
		if _, err := io.ReadFull(f, b); err != nil {
			return 0, fmt.Errorf("checkpoint: read object %s: %w", h, err)
		}
		if sha256.Sum256(b) != h {
			return 0, fmt.Errorf("%w: object %s does not match its hash", ErrCorrupt, h)
		}
		body = bytes.NewReader(b)
	} else {
		d := sha256.New()
		if _, err := io.Copy(d, ctxReader{ctx, f}); err != nil {
			return 0, fmt.Errorf("checkpoint: read object %s: %w", h, err)
		}
		if hash(d.Sum(nil)) != h {
			return 0, fmt.Errorf("%w: object %s does not match its hash", ErrCorrupt, h)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, fmt.Errorf("checkpoint: read object %s: %w", h, err)
		}
	}
	if err := send(body, size); err != nil {
		return 0, fmt.Errorf("checkpoint: remote %s: %w", objectName(h), err)
	}
	return size, nil
}

// smallObject: objects up to this size are sent from memory.
const smallObject = 1 << 20

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

type puller struct {
	*copier
	s   *Store
	r   Remote
	txn *txn
}

// tree fetches what the store lacks of the directory manifest h, found
// depth levels below the root, and of everything under it, and returns
// what the tree holds. A manifest the store already has is read from it
// and descended into all the same: local manifests are cheap, and the
// store promises only that recorded checkpoints are whole.
func (p *puller) tree(h hash, depth int) (treeStats, error) {
	if depth > maxDepth {
		return treeStats{}, fmt.Errorf("%w: tree %s is nested deeper than %d directories", ErrCorrupt, h, maxDepth)
	}
	st, err := p.once(flightKey{h, true}, func() (treeStats, error) { return p.fetchTree(h, depth) })
	if err == nil && depth+st.height > maxDepth {
		// A subtree named at several depths was fetched at a shallower one.
		return treeStats{}, fmt.Errorf("%w: tree %s is nested deeper than %d directories", ErrCorrupt, h, maxDepth)
	}
	return st, err
}

func (p *puller) fetchTree(h hash, depth int) (treeStats, error) {
	if err := p.check(); err != nil {
		return treeStats{}, err
	}
	var b []byte
	local := p.s.hasObject(h)
	var err error
	if local {
		b, err = p.s.readObject(h)
	} else {
		b, err = p.getManifest(h, depth)
	}
	if err != nil {
		return treeStats{}, err
	}
	ents, err := decodeManifest(b)
	if err != nil {
		return treeStats{}, fmt.Errorf("%w (tree %s)", err, h)
	}
	var sum treeStats
	for i := range ents {
		switch e := &ents[i]; e.kind {
		case kindFile:
			if err := sum.add(treeStats{files: 1, bytes: e.size}, false); err != nil {
				return treeStats{}, err
			}
		case kindSymlink:
			sum.symlinks++
		case kindDir:
			sum.dirs++
		}
	}
	subs := make([]treeStats, len(ents)) // each written by one goroutine
	g := p.group()
	for i := range ents {
		e := &ents[i]
		switch e.kind {
		case kindFile:
			g.do(func() error { return p.file(e.sum, e.size) })
		case kindDir:
			g.do(func() error {
				var err error
				subs[i], err = p.tree(e.sum, depth+1)
				return err
			})
		}
	}
	if err := g.wait(); err != nil {
		return treeStats{}, err
	}
	for i := range ents {
		if ents[i].kind == kindDir {
			if err := sum.add(subs[i], true); err != nil {
				return treeStats{}, err
			}
		}
	}
	if local {
		p.counted(false, int64(len(b)))
		return sum, nil
	}
	if err := p.txn.putHashed(h, b); err != nil {
		return treeStats{}, err
	}
	p.counted(true, int64(len(b)))
	return sum, nil
}

// getManifest fetches the manifest h from the remote and checks it.
func (p *puller) getManifest(h hash, depth int) ([]byte, error) {
	name := treeName(h)
	rc, err := p.r.Get(p.ctx, name)
	if errors.Is(err, ErrNotFound) {
		if depth == 0 {
			return nil, fmt.Errorf("%w: checkpoint %s is not in the remote store", ErrNotFound, h)
		}
		return nil, fmt.Errorf("%w: remote object %s is missing", ErrCorrupt, name)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: remote %s: %w", name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: remote %s: %w", name, err)
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("%w: remote object %s is larger than any manifest (%d bytes)", ErrCorrupt, name, maxManifest)
	}
	if sha256.Sum256(b) != h {
		return nil, fmt.Errorf("%w: remote object %s does not match its hash", ErrCorrupt, name)
	}
	return b, nil
}

// file fetches the file content h, of size bytes, unless the store has
// it. It is streamed to a temporary file while hashed, and kept only if
// both its length and its hash are right.
func (p *puller) file(h hash, size int64) error {
	_, err := p.once(flightKey{h, false}, func() (treeStats, error) {
		if err := p.check(); err != nil {
			return treeStats{}, err
		}
		// reserve is false also when a manifest with these bytes is being
		// fetched: it is written once.
		if !p.txn.reserve(h) {
			p.counted(false, size)
			return treeStats{}, nil
		}
		n, tmp, err := p.fetchFile(h, size)
		if err != nil {
			p.txn.release(h)
			return treeStats{}, err
		}
		p.txn.done(h, tmp, n)
		p.counted(true, n)
		return treeStats{}, nil
	})
	return err
}

func (p *puller) fetchFile(h hash, size int64) (n int64, tmp string, err error) {
	name := objectName(h)
	rc, err := p.r.Get(p.ctx, name)
	if errors.Is(err, ErrNotFound) {
		return 0, "", fmt.Errorf("%w: remote object %s is missing", ErrCorrupt, name)
	}
	if err != nil {
		return 0, "", fmt.Errorf("checkpoint: remote %s: %w", name, err)
	}
	defer rc.Close()
	f, err := p.txn.createTemp()
	if err != nil {
		return 0, "", err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("checkpoint: write object: %w", cerr)
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	d := sha256.New()
	// One byte more than recorded, to tell an object that is too long.
	limit := size
	if limit < math.MaxInt64 {
		limit++
	}
	n, err = io.Copy(io.MultiWriter(f, d), io.LimitReader(rc, limit))
	switch {
	case err != nil:
		return n, "", fmt.Errorf("checkpoint: remote %s: %w", name, err)
	case n != size:
		return n, "", fmt.Errorf("%w: remote object %s holds %s bytes, its manifest records %d", ErrCorrupt, name, lengthText(n, size), size)
	case hash(d.Sum(nil)) != h:
		return n, "", fmt.Errorf("%w: remote object %s does not match its hash", ErrCorrupt, name)
	}
	return n, f.Name(), nil
}

func lengthText(n, size int64) string {
	if n > size {
		return "more than " + fmt.Sprint(size)
	}
	return fmt.Sprint(n)
}
