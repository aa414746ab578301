//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRefs(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	src, _ := openStore(t, Options{NoSync: true, Clock: func() time.Time { return now }})
	ws := t.TempDir()
	writeFile(t, filepath.Join(ws, "a"), []byte("one"), 0o644)
	want1 := describe(t, ws)
	c1 := mustCheckpoint(t, src, ws, Key{Session: "s"})
	writeFile(t, filepath.Join(ws, "a"), []byte("two"), 0o644)
	want2 := describe(t, ws)
	c2 := mustCheckpoint(t, src, ws, Key{Session: "s"})
	name := "repo:\xff/main\n" // any bytes

	t.Run("missing", func(t *testing.T) {
		remote := newMemRemote(t)
		dst, dir := openStore(t, Options{NoSync: true})
		_, _, ok, err := dst.PullRef(context.Background(), remote, name, Key{Session: "s2"})
		if ok || err != nil {
			t.Fatalf("PullRef of a missing ref: %v, %v; want false, nil", ok, err)
		}
		assertNothingPulled(t, dst, dir)
	})

	t.Run("round trip, last writer wins", func(t *testing.T) {
		remote := newMemRemote(t)
		if _, err := src.PushRef(context.Background(), remote, Ref{Name: name, ID: c1.ID, SavedBy: "worker w1, session a"}); err != nil {
			t.Fatal(err)
		}
		if _, err := src.PushRef(context.Background(), remote, Ref{Name: name, ID: c2.ID, SavedBy: "worker w2, session b"}); err != nil {
			t.Fatal(err)
		}
		if _, err := src.PushRef(context.Background(), remote, Ref{Name: "other", ID: c1.ID}); err != nil {
			t.Fatal(err)
		}
		ref, ok, err := ReadRef(context.Background(), remote, name)
		if err != nil || !ok {
			t.Fatalf("ReadRef: %v, %v", ok, err)
		}
		if diff := cmp.Diff(Ref{Name: name, ID: c2.ID, Time: now, SavedBy: "worker w2, session b"}, ref); diff != "" {
			t.Errorf("ReadRef (-want +got):\n%s", diff)
		}
		for _, tc := range []struct {
			name string
			want map[string]node
		}{{name, want2}, {"other", want1}} {
			dst, _ := openStore(t, Options{NoSync: true})
			c, tr, ok, err := dst.PullRef(context.Background(), remote, tc.name, Key{Session: "s2", ToolUseID: "load"})
			if err != nil || !ok {
				t.Fatalf("PullRef(%q): %v, %v", tc.name, ok, err)
			}
			if tr.Copied != 2 {
				t.Errorf("PullRef(%q) copied %d objects, want 2", tc.name, tr.Copied)
			}
			assertRestores(t, dst, c.ID, tc.want, "pulled ref "+tc.name)
		}
		// Without a tool-use id of its own, the pulled checkpoint is named
		// for the session that saved it.
		dst, _ := openStore(t, Options{NoSync: true})
		if c, _, _, err := dst.PullRef(context.Background(), remote, name, Key{Session: "s2"}); err != nil || c.ToolUseID != "worker w2, session b" {
			t.Errorf("PullRef without a tool-use id: %q, %v; want the ref's SavedBy", c.ToolUseID, err)
		}
	})

	t.Run("written only after its checkpoint", func(t *testing.T) {
		remote := newMemRemote(t)
		remote.failPut = func(n string) error {
			if strings.HasPrefix(n, remoteTrees) {
				return errors.New("bucket full")
			}
			return nil
		}
		if _, err := src.PushRef(context.Background(), remote, Ref{Name: name, ID: c1.ID}); err == nil || !strings.Contains(err.Error(), "bucket full") {
			t.Fatalf("PushRef with a failing remote: %v", err)
		}
		if _, ok, err := ReadRef(context.Background(), remote, name); ok || err != nil {
			t.Fatalf("ReadRef after a failed push: %v, %v; want no ref", ok, err)
		}
	})

	t.Run("damaged", func(t *testing.T) {
		remote := newMemRemote(t)
		if _, err := src.PushRef(context.Background(), remote, Ref{Name: name, ID: c2.ID}); err != nil {
			t.Fatal(err)
		}
		good := remote.get(refName(name))
		for what, b := range map[string][]byte{
			"not JSON":          []byte("\x00\x01"),
			"another name":      bytes.Replace(good, []byte(`"name":`), []byte(`"name":"x","was":`), 1),
			"bad id":            bytes.Replace(good, []byte(c2.ID), []byte("../../etc/passwd"), 1),
			"unknown version":   bytes.Replace(good, []byte(`"v":1`), []byte(`"v":2`), 1),
			"larger than a ref": bytes.Repeat([]byte(" "), maxRef+1),
		} {
			r := newMemRemote(t)
			r.set(refName(name), b)
			_, ok, err := ReadRef(context.Background(), r, name)
			if ok || !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: ReadRef: %v, %v; want ErrCorrupt", what, ok, err)
			}
		}
		// A ref to a checkpoint the remote lost.
		r := newMemRemote(t)
		r.set(refName(name), good)
		dst, dir := openStore(t, Options{NoSync: true})
		_, _, ok, err := dst.PullRef(context.Background(), r, name, Key{Session: "s2"})
		if !ok || !errors.Is(err, ErrCorrupt) {
			t.Errorf("PullRef of a ref to a lost checkpoint: %v, %v; want ErrCorrupt", ok, err)
		}
		assertNothingPulled(t, dst, dir)
	})
}
