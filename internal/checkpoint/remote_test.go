//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// memRemote is a Remote held in memory that records the requests it
// serves. It fails the test if a manifest arrives before an object it
// names: the order that lets Push skip a directory the remote holds.
type memRemote struct {
	t testing.TB

	mu      sync.Mutex // guards the fields below
	objs    map[string][]byte
	exists  []string
	gets    []string
	puts    []string
	failPut func(name string) error // nil: every Put succeeds
}

var _ Remote = (*memRemote)(nil)

func newMemRemote(t testing.TB) *memRemote {
	return &memRemote{t: t, objs: make(map[string][]byte)}
}

func (m *memRemote) Exists(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.exists = append(m.exists, name)
	_, ok := m.objs[name]
	return ok, nil
}

func (m *memRemote) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if int64(len(b)) != size {
		m.t.Errorf("Put %s: %d bytes, announced %d", name, len(b), size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failPut != nil {
		if err := m.failPut(name); err != nil {
			return err
		}
	}
	if h, ok := strings.CutPrefix(name, remoteTrees); ok {
		if x := fmt.Sprintf("%x", sha256.Sum256(b)); x != h {
			m.t.Errorf("Put %s: content hashes to %s", name, x)
		}
		ents, err := decodeManifest(b)
		if err != nil {
			m.t.Errorf("Put %s: %v", name, err)
		}
		for _, e := range ents {
			child := objectName(e.sum)
			if e.kind == kindDir {
				child = treeName(e.sum)
			}
			if _, ok := m.objs[child]; e.kind != kindSymlink && !ok {
				m.t.Errorf("Put %s before %s, which it names (%q)", name, child, e.name)
			}
		}
	}
	m.objs[name] = b
	m.puts = append(m.puts, name)
	return nil
}

func (m *memRemote) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gets = append(m.gets, name)
	b, ok := m.objs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return io.NopCloser(bytes.NewReader(slices.Clone(b))), nil
}

// set replaces an object, as someone with write access to the bucket could.
func (m *memRemote) set(name string, b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b == nil {
		delete(m.objs, name)
		return
	}
	m.objs[name] = b
}

func (m *memRemote) get(name string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.objs[name]
}

// requests returns and forgets the requests served so far.
func (m *memRemote) requests() (exists, gets, puts []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	exists, gets, puts = m.exists, m.gets, m.puts
	m.exists, m.gets, m.puts = nil, nil, nil
	return exists, gets, puts
}

func mustPush(t testing.TB, s *Store, id string, r Remote) Transfer {
	t.Helper()
	tr, err := s.Push(context.Background(), id, r)
	if err != nil {
		t.Fatalf("Push(%s): %v", id, err)
	}
	return tr
}

func mustPull(t testing.TB, s *Store, id string, r Remote, key Key) (Checkpoint, Transfer) {
	t.Helper()
	c, tr, err := s.Pull(context.Background(), id, r, key)
	if err != nil {
		t.Fatalf("Pull(%s): %v", id, err)
	}
	return c, tr
}

// sameCounts is what a pulled checkpoint shares with the one pushed.
type sameCounts struct {
	ID                    string
	Files, Dirs, Symlinks int
	Bytes                 int64
}

func countsOf(c Checkpoint) sameCounts {
	return sameCounts{c.ID, c.Files, c.Dirs, c.Symlinks, c.Bytes}
}

