//go:build !linux

package docker

import (
	"context"
	"errors"
	"log/slog"
)

// workspaceFS is a size-bounded workspace; Linux only.
type workspaceFS struct{ image string }

func workspaceFSSupported() error {
	return errors.New("size-bounded workspaces need Linux (a loop-mounted ext4 file system)")
}

func mountWorkspace(context.Context, string, int64, *slog.Logger) (*workspaceFS, error) {
	return nil, workspaceFSSupported()
}

func (*workspaceFS) unmount(context.Context) error { return nil }

func recoverWorkspace(context.Context, string, string, *slog.Logger) error { return nil }
