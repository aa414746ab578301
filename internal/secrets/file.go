package secrets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"syscall"
)

// maxFileSize bounds what File reads: credentials are small, and a path
// pointing at something huge should fail rather than fill memory.
const maxFileSize = 1 << 20

// exposedBits are the permission bits File refuses: a file that group or
// others can read leaks the value, and one they can write lets them choose
// the credential the proxy sends.
const exposedBits fs.FileMode = 0o066

// File reads secrets from files: one value per file, with one trailing line
// ending trimmed.
//
// The file is read on every Get, so a value rotated on disk is used from the
// next Get (or the next Get after a Cache's TTL). Symbolic links are
// followed, because Kubernetes secret volumes and Vault Agent templates
// rotate values by swapping links; the permission check applies to the file
// the link resolves to, as it is opened. Files that group or others can read
// or write are refused (for Kubernetes volumes, set defaultMode: 0400).
type File struct {
	paths map[string]string // secret name -> path; never modified
}

var _ Source = (*File)(nil)

// NewFile returns a File that reads secret name from file paths[name].
func NewFile(paths map[string]string) *File {
	return &File{paths: maps.Clone(paths)}
}

// Get reads the file now.
func (f *File) Get(_ context.Context, name string) ([]byte, error) {
	p, ok := f.paths[name]
	if !ok {
		return nil, notConfigured(name)
	}
	b, err := readSecretFile(p)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return b, nil
}

// readSecretFile reads a private file holding a credential. Its errors name
// the path, never the contents.
func readSecretFile(path string) ([]byte, error) {
	// Non-blocking, so that a named pipe put where the file should be is
	// refused by the checks below rather than wait for a writer.
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("file %s does not exist: %w", path, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()

	// Stat the open file, not the path, so the checks apply to what is read.
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (mode %s)", path, st.Mode().Type())
	}
	if perm := st.Mode().Perm(); perm&exposedBits != 0 {
		return nil, fmt.Errorf("refusing %s: group or others can read or write it (mode %04o); make it private with chmod 600 %s", path, perm, path)
	}

	b, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileSize {
		clear(b)
		return nil, fmt.Errorf("%s is larger than %d bytes, too large to be a credential", path, maxFileSize)
	}
	b = trimNewline(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("file %s is empty: %w", path, ErrNotFound)
	}
	return b, nil
}