// TestPullReproducesPushedCheckpoints pushes random workspaces, with
// awkward names, modes, links, empty and large files, and pulls them
// into an empty store that never saw them.
func TestPullReproducesPushedCheckpoints(t *testing.T) {
	steps := 25
	if testing.Short() {
		steps = 10
	}
	rng := rand.New(rand.NewPCG(seed(t), 11))
	src, _ := openStore(t, Options{NoSync: true, Transfers: 3})
	remote := newMemRemote(t)
	ws := filepath.Join(t.TempDir(), "ws")
	os.Mkdir(ws, 0o755)
	ops := &workspaceOps{t: t, rng: rng, root: ws}
	defer func() {
		if t.Failed() {
			t.Logf("operations:\n%s", strings.Join(ops.log, "\n"))
		}
	}()
	// Duplicates: the same file in two places, identical and empty
	// directories, which share objects.
	for _, p := range []string{"dup1/same", "dup2/same", "dup3/sub/same"} {
		writeFile(t, filepath.Join(ws, p), []byte("same content"), 0o644)
	}
	for _, p := range []string{"empty1", "empty2", "dup3/empty"} {
		os.MkdirAll(filepath.Join(ws, p), 0o755)
	}
	var want []map[string]node
	var cps []Checkpoint
	for i := range steps {
		for range 1 + rng.IntN(3) {
			ops.step()
		}
		want = append(want, describe(t, ws))
		c := mustCheckpoint(t, src, ws, Key{Session: "s", ToolUseID: fmt.Sprint("toolu_", i)})
		cps = append(cps, c)
		mustPush(t, src, c.ID, remote)
	}

	dst, dstDir := openStore(t, Options{NoSync: true, Transfers: 3})
	for _, i := range rng.Perm(len(cps)) {
		c, _ := mustPull(t, dst, cps[i].ID, remote, Key{Session: "persist:k", ToolUseID: fmt.Sprint("pulled_", i)})
		if diff := cmp.Diff(countsOf(cps[i]), countsOf(c)); diff != "" {
			t.Fatalf("checkpoint %d pulled (-pushed +pulled):\n%s", i, diff)
		}
		assertRestores(t, dst, c.ID, withoutSetID(want[i]), fmt.Sprintf("restore of pulled checkpoint %d", i))
		wantEnts, err := src.Entries(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		gotEnts, err := dst.Entries(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantEnts, gotEnts); diff != "" {
			t.Fatalf("Entries of pulled checkpoint %d (-pushed +pulled):\n%s", i, diff)
		}
	}

	// The pulls are recorded, so Prune keeps what they fetched.
	list, err := dst.List("persist:k")
	if err != nil || len(list) != len(cps) {
		t.Fatalf("List after pulls: %d checkpoints, %v; want %d", len(list), err, len(cps))
	}
	rep, err := dst.Prune(context.Background(), Retention{})
	if err != nil || rep.ObjectsRemoved != 0 {
		t.Fatalf("Prune after pulls: %+v, %v; want nothing removed", rep, err)
	}

	// Pulling again fetches nothing, pushing again sends nothing.
	remote.requests()
	last := cps[len(cps)-1]
	_, tr := mustPull(t, dst, last.ID, remote, Key{Session: "persist:k"})
	if tr.Copied != 0 || tr.Skipped == 0 {
		t.Errorf("second Pull: %+v, want nothing copied", tr)
	}
	tr = mustPush(t, dst, last.ID, remote)
	if tr != (Transfer{Skipped: 1, SkippedBytes: tr.SkippedBytes}) {
		t.Errorf("Push of a pushed checkpoint: %+v, want the root found and nothing else", tr)
	}
	if _, gets, puts := remote.requests(); len(gets) != 0 || len(puts) != 0 {
		t.Errorf("second Pull and Push: %d gets, %d puts; want none", len(gets), len(puts))
	}
	if tmp, _ := os.ReadDir(filepath.Join(dstDir, "tmp")); len(tmp) != 0 {
		t.Errorf("%d temporary files left", len(tmp))
	}
}

// TestSecondPushSendsOnlyWhatChanged: after one file changed, Push sends
// that file and the manifests on its path, and does not descend into the
// directories the remote already holds.
func TestSecondPushSendsOnlyWhatChanged(t *testing.T) {
	s, _ := openStore(t, Options{NoSync: true})
	remote := newMemRemote(t)
	ws := t.TempDir()
	files := map[string]string{
		"top.txt":        "top",
		"a/x":            "x",
		"a/b/c/file1":    "v1",
		"a/b/c/file2":    "two",
		"d/y":            "y",
		"d/deep/er/z":    "z",
		"big":            strings.Repeat("large object streamed ", 100000),
		"a/b/c/copy-of2": "two",
	}
	for p, c := range files {
		writeFile(t, filepath.Join(ws, p), []byte(c), 0o644)
	}
	c1 := mustCheckpoint(t, s, ws, Key{Session: "s"})
	tr := mustPush(t, s, c1.ID, remote)
	// 7 distinct contents and 7 directories: the root, a, a/b, a/b/c, d,
	// d/deep, d/deep/er.
	if tr.Copied != 7+7 || tr.Skipped != 0 {
		t.Fatalf("first Push: %+v, want 14 objects copied", tr)
	}
	remote.requests()

	writeFile(t, filepath.Join(ws, "a/b/c/file1"), []byte("v2!"), 0o644)
	c2 := mustCheckpoint(t, s, ws, Key{Session: "s"})
	tr = mustPush(t, s, c2.ID, remote)
	exists, _, puts := remote.requests()
	slices.Sort(puts)
	var manifests []string
	for _, dir := range []string{"", "a", "a/b", "a/b/c"} {
		manifests = append(manifests, treeName(dirSum(t, s, c2.ID, dir)))
	}
	wantPuts := append([]string{objectName(sha256.Sum256([]byte("v2!")))}, manifests...)
	slices.Sort(wantPuts)
	if diff := cmp.Diff(wantPuts, puts); diff != "" {
		t.Errorf("second Push sent (-want +got):\n%s", diff)
	}
	// Asked about: the 4 new manifests, the new file, and the entries
	// that did not change: top.txt, big, d, a/x, file2 (once for both
	// copies).
	if tr.Copied != 5 || tr.Skipped != 5 || len(exists) != 10 {
		t.Errorf("second Push: %+v after %d existence checks; want 5 copied, 5 skipped, 10 checks", tr, len(exists))
	}
	if d := treeName(dirSum(t, s, c2.ID, "d/deep")); slices.Contains(exists, d) {
		t.Errorf("second Push looked inside d, which the remote held whole")
	}
	newBytes := int64(len("v2!"))
	for _, m := range manifests {
		newBytes += int64(len(remote.get(m)))
	}
	if tr.CopiedBytes != newBytes {
		t.Errorf("second Push sent %d bytes, want %d", tr.CopiedBytes, newBytes)
	}
}

// dirSum returns the manifest hash of directory dir in checkpoint id.
func dirSum(t testing.TB, s *Store, id, dir string) hash {
	t.Helper()
	h, err := parseHash(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range strings.Split(dir, "/") {
		if name == "" {
			continue
		}
		ents, err := s.readManifest(h)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(ents, func(e entry) bool { return e.name == name && e.kind == kindDir })
		if i < 0 {
			t.Fatalf("no directory %s in %s", dir, id)
		}
		h = ents[i].sum
	}
	return h
}

// pushedTree is a small checkpoint on a remote, with what Pull tests need.
type pushedTree struct {
	remote *memRemote
	id     string
	want   map[string]node
	file   string // remote name of the content of "dir/file"
	big    string // remote name of the content of "big"
	sub    string // remote name of the manifest of "dir"
}

func pushTree(t *testing.T) pushedTree {
	t.Helper()
	s, _ := openStore(t, Options{NoSync: true})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "dir/file"), []byte("file content"), 0o644)
	writeFile(t, filepath.Join(ws, "big"), bytes.Repeat([]byte("big "), 1<<18), 0o600)
	writeFile(t, filepath.Join(ws, "dir/other"), []byte("other"), 0o644)
	os.Symlink("dir/file", filepath.Join(ws, "link"))
	c := mustCheckpoint(t, s, ws, Key{Session: "s"})
	remote := newMemRemote(t)
	mustPush(t, s, c.ID, remote)
	return pushedTree{
		remote: remote,
		id:     c.ID,
		want:   describe(t, ws),
		file:   objectName(sha256.Sum256([]byte("file content"))),
		big:    objectName(sha256.Sum256(bytes.Repeat([]byte("big "), 1<<18))),
		sub:    treeName(dirSum(t, s, c.ID, "dir")),
	}
}

