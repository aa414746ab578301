// Package image builds and resolves the images the docker sandbox runtimes
// start sandboxes from.
//
// A sandbox image is a Debian root file system made by debootstrap (the
// minbase variant plus the tools agents use: bash, coreutils, git, python3,
// ripgrep …), with a user `sandbox` (uid and gid 1000, home /home/sandbox)
// and the empty mount points /workspace and /opt/perimeter. It holds no
// perimeter binary: the runtime bind-mounts the worker's own static binary,
// so the image never has to match a perimeter version. It is imported into
// the engine directly (the API's equivalent of `docker import`), so building
// needs no registry and no base image, only root, debootstrap and a Debian
// mirror.
//
// Images are identified by content. An image built here never came from a
// registry, so it has no repository digest: its pinned reference is its
// image ID, `sha256:…` (the digest of its configuration). [Resolve] turns a
// tag into that ID, or into `name@sha256:…` for an image that was pulled
// from a registry. The sandbox runtimes refuse mutable tags.
//
// A build is cached by its recipe (suite and package list): an image whose
// recipe label matches is reused instead of running debootstrap again.
package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Defaults of [Options].
const (
	DefaultSuite  = "bookworm"
	DefaultMirror = "http://deb.debian.org/debian"
	// DefaultRepository is the repository of the tag Build gives an image,
	// DefaultRepository:<suite> unless Options.Tag says otherwise.
	DefaultRepository = "perimeter-sandbox"
)

// BasePackages are installed in every image, on top of debootstrap's
// minbase: what sandboxd's tools need (bash for the bash tool, coreutils
// env for its start) and what agents expect to find.
var BasePackages = []string{
	"bash", "ca-certificates", "coreutils", "diffutils", "findutils", "git",
	"grep", "gzip", "patch", "procps", "python3", "ripgrep", "sed", "tar",
	"xz-utils",
}

// Labels on built images.
const (
	// LabelRecipe is the hash of what went into an image (suite, packages
	// and the build steps' version); a build with the same recipe reuses it.
	LabelRecipe   = "dev.perimeter.image.recipe"
	LabelSuite    = "dev.perimeter.image.suite"
	LabelPackages = "dev.perimeter.image.packages"
)

// recipeVersion changes whenever the build steps change what they produce,
// so cached images of an older recipe are rebuilt.
const recipeVersion = "1"

// Sandbox user, as the docker runtime runs it.
const (
	UID  = 1000
	GID  = 1000
	Home = "/home/sandbox"
)

