package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/internal/image"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// A size-bounded workspace (Limits.WorkspaceBytes) is an ext4 file system
// in a sparse image file next to the workspace directory,
// "<parent>/.<name>.ext4", loop-mounted over the directory for the
// sandbox's life:
//
//   - Create makes the file system, copies what the directory holds into it
//     (a re-created sandbox keeps its files), empties the directory and
//     mounts the file system over it (nosuid, nodev). The host, and so the
//     worker's snapshots, see the files at the usual path.
//   - Close, once the container is gone, unmounts it, copies the files back
//     into the plain directory and deletes the image file. If that fails
//     the image file stays, and the next Create (or RemoveOrphans) copies
//     it back first: the session's files are never lost.
//
// It needs root (mount) and e2fsprogs (mkfs.ext4). A mounted workspace
// cannot be renamed (EBUSY), so warm-pool hand-over does not apply to it.

// workspaceFS is one mounted size-bounded workspace.
type workspaceFS struct {
	dir   string // the workspace directory, the mount point
	image string // the ext4 image file
	log   *slog.Logger
}

// workspaceFSSupported says why a size-bounded workspace cannot be made
// here, or nil.
func workspaceFSSupported() error {
	if os.Geteuid() != 0 {
		return errors.New("mounting a size-bounded file system needs the worker to run as root")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install e2fsprogs mount)", tool)
		}
	}
	return nil
}

func workspaceImage(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".ext4")
}

// mountWorkspace bounds dir to size bytes. dir is absolute with symlinks
// resolved.
func mountWorkspace(ctx context.Context, dir string, size int64, log *slog.Logger) (*workspaceFS, error) {
	w := &workspaceFS{dir: dir, image: workspaceImage(dir), log: log}
	if m, err := isMountPoint(dir); err != nil {
		return nil, err
	} else if m {
		return nil, fmt.Errorf("%s is already a mount point: is another sandbox of this session still open?", dir)
	}
	if _, err := os.Lstat(w.image); err == nil {
		log.Warn("recovering the files of a size-bounded workspace left mounted by an earlier sandbox", slog.String("image", w.image))
		if err := w.copyBack(ctx); err != nil {
			return nil, err
		}
	}
	const minSize = 8 << 20 // ext4 with a journal needs a few MiB
	if size < minSize {
		size = minSize
	}
	f, err := os.OpenFile(w.image, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size) // sparse: the host's disk is used as files are written
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(w.image)
		return nil, err
	}
	owner := fmt.Sprintf("root_owner=%d:%d", image.UID, image.GID)
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "workspace", "-E", owner, w.image); err != nil {
		os.Remove(w.image)
		return nil, err
	}

	// Fill it from the directory through a staging mount point.
	staging := w.image + ".mnt"
	if err := os.Mkdir(staging, 0o700); err != nil {
		os.Remove(w.image)
		return nil, err
	}
	fill := func() error {
		if err := run(ctx, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev", w.image, staging); err != nil {
			return err
		}
		defer unmount(staging)
		_ = os.Remove(filepath.Join(staging, "lost+found"))
		if err := run(ctx, "cp", "-a", "--", dir+"/.", staging+"/"); err != nil {
			return fmt.Errorf("the workspace's files do not fit in %d bytes: %w", size, err)
		}
		return nil
	}
	if err := fill(); err != nil {
		_ = os.Remove(staging)
		os.Remove(w.image)
		return nil, err
	}
	if err := os.Remove(staging); err != nil {
		log.Warn("could not remove a staging mount point", slog.String("dir", staging), slog.Any("error", err))
	}
	// The files are in the image now; the directory becomes its mount point.
	if err := emptyDir(dir); err != nil {
		return nil, fmt.Errorf("empty %s before mounting over it (its files are safe in %s): %w", dir, w.image, err)
	}
	if err := run(ctx, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev", w.image, dir); err != nil {
		return nil, fmt.Errorf("%w (the workspace's files are in %s; the next start recovers them)", err, w.image)
	}
	log.Debug("workspace bounded", slog.String("image", w.image), slog.Int64("bytes", size))
	return w, nil
}

// unmount ends the bound: unmount, copy the files back into the plain
// directory, delete the image file.
func (w *workspaceFS) unmount(ctx context.Context) error {
	// A host process still in the workspace (a snapshot being taken)
	// keeps it busy for a moment.
	for delay := 50 * time.Millisecond; ; delay *= 2 {
		m, err := isMountPoint(w.dir)
		if err != nil {
			return fmt.Errorf("workspace %s: %w", w.dir, err)
		}
		if !m {
			break
		}
		err = unmount(w.dir)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EBUSY) || delay > 2*time.Second {
			return fmt.Errorf("unmount the size-bounded workspace %s (its files stay in %s): %w", w.dir, w.image, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount the size-bounded workspace %s (its files stay in %s): %w", w.dir, w.image, ctx.Err())
		case <-time.After(delay):
		}
	}
	return w.copyBack(ctx)
}

// copyBack copies the image's files into the (unmounted) directory and
// deletes the image.
func (w *workspaceFS) copyBack(ctx context.Context) error {
	staging := w.image + ".mnt"
	if m, _ := isMountPoint(staging); m {
		if err := unmount(staging); err != nil {
			return fmt.Errorf("unmount %s: %w", staging, err)
		}
	}
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return err
	}
	// Read-only and noexec: nothing in it runs or changes on the host.
	if err := run(ctx, "mount", "-t", "ext4", "-o", "loop,ro,nosuid,nodev,noexec", w.image, staging); err != nil {
		return fmt.Errorf("%w (the workspace's files stay in %s)", err, w.image)
	}
	// cp -a copies symbolic links as links and never follows them, so
	// nothing the sandbox planted leads the copy outside the directory.
	cpErr := run(ctx, "cp", "-a", "--", staging+"/.", w.dir+"/")
	if err := unmount(staging); err != nil {
		return fmt.Errorf("unmount %s: %w", staging, err)
	}
	_ = os.Remove(staging)
	if cpErr != nil {
		return fmt.Errorf("copy the size-bounded workspace's files back into %s (they stay in %s): %w", w.dir, w.image, cpErr)
	}
	if err := os.Remove(w.image); err != nil {
		return err
	}
	// The file system's lost+found is not a workspace file.
	if fi, err := os.Lstat(filepath.Join(w.dir, "lost+found")); err == nil && fi.IsDir() {
		_ = os.Remove(filepath.Join(w.dir, "lost+found"))
	}
	return nil
}

// recoverWorkspace undoes the size bound of a workspace whose sandbox is
// gone (an orphan's).
func recoverWorkspace(ctx context.Context, dir, imageFile string, log *slog.Logger) error {
	if imageFile != workspaceImage(dir) {
		return fmt.Errorf("workspace image %s does not belong to %s", imageFile, dir)
	}
	if _, err := os.Lstat(imageFile); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return (&workspaceFS{dir: dir, image: imageFile, log: log}).unmount(ctx)
}

func unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// isMountPoint reports whether dir is listed as a mount point in this
// process's mount table.
func isMountPoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && sandbox.UnescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// run runs a system tool, returning its output in the error.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 512 {
			msg = msg[:512] + "…"
		}
		return fmt.Errorf("%s: %w: %s", name, err, strconv.Quote(msg))
	}
	return nil
}
