//go:build unix

package lockfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Take creates path if needed and takes an exclusive flock on it, which
// the kernel releases if the process dies. If another process holds it,
// the error wraps held (the caller's own sentinel) and names path.
func Take(path string, held error) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", held, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