// Options configures [Build]. The zero value builds the default image.
type Options struct {
	// Suite is the Debian release; empty means [DefaultSuite].
	Suite string
	// Mirror is the Debian mirror debootstrap downloads from; empty means
	// [DefaultMirror].
	Mirror string
	// Packages are installed in addition to [BasePackages].
	Packages []string
	// Tag names the image; empty means DefaultRepository:<suite>. It is
	// mutable, for people: runtimes are configured with the ID Build
	// returns.
	Tag string
	// Rebuild builds even when an image of the same recipe exists.
	Rebuild bool
	// WorkDir is where the root file system is assembled (it needs about
	// 500 MB, on a file system that allows devices and exec); empty means
	// os.TempDir().
	WorkDir string
	// Client talks to the engine; nil means one from the environment
	// (DOCKER_HOST …), closed when Build returns.
	Client *client.Client
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Recipe is the package list and hash an image of opts is built and cached
// by.
func (o Options) Recipe() (packages []string, hash string) {
	packages = append(slices.Clone(BasePackages), o.Packages...)
	slices.Sort(packages)
	packages = slices.Compact(packages)
	h := sha256.New()
	fmt.Fprintf(h, "perimeter sandbox image v%s\nsuite %s\npackages %s\n", recipeVersion, o.suite(), strings.Join(packages, ","))
	return packages, hex.EncodeToString(h.Sum(nil))
}

func (o Options) suite() string {
	if o.Suite == "" {
		return DefaultSuite
	}
	return o.Suite
}

func (o Options) tag() string {
	if o.Tag == "" {
		return DefaultRepository + ":" + o.suite()
	}
	return o.Tag
}

// NewClient returns an engine client configured from the environment
// (DOCKER_HOST, DOCKER_CERT_PATH …) that negotiates the API version, so it
// works with older engines.
func NewClient() (*client.Client, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return cli, nil
}

// packageName is what debootstrap --include accepts (and nothing that could
// be read as one of its options).
var packageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

// Build makes the sandbox image opts describes, or finds it cached, tags it
// opts.Tag and returns its pinned reference: the image ID, sha256:….
//
// Building runs debootstrap, which needs root and network access to the
// mirror; a cached image needs neither.
func Build(ctx context.Context, opts Options) (string, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	packages, recipe := opts.Recipe()
	for _, p := range packages {
		if !packageName.MatchString(p) {
			return "", fmt.Errorf("image: %q is not a Debian package name", p)
		}
	}
	if !packageName.MatchString(opts.suite()) {
		return "", fmt.Errorf("image: %q is not a Debian suite name", opts.suite())
	}
	tag := opts.tag()
	cli := opts.Client
	if cli == nil {
		var err error
		if cli, err = NewClient(); err != nil {
			return "", fmt.Errorf("image: %w", err)
		}
		defer cli.Close()
	}
	if _, err := cli.Ping(ctx); err != nil {
		return "", fmt.Errorf("image: the Docker engine is not reachable (is dockerd running? scripts/test-deps.sh starts one): %w", err)
	}

	if !opts.Rebuild {
		if id, err := reuse(ctx, cli, recipe, tag, log); err != nil || id != "" {
			return id, err
		}
	}

	if os.Geteuid() != 0 {
		return "", errors.New("image: building a sandbox image needs root (debootstrap creates device nodes and files owned by other users): run `sudo perimeter image build`")
	}
	// Concurrent builds on one machine (two test packages, two operators)
	// wait for each other, and the second then finds the first's image.
	unlock, err := lock(ctx, filepath.Join(os.TempDir(), "perimeter-image-build.lock"))
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer unlock()
	if !opts.Rebuild {
		if id, err := reuse(ctx, cli, recipe, tag, log); err != nil || id != "" {
			return id, err
		}
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		return "", errors.New("image: debootstrap is not installed: `apt-get install debootstrap` (or run scripts/test-deps.sh)")
	}
	work, err := os.MkdirTemp(opts.WorkDir, "perimeter-rootfs-")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer removeRootfs(work, log)
	rootfs := filepath.Join(work, "rootfs")

	start := time.Now()
	mirror := opts.Mirror
	if mirror == "" {
		mirror = DefaultMirror
	}
	log.Info("building the sandbox image with debootstrap (a minute or two)",
		slog.String("suite", opts.suite()), slog.String("mirror", mirror), slog.String("packages", strings.Join(packages, ",")))
	out := &tailLog{log: log}
	cmd := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--components=main",
		"--include="+strings.Join(packages, ","), opts.suite(), rootfs, mirror)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("image: debootstrap: %w", ctx.Err())
		}
		return "", fmt.Errorf("image: debootstrap %s from %s failed (%w); its last output: %s", opts.suite(), mirror, err, out.tail())
	}
	log.Info("debootstrap finished", slog.Duration("took", time.Since(start).Round(time.Second)))

	if err := customize(rootfs); err != nil {
		return "", fmt.Errorf("image: prepare the root file system: %w", err)
	}
	id, err := importRootfs(ctx, cli, rootfs, []string{
		"USER " + fmt.Sprintf("%d:%d", UID, GID),
		"WORKDIR /workspace",
		"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LABEL " + LabelRecipe + "=" + recipe,
		"LABEL " + LabelSuite + "=" + opts.suite(),
		"LABEL " + LabelPackages + "=" + strings.Join(packages, ","),
	}, "perimeter image build: debootstrap "+opts.suite()+" minbase + "+strings.Join(packages, ","))
	if err != nil {
		return "", fmt.Errorf("image: import into the engine: %w", err)
	}
	if err := cli.ImageTag(ctx, id, tag); err != nil {
		return "", fmt.Errorf("image: tag %s as %s: %w", id, tag, err)
	}
	log.Info("sandbox image built", slog.String("id", id), slog.String("tag", tag), slog.Duration("took", time.Since(start).Round(time.Second)))
	return id, nil
}

