package image

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/client"
)

var (
	// idPattern is an image ID: the digest of the image's configuration.
	idPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// digestRefPattern is a reference pinned to a manifest digest.
	digestRefPattern = regexp.MustCompile(`^[^@\s]+@sha256:[0-9a-f]{64}$`)
)

// ErrNotPinned is returned for a reference that names an image by a
// mutable tag.
var ErrNotPinned = errors.New("image reference is a mutable tag, not pinned to a digest")

// Pinned reports whether ref names exactly one image content: an image ID
// (sha256:…) or a digest reference (name@sha256:…).
func Pinned(ref string) bool {
	return idPattern.MatchString(ref) || digestRefPattern.MatchString(ref)
}

// Resolve returns the pinned form of ref as the engine knows it: ref itself
// when it is already pinned (after checking that the engine has it), else
// name@sha256:… when the tagged image came from a registry under that name,
// else its image ID sha256:…. Images built by [Build] have no registry
// digest, so they resolve to their ID. A nil cli means one from the
// environment.
func Resolve(ctx context.Context, cli *client.Client, ref string) (string, error) {
	if ref == "" {
		return "", errors.New("image: resolve: empty reference")
	}
	if cli == nil {
		var err error
		if cli, err = NewClient(); err != nil {
			return "", fmt.Errorf("image: %w", err)
		}
		defer cli.Close()
	}
	ins, err := cli.ImageInspect(ctx, ref)
	switch {
	case cerrdefs.IsNotFound(err):
		return "", fmt.Errorf("image: %s is not in the engine: build it with `perimeter image build` (or pull it): %w", ref, err)
	case err != nil:
		return "", fmt.Errorf("image: inspect %s: %w", ref, err)
	}
	if Pinned(ref) {
		return ref, nil
	}
	name := repository(ref)
	for _, rd := range ins.RepoDigests {
		if n, _, ok := strings.Cut(rd, "@"); ok && (n == name || repository(n) == name) && digestRefPattern.MatchString(rd) {
			return rd, nil
		}
	}
	if !idPattern.MatchString(ins.ID) {
		return "", fmt.Errorf("image: the engine reports %s with an unexpected ID %q", ref, ins.ID)
	}
	return ins.ID, nil
}

// repository is ref without its tag: "perimeter-sandbox:bookworm" →
// "perimeter-sandbox", "host:5000/a/b:t" → "host:5000/a/b". The engine lists
// Docker Hub images by their short names, and so does this.
func repository(ref string) string {
	name, _, _ := strings.Cut(ref, "@")
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	name = strings.TrimPrefix(name, "docker.io/")
	return strings.TrimPrefix(name, "library/")
}