// assertNothingPulled fails unless the store holds no object, no
// temporary file and no checkpoint.
func assertNothingPulled(t *testing.T, s *Store, dir string) {
	t.Helper()
	if objs, _ := objectFiles(t, dir); len(objs) != 0 {
		t.Errorf("failed Pull left %d objects in the store", len(objs))
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("failed Pull left %d temporary files", len(tmp))
	}
	if list, _ := s.List("s2"); len(list) != 0 {
		t.Errorf("failed Pull recorded %d checkpoints", len(list))
	}
}

// manifestBytes encodes a manifest of the given entries, sorted by name.
func manifestBytes(ents ...entry) []byte {
	slices.SortFunc(ents, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return encodeManifest(nil, len(ents), func(i int) *entry { return &ents[i] })
}

func putTree(r *memRemote, b []byte) hash {
	h := hash(sha256.Sum256(b))
	r.set(treeName(h), b)
	return h
}

// TestPullRejectsBadRemoteObjects: whatever the remote returns, Pull keeps
// nothing that does not hash to its name, and reports what is wrong.
func TestPullRejectsBadRemoteObjects(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(p *pushedTree) (id string)
		want     error  // the class of error
		mentions string // a remote name the error must give, if any; "file" or "sub" for the tree's
	}{
		{"file content changed", func(p *pushedTree) string {
			b := slices.Clone(p.remote.get(p.file))
			b[0] ^= 1
			p.remote.set(p.file, b)
			return p.id
		}, ErrCorrupt, "file"},
		{"file truncated", func(p *pushedTree) string {
			p.remote.set(p.file, p.remote.get(p.file)[:3])
			return p.id
		}, ErrCorrupt, "file"},
		{"large file truncated", func(p *pushedTree) string {
			p.remote.set(p.big, p.remote.get(p.big)[:1<<19])
			return p.id
		}, ErrCorrupt, "big"},
		{"file longer than recorded", func(p *pushedTree) string {
			p.remote.set(p.file, append(slices.Clone(p.remote.get(p.file)), "more"...))
			return p.id
		}, ErrCorrupt, "file"},
		{"file missing", func(p *pushedTree) string {
			p.remote.set(p.file, nil)
			return p.id
		}, ErrCorrupt, "file"},
		{"manifest changed", func(p *pushedTree) string {
			b := slices.Clone(p.remote.get(p.sub))
			b[len(b)-1] ^= 1
			p.remote.set(p.sub, b)
			return p.id
		}, ErrCorrupt, "sub"},
		{"manifest missing", func(p *pushedTree) string {
			p.remote.set(p.sub, nil)
			return p.id
		}, ErrCorrupt, "sub"},
		{"checkpoint not in the remote", func(p *pushedTree) string {
			return fmt.Sprintf("%x", sha256.Sum256([]byte("never pushed")))
		}, ErrNotFound, ""},
		{"root is not a manifest", func(p *pushedTree) string {
			return putTree(p.remote, []byte("#!/bin/sh\necho a file, not a manifest\n")).String()
		}, ErrCorrupt, ""},
		{"manifest with a name that leaves its directory", func(p *pushedTree) string {
			b := manifestBytes(entry{name: "a", kind: kindFile, mode: 0o644, size: 4, sum: sha256.Sum256([]byte("evil"))})
			b = bytes.Replace(b, []byte{1, 'a'}, []byte{2, '.', '.'}, 1)
			return putTree(p.remote, b).String()
		}, ErrCorrupt, ""},
		{"manifest cut short", func(p *pushedTree) string {
			b := manifestBytes(entry{name: "a", kind: kindFile, mode: 0o644, size: 4})
			return putTree(p.remote, b[:len(b)-5]).String()
		}, ErrCorrupt, ""},
		{"manifest with a huge length", func(p *pushedTree) string {
			b := binary.AppendUvarint([]byte(manifestMagic+"f\x81\x03"), 1<<62)
			return putTree(p.remote, b).String()
		}, ErrCorrupt, ""},
		{"directories nested deeper than a checkpoint's", func(p *pushedTree) string {
			h := putTree(p.remote, manifestBytes())
			for range maxDepth + 1 {
				h = putTree(p.remote, manifestBytes(entry{name: "d", kind: kindDir, mode: 0o755, sum: h}))
			}
			return h.String()
		}, ErrCorrupt, ""},
		{"subtree named near the root and too deep", func(p *pushedTree) string {
			// sub is 10 levels deep. "a" names it at depth 1, where it
			// fits; "d" names it again at a depth where it does not, once
			// it has been fetched and checked through "a".
			sub := putTree(p.remote, manifestBytes())
			for range 10 {
				sub = putTree(p.remote, manifestBytes(entry{name: "s", kind: kindDir, mode: 0o755, sum: sub}))
			}
			h := sub
			for range maxDepth - 10 {
				h = putTree(p.remote, manifestBytes(entry{name: "d", kind: kindDir, mode: 0o755, sum: h}))
			}
			return putTree(p.remote, manifestBytes(
				entry{name: "a", kind: kindDir, mode: 0o755, sum: sub},
				entry{name: "d", kind: kindDir, mode: 0o755, sum: h},
			)).String()
		}, ErrCorrupt, ""},
		{"directory named so often the tree explodes", func(p *pushedTree) string {
			h := putTree(p.remote, manifestBytes(entry{name: "f", kind: kindFile, mode: 0o644, sum: sha256.Sum256(nil)}))
			p.remote.set(objectName(sha256.Sum256(nil)), []byte{})
			for range 40 {
				h = putTree(p.remote, manifestBytes(
					entry{name: "a", kind: kindDir, mode: 0o755, sum: h},
					entry{name: "b", kind: kindDir, mode: 0o755, sum: h},
				))
			}
			return h.String()
		}, ErrCorrupt, ""},
		{"file claiming more bytes than it has", func(p *pushedTree) string {
			content := []byte("short")
			p.remote.set(objectName(sha256.Sum256(content)), content)
			return putTree(p.remote, manifestBytes(entry{name: "f", kind: kindFile, mode: 0o644, size: 1000, sum: sha256.Sum256(content)})).String()
		}, ErrCorrupt, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pushTree(t)
			id := tc.change(&p)
			s, dir := openStore(t, Options{NoSync: true})
			_, _, err := s.Pull(context.Background(), id, p.remote, Key{Session: "s2"})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Pull: %v, want an error wrapping %v", err, tc.want)
			}
			t.Logf("Pull: %v", err)
			switch tc.mentions {
			case "file":
				tc.mentions = p.file
			case "big":
				tc.mentions = p.big
			case "sub":
				tc.mentions = p.sub
			}
			if !strings.Contains(err.Error(), tc.mentions) {
				t.Errorf("error does not name %s", tc.mentions)
			}
			assertNothingPulled(t, s, dir)
		})
	}

	t.Run("the untouched tree pulls", func(t *testing.T) {
		p := pushTree(t)
		s, _ := openStore(t, Options{NoSync: true})
		c, tr := mustPull(t, s, p.id, p.remote, Key{Session: "s2"})
		if c.Files != 3 || c.Dirs != 1 || c.Symlinks != 1 || tr.Copied != 5 {
			t.Fatalf("Pull: %+v, %+v; want 3 files, 1 dir, 1 link, 5 objects", c, tr)
		}
		assertRestores(t, s, c.ID, p.want, "pulled tree")
	})
}

