//go:build !unix

package checkpoint

import (
	"io"
	"os"
)

// lockFile only creates the lock file: without flock, keeping one process
// per store is up to the caller.
func lockFile(path string) (io.Closer, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
