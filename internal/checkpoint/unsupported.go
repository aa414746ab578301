//go:build !(linux && (amd64 || arm64))

package checkpoint

import (
	"context"
	"errors"
)

// Snapshots and restores rely on Linux's *at system calls with
// O_NOFOLLOW, the only way this package trusts to stay inside a hostile
// workspace; elsewhere they report ErrUnsupported.

func (s *Store) snapshot(context.Context, string, *snapCache, *txn) (snapResult, error) {
	return snapResult{}, ErrUnsupported
}

func (s *Store) restore(context.Context, string, hash, *snapCache) (RestoreReport, error) {
	return RestoreReport{}, ErrUnsupported
}

func syncFS(string) error { return errors.ErrUnsupported }
