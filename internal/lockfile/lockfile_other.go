//go:build !unix

package lockfile

import (
	"io"
	"os"
)

// Take only creates the lock file: without flock, keeping one process
// per directory is up to the caller.
func Take(path string, held error) (io.Closer, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