// TestCancelledPullRecordsNothing interrupts a Pull at each point where it
// looks at its context: nothing is recorded and no object is kept, until
// one runs to the end.
func TestCancelledPullRecordsNothing(t *testing.T) {
	src, _ := openStore(t, Options{NoSync: true})
	ws := t.TempDir()
	for i := range 40 {
		writeFile(t, filepath.Join(ws, fmt.Sprintf("d%d/f%d", i%5, i)), fmt.Appendf(nil, "file %d", i), 0o644)
	}
	writeFile(t, filepath.Join(ws, "big"), bytes.Repeat([]byte("big "), 1<<18), 0o644)
	want := describe(t, ws)
	c := mustCheckpoint(t, src, ws, Key{Session: "s"})
	remote := newMemRemote(t)
	mustPush(t, src, c.ID, remote)

	s, dir := openStore(t, Options{Transfers: 4})
	interrupted := 0
	for n := int64(0); ; n++ {
		ctx := &countdownCtx{Context: context.Background()}
		ctx.n.Store(n)
		_, _, err := s.Pull(ctx, c.ID, remote, Key{Session: "s2"})
		if err == nil {
			break
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted at check %d: %v", n, err)
		}
		interrupted++
		assertNothingPulled(t, s, dir)
	}
	t.Logf("interrupted %d times before completing", interrupted)
	if interrupted < 10 {
		t.Fatalf("only %d interruption points", interrupted)
	}
	if list, _ := s.List("s2"); len(list) != 1 {
		t.Fatalf("%d checkpoints recorded, want 1", len(list))
	}
	assertRestores(t, s, c.ID, want, "pulled after interruptions")
}