// reuse tags the newest image built from recipe and returns its ID, or ""
// when there is none.
func reuse(ctx context.Context, cli *client.Client, recipe, tag string, log *slog.Logger) (string, error) {
	id, err := cached(ctx, cli, recipe)
	if err != nil || id == "" {
		return "", err
	}
	if err := cli.ImageTag(ctx, id, tag); err != nil {
		return "", fmt.Errorf("image: tag %s as %s: %w", id, tag, err)
	}
	log.Info("sandbox image found in the engine's cache", slog.String("id", id), slog.String("tag", tag), slog.String("recipe", recipe[:12]))
	return id, nil
}

// cached returns the ID of the newest image built from recipe, or "".
func cached(ctx context.Context, cli *client.Client, recipe string) (string, error) {
	list, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelRecipe+"="+recipe))})
	if err != nil {
		return "", fmt.Errorf("image: list images: %w", err)
	}
	var best image.Summary
	for _, im := range list {
		if im.Created >= best.Created {
			best = im
		}
	}
	return best.ID, nil
}

// customize turns debootstrap's output into a sandbox root file system:
// the sandbox user, its mount points, and no package caches.
func customize(rootfs string) error {
	appends := []struct{ file, line string }{
		{"etc/passwd", fmt.Sprintf("sandbox:x:%d:%d:Perimeter sandbox:%s:/bin/bash\n", UID, GID, Home)},
		{"etc/group", fmt.Sprintf("sandbox:x:%d:\n", GID)},
		{"etc/shadow", "sandbox:!:19000::::::\n"},
		{"etc/gshadow", "sandbox:!::\n"},
	}
	for _, a := range appends {
		if err := appendLine(filepath.Join(rootfs, a.file), a.line); err != nil {
			return err
		}
	}
	dirs := []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{Home, 0o700, UID, GID},
		{"/workspace", 0o755, UID, GID},
		{"/opt/perimeter", 0o755, 0, 0},
	}
	for _, d := range dirs {
		p := filepath.Join(rootfs, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
		if err := os.Lchown(p, d.uid, d.gid); err != nil {
			return err
		}
	}
	// An image cannot update or install packages (its sandboxes have no
	// network and no root); apt's caches and the documentation are dead
	// weight. Copyright notices stay.
	for _, dir := range []string{"var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info", "usr/share/locale", "var/log"} {
		if err := emptyDir(filepath.Join(rootfs, dir), nil); err != nil {
			return err
		}
	}
	return emptyDir(filepath.Join(rootfs, "usr/share/doc"), func(rel string, d os.DirEntry) bool {
		return !d.IsDir() && filepath.Base(rel) == "copyright"
	})
}

