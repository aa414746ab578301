package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Ref is a named reference to a checkpoint in a remote store, such as the
// workspace last saved under a persistence key.
type Ref struct {
	Name string
	// ID is the checkpoint's id.
	ID string
	// Time is when the reference was written; PushRef fills in a zero
	// Time from the store's clock.
	Time time.Time
	// SavedBy says who wrote it, for people: a worker, a session.
	SavedBy string
}

// Ref format: refs/<hex SHA-256(name)> holds one JSON object,
//
//	{"v":1,"name":"…","id":"<64 hex>","saved":"2026-…Z","saved_by":"…"}
//
// with a name or saved_by that is not UTF-8 written as {"base64":"…"}, as
// in the index. The name is kept so that a reading can check it.
const refVersion = 1

// maxRef bounds a reference read from a remote.
const maxRef = 64 << 10

type refFile struct {
	V       int       `json:"v"`
	Name    text      `json:"name"`
	ID      string    `json:"id"`
	Saved   time.Time `json:"saved"`
	SavedBy text      `json:"saved_by"`
}

func refName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return remoteRefs + hex.EncodeToString(sum[:])
}

// PushRef pushes checkpoint ref.ID to r (see Push) and then, only once
// every object of it is there, points ref.Name at it, replacing what the
// name pointed at: the last writer wins. A reader therefore never finds a
// reference to a checkpoint the remote does not hold whole.
func (s *Store) PushRef(ctx context.Context, r Remote, ref Ref) (Transfer, error) {
	if ref.Name == "" {
		return Transfer{}, errors.New("checkpoint: push ref: empty name")
	}
	if _, err := parseHash(ref.ID); err != nil {
		return Transfer{}, err
	}
	tr, err := s.Push(ctx, ref.ID, r)
	if err != nil {
		return tr, err
	}
	if ref.Time.IsZero() {
		ref.Time = s.opts.Clock()
	}
	b, err := json.Marshal(refFile{V: refVersion, Name: text(ref.Name), ID: ref.ID, Saved: ref.Time.UTC(), SavedBy: text(ref.SavedBy)})
	if err != nil {
		return tr, fmt.Errorf("checkpoint: push ref: %w", err)
	}
	name := refName(ref.Name)
	if err := r.Put(ctx, name, bytes.NewReader(b), int64(len(b))); err != nil {
		return tr, fmt.Errorf("checkpoint: remote %s (ref %q): %w", name, ref.Name, err)
	}
	return tr, nil
}

// ReadRef reads the reference name from r. ok is false if there is none.
// A reference that does not parse, names another name or holds no valid
// checkpoint id is an error wrapping ErrCorrupt.
func ReadRef(ctx context.Context, r Remote, name string) (ref Ref, ok bool, err error) {
	obj := refName(name)
	rc, err := r.Get(ctx, obj)
	if errors.Is(err, ErrNotFound) {
		return Ref{}, false, nil
	}
	if err != nil {
		return Ref{}, false, fmt.Errorf("checkpoint: remote %s (ref %q): %w", obj, name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxRef+1))
	if err != nil {
		return Ref{}, false, fmt.Errorf("checkpoint: remote %s (ref %q): %w", obj, name, err)
	}
	bad := func(what string) (Ref, bool, error) {
		return Ref{}, false, fmt.Errorf("%w: remote %s (ref %q): %s", ErrCorrupt, obj, name, what)
	}
	if len(b) > maxRef {
		return bad("too large")
	}
	var f refFile
	if err := json.Unmarshal(b, &f); err != nil {
		return bad("not a reference")
	}
	switch {
	case f.V != refVersion:
		return bad(fmt.Sprintf("unknown version %d", f.V))
	case string(f.Name) != name:
		return bad(fmt.Sprintf("names %q", string(f.Name)))
	}
	if _, err := parseHash(f.ID); err != nil {
		return bad(fmt.Sprintf("invalid checkpoint id %q", f.ID))
	}
	return Ref{Name: name, ID: f.ID, Time: f.Saved, SavedBy: string(f.SavedBy)}, true, nil
}

// PullRef reads the reference name from r and pulls the checkpoint it
// names, recording it as a checkpoint of key (see Pull); an empty
// key.ToolUseID takes the reference's SavedBy. ok is false, and nothing is
// pulled, if there is no such reference.
func (s *Store) PullRef(ctx context.Context, r Remote, name string, key Key) (c Checkpoint, tr Transfer, ok bool, err error) {
	ref, ok, err := ReadRef(ctx, r, name)
	if err != nil || !ok {
		return Checkpoint{}, Transfer{}, ok, err
	}
	if key.ToolUseID == "" {
		key.ToolUseID = ref.SavedBy
	}
	c, tr, err = s.Pull(ctx, ref.ID, r, key)
	if errors.Is(err, ErrNotFound) {
		// References are written after their checkpoint: the remote lost it.
		err = fmt.Errorf("%w: ref %q names checkpoint %s, which the remote store does not hold", ErrCorrupt, name, ref.ID)
	}
	return c, tr, true, err
}
