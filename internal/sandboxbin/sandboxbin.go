// Package sandboxbin provides the executable the sandbox runtimes start as
// sandboxd in every sandbox.
//
// Everything ships as one static binary, perimeter, whose `sandboxd`
// subcommand is the in-sandbox agent. Every sandbox start pays for that
// binary's start-up, which runs the initialisation of everything linked
// into it (Docker client, SQLite, exporters) — about 25 ms on a small host,
// half of a bwrap sandbox's start. So `make build` also builds
// cmd/perimeter-sandboxd, sandboxd alone, and embeds it here through a
// build overlay (the source tree holds no binary). [Path] writes it once
// under the worker's state directory and the runtimes start that. A plain
// `go build ./cmd/perimeter` embeds nothing, and the runtimes start the
// perimeter binary itself: slower, otherwise the same.
package sandboxbin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// EmbedPath is where, relative to this package, the build puts the slim
// sandboxd binary (with -overlay; see the Makefile).
const EmbedPath = "slim/perimeter-sandboxd"

//go:embed all:slim
var slim embed.FS

// Embedded returns the slim sandboxd binary built into this executable, or
// nil when there is none.
func Embedded() []byte {
	b, err := slim.ReadFile(EmbedPath)
	if err != nil {
		return nil
	}
	return b
}

// Path returns the host path of the executable the runtimes should start as
// `<path> sandboxd`: the embedded slim build, installed in dir (created if
// needed) under a name carrying its digest, or "" when none is embedded —
// the runtimes then start the running executable.
//
// The installed file is mode 0755, so sandboxes running as another host
// uid can execute it (dir and its parents must be searchable by that uid,
// as the workspaces' are). An existing file of that name is used only when
// its content is exactly the embedded one; anything else there is
// replaced.
func Path(dir string) (string, error) {
	bin := Embedded()
	if bin == nil {
		return "", nil
	}
	return install(dir, bin)
}

// install writes bin under dir (see [Path]) unless it is there already.
func install(dir string, bin []byte) (string, error) {
	sum := sha256.Sum256(bin)
	path := filepath.Join(dir, "perimeter-sandboxd-"+hex.EncodeToString(sum[:8]))
	// Searchable by the sandboxes' uids.
	if err := sandbox.MkdirMode(dir, 0o711); err != nil {
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, bin) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == 0o755 {
			return path, nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".perimeter-sandboxd-*")
	if err != nil {
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(bin); err != nil {
		tmp.Close()
		return "", fmt.Errorf("sandboxd binary: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	// rename is atomic: a sandbox never starts a half-written file, and a
	// running one keeps the inode it started.
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("sandboxd binary: %w", err)
	}
	return path, nil
}
