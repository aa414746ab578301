//go:build !(linux && (amd64 || arm64))

package checkpoint

import (
	"context"
	"errors"
)

// Snapshots and restores rely on Linux's *at system calls with
// O_NOFOLLOW, the only way this package trusts to stay inside a hostile
// workspace; elsewhere they report ErrUnsupported.

type watcher struct{}

type tracker struct{ root string }

func newWatcher() (*watcher, error)    { return nil, ErrUnsupported }
func (*watcher) close()                {}
func (*watcher) track(string) *tracker { return nil }
func (*tracker) release()              {}
func (*tracker) fail()                 {}

func (s *Store) snapshot(context.Context, string, *snapCache, bool, *txn, *tracker) (snapResult, error) {
	return snapResult{}, ErrUnsupported
}

func (s *Store) restore(context.Context, string, hash, *snapCache) (RestoreReport, error) {
	return RestoreReport{}, ErrUnsupported
}

func syncFS(string) error { return errors.ErrUnsupported }

// ChangeTracking reports that checkpoints cannot track changes here.
func ChangeTracking() (ok bool, detail string) { return false, "unsupported platform" }