// appendLine adds line to file unless a line with the same first field is
// there already.
func appendLine(file, line string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	name, _, _ := strings.Cut(line, ":")
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, name+":") {
			return fmt.Errorf("%s already has an entry for %s", file, name)
		}
	}
	if len(b) > 0 && !strings.HasSuffix(string(b), "\n") {
		line = "\n" + line
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// emptyDir removes what dir holds, except files keep selects (by path
// relative to dir) and the directories leading to them.
func emptyDir(dir string, keep func(rel string, d os.DirEntry) bool) error {
	if keep == nil {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
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
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == ".":
		case d.IsDir():
			dirs = append(dirs, p)
		case !keep(rel, d):
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Deepest first; a directory that still holds a kept file stays.
	for _, d := range slices.Backward(dirs) {
		_ = os.Remove(d)
	}
	return nil
}

// importRootfs streams rootfs as a tar into the engine's image import and
// returns the new image's ID.
func importRootfs(ctx context.Context, cli *client.Client, rootfs string, changes []string, message string) (string, error) {
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	var tarErr error
	wg.Go(func() {
		tarErr = writeTar(pw, rootfs)
		pw.CloseWithError(tarErr) // nil closes with io.EOF
	})
	defer wg.Wait()

	resp, err := cli.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, "", image.ImportOptions{
		Changes: changes,
		Message: message,
	})
	if err != nil {
		pr.CloseWithError(err)
		return "", err
	}
	defer resp.Close()
	id, err := importedID(resp)
	// Unblocks the tar writer if the engine stopped reading early.
	pr.CloseWithError(errors.New("import finished"))
	wg.Wait()
	if tarErr != nil && err == nil {
		err = fmt.Errorf("write the root file system as a tar: %w", tarErr)
	}
	if err != nil {
		return "", err
	}
	return id, nil
}

// importedID reads the engine's progress stream of an import and returns
// the image ID it ends with.
func importedID(r io.Reader) (string, error) {
	dec := json.NewDecoder(r)
	var id string
	for {
		var m struct {
			Status      string `json:"status"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return "", fmt.Errorf("read the engine's answer: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			m.Error = m.ErrorDetail.Message
		}
		if m.Error != "" {
			return "", fmt.Errorf("the engine refused the image: %s", m.Error)
		}
		if s := strings.TrimSpace(m.Status); strings.HasPrefix(s, "sha256:") {
			id = s
		}
	}
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("the engine did not report an image ID (got %q)", id)
	}
	return id, nil
}

// lock takes an exclusive advisory lock on path, waiting for it as long as
// ctx allows. The returned function releases it.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("build lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another image build to finish (lock %s): %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// removeRootfs deletes a build directory. debootstrap mounts /proc and
// /sys (and more) inside the target while it works and may leave them
// mounted when it fails: those are unmounted first, so the removal can
// never reach into the host's /proc, /sys or /dev.
func removeRootfs(work string, log *slog.Logger) {
	mounts, err := mountsUnder(work)
	if err != nil {
		log.Error("not removing the build directory: cannot read the mount table", slog.String("dir", work), slog.Any("error", err))
		return
	}
	for _, m := range slices.Backward(mounts) { // deepest last in mountinfo order
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			log.Error("not removing the build directory: a mount inside it stays", slog.String("mount", m), slog.Any("error", err))
			return
		}
	}
	if err := os.RemoveAll(work); err != nil {
		log.Warn("could not remove the build directory", slog.String("dir", work), slog.Any("error", err))
	}
}

// mountsUnder lists the mount points at or below dir, in mount order.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := sandbox.UnescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// tailLog logs a command's output line by line and keeps its last lines
// for an error message. exec.Cmd writes to it from one goroutine at a time.
type tailLog struct {
	log     *slog.Logger
	partial []byte
	last    []string
}

func (t *tailLog) Write(p []byte) (int, error) {
	t.partial = append(t.partial, p...)
	for {
		i := slices.Index(t.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(t.partial[:i]))
		t.partial = t.partial[i+1:]
		if line == "" {
			continue
		}
		t.log.Debug("debootstrap", slog.String("line", line))
		t.last = append(t.last, line)
		if len(t.last) > 8 {
			t.last = t.last[1:]
		}
	}
	return len(p), nil
}

func (t *tailLog) tail() string {
	lines := t.last
	if s := strings.TrimSpace(string(t.partial)); s != "" {
		lines = append(lines, s)
	}
	if len(lines) == 0 {
		return "(none)"
	}
	return strings.Join(lines, " | ")
}
