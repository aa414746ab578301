package checkpoint

import (
	"context"
	"slices"
	"strings"
)

// ChangeKind says how a path differs between two checkpoints.
type ChangeKind string

const (
	Added    ChangeKind = "added"
	Removed  ChangeKind = "removed"
	Modified ChangeKind = "modified" // a file's content or a link's target (the mode may differ too)
	ModeOnly ChangeKind = "mode"     // only the mode
	TypeOf   ChangeKind = "type"     // e.g. a file became a directory
)

// Change is one path that differs. From is nil for Added, To for Removed.
type Change struct {
	Path string
	Kind ChangeKind
	From *Entry
	To   *Entry
}

// Diff lists what changed from checkpoint fromID to toID, sorted by path.
// Everything under an added or removed directory is listed too, and under
// a path whose type changed, as removed or added. Directories with the
// same manifest are not read, so the cost follows the size of the change.
func (s *Store) Diff(ctx context.Context, fromID, toID string) ([]Change, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	from, err := s.rootOf(fromID)
	if err != nil {
		return nil, err
	}
	to, err := s.rootOf(toID)
	if err != nil {
		return nil, err
	}
	var out []Change
	if err := s.diffDir(ctx, from, to, "", &out); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

func (s *Store) diffDir(ctx context.Context, from, to hash, dir string, out *[]Change) error {
	if from == to {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	a, err := s.readManifest(from)
	if err != nil {
		return err
	}
	b, err := s.readManifest(to)
	if err != nil {
		return err
	}
	// one records an entry added or removed as a change of its own.
	one := func(e Entry, kind ChangeKind) {
		c := Change{Path: e.Path, Kind: kind}
		if kind == Added {
			c.To = &e
		} else {
			c.From = &e
		}
		*out = append(*out, c)
	}
	// under records everything under a directory added or removed.
	under := func(e *entry, path string, kind ChangeKind) error {
		if e.kind != kindDir {
			return nil
		}
		return s.flatten(ctx, e.sum, path, func(x Entry) { one(x, kind) })
	}
	all := func(e *entry, kind ChangeKind) error {
		pe := publicEntry(dir, e)
		one(pe, kind)
		return under(e, pe.Path, kind)
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].name < b[j].name):
			if err := all(&a[i], Removed); err != nil {
				return err
			}
			i++
		case i == len(a) || b[j].name < a[i].name:
			if err := all(&b[j], Added); err != nil {
				return err
			}
			j++
		default:
			x, y := &a[i], &b[j]
			i++
			j++
			if x.sameRecord(y) {
				continue
			}
			px, py := publicEntry(dir, x), publicEntry(dir, y)
			c := Change{Path: px.Path, From: &px, To: &py}
			switch {
			case x.kind != y.kind:
				c.Kind = TypeOf
				*out = append(*out, c)
				if err := under(x, px.Path, Removed); err != nil {
					return err
				}
				if err := under(y, py.Path, Added); err != nil {
					return err
				}
				continue
			case x.kind == kindDir:
				if x.mode != y.mode {
					c.Kind = ModeOnly
					*out = append(*out, c)
				}
				if err := s.diffDir(ctx, x.sum, y.sum, px.Path, out); err != nil {
					return err
				}
				continue
			case x.sum != y.sum || x.size != y.size || x.target != y.target:
				c.Kind = Modified
			default:
				c.Kind = ModeOnly
			}
			*out = append(*out, c)
		}
	}
	return nil
}
