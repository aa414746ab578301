//go:build !unix

package audit

import (
	"io"
	"os"
)

// lockDir only creates the lock file: without flock, keeping one writer
// per directory is up to the caller.
func lockDir(path string) (io.Closer, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