// TestPushSendsNothingDamaged: an object damaged on the local disk is
// not spread to the remote, where other workers would share it.
func TestPushSendsNothingDamaged(t *testing.T) {
	for _, size := range []int{100, 2 << 20} {
		t.Run(fmt.Sprint(size, " bytes"), func(t *testing.T) {
			s, _ := openStore(t, Options{NoSync: true})
			ws := t.TempDir()
			content := bytes.Repeat([]byte("x"), size)
			writeFile(t, filepath.Join(ws, "f"), content, 0o644)
			c := mustCheckpoint(t, s, ws, Key{Session: "s"})
			obj := s.objectPath(sha256.Sum256(content))
			damaged := slices.Clone(content)
			damaged[size/2] = 'y'
			if err := os.WriteFile(obj, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			remote := newMemRemote(t)
			_, err := s.Push(context.Background(), c.ID, remote)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Push: %v, want ErrCorrupt", err)
			}
			if _, _, puts := remote.requests(); len(puts) != 0 {
				t.Fatalf("Push sent %v", puts)
			}
		})
	}
}

func TestPushOfUnknownCheckpointFails(t *testing.T) {
	s, _ := openStore(t, Options{NoSync: true})
	_, err := s.Push(context.Background(), fmt.Sprintf("%x", sha256.Sum256(nil)), newMemRemote(t))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Push: %v, want ErrNotFound", err)
	}
}
