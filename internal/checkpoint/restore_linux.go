//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"syscall"
)

// maxRemoveDepth bounds the levels of a tree remove descends at once, each
// holding a file descriptor open. A deeper tree's rest is moved up to the
// root, to be removed from there (restorer.aside).
const maxRemoveDepth = 4096

// restorer applies one checkpoint. Every operation is relative to a
// directory file descriptor opened with O_NOFOLLOW|O_DIRECTORY from the
// root down, and acts on one name in it: a symlink is only ever read,
// removed or replaced, never traversed, whoever put it there and whenever.
type restorer struct {
	s     *Store
	ctx   context.Context
	cache *snapCache // stat cache of the same root, or nil
	// chown: running as root, created entries get the root directory's
	// owner, so that the sandbox user can still change them.
	chown    bool
	uid, gid int
	nameBuf  []byte
	rep      RestoreReport
	// root is the root directory, and aside the names in it of the
	// subtrees remove moved there, still to be removed.
	root  int
	aside []string
}

func (s *Store) restore(ctx context.Context, root string, id hash, cache *snapCache) (RestoreReport, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return RestoreReport{}, fmt.Errorf("checkpoint: restore: %w", err)
	}
	fd, err := openat(-100, root, openDir, 0)
	if err != nil {
		return RestoreReport{}, fmt.Errorf("checkpoint: restore: %w", &os.PathError{Op: "open", Path: root, Err: err})
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return RestoreReport{}, fmt.Errorf("checkpoint: restore: %w", err)
	}
	r := &restorer{s: s, ctx: ctx, cache: cache, chown: os.Geteuid() == 0, uid: int(st.Uid), gid: int(st.Gid), root: fd}
	err = r.dir(fd, "", id)
	for err == nil && len(r.aside) > 0 {
		name := r.aside[0]
		r.aside = r.aside[1:]
		err = r.remove(fd, "", name, 0)
	}
	slices.Sort(r.rep.DroppedSetID)
	return r.rep, err
}

func (r *restorer) wrap(op, rel string, err error) error {
	if errors.Is(err, ErrCorrupt) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("checkpoint: restore: %w", &os.PathError{Op: op, Path: rel, Err: err})
}

// dir makes the directory open at fd hold exactly manifest sum.
func (r *restorer) dir(fd int, rel string, sum hash) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	want, err := r.s.readManifest(sum)
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	names, err := readDirNames(fd, buf, math.MaxInt)
	if err != nil {
		return r.wrap("readdir", rel, err)
	}
	slices.Sort(names)
	i := 0
	for _, name := range names {
		for i < len(want) && want[i].name < name {
			i++
		}
		if i < len(want) && want[i].name == name {
			continue
		}
		if err := r.remove(fd, rel, name, 0); err != nil {
			return err
		}
	}
	var cached *dirState
	if r.cache != nil {
		cached = r.cache.dirs[rel]
	}
	for k := range want {
		e := &want[k]
		var st syscall.Stat_t
		err := fstatat(fd, e.name, &r.nameBuf, &st)
		exists := err == nil
		if err != nil && err != syscall.ENOENT {
			return r.wrap("lstat", joinPath(rel, e.name), err)
		}
		if e.mode&setIDBits != 0 {
			r.rep.DroppedSetID = append(r.rep.DroppedSetID, joinPath(rel, e.name))
		}
		switch e.kind {
		case kindFile:
			err = r.file(fd, rel, e, exists, &st, cached)
		case kindSymlink:
			err = r.symlink(fd, rel, e, exists, &st)
		case kindDir:
			err = r.subdir(fd, rel, e, exists, &st)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func isType(st *syscall.Stat_t, t uint32) bool { return st.Mode&syscall.S_IFMT == t }

func (r *restorer) file(fd int, rel string, e *entry, exists bool, st *syscall.Stat_t, cached *dirState) error {
	mode := e.mode &^ setIDBits
	if exists && isType(st, syscall.S_IFREG) && r.holds(fd, e, st, cached) {
		if st.Mode&modeMask == mode {
			r.rep.Kept++
			return nil
		}
		// A hard link could share the inode with a file elsewhere:
		// chmod only an inode no other name points to.
		if uint64(st.Nlink) == 1 {
			if ffd, err := openRegular(fd, e.name, syscall.O_RDONLY); err == nil {
				var now syscall.Stat_t
				ok := syscall.Fstat(ffd, &now) == nil && now.Ino == st.Ino && syscall.Fchmod(ffd, mode) == nil
				syscall.Close(ffd)
				if ok {
					r.rep.Chmod++
					return nil
				}
			}
		}
	}
	if exists && isType(st, syscall.S_IFDIR) {
		if err := r.remove(fd, rel, e.name, 0); err != nil {
			return err
		}
	}
	return r.writeFile(fd, rel, e, mode)
}

// holds reports whether the regular file e.name, with stat st, already has
// e's content: known from the stat cache, else read and compared.
func (r *restorer) holds(fd int, e *entry, st *syscall.Stat_t, cached *dirState) bool {
	if st.Size != e.size {
		return false
	}
	if cached != nil {
		i, ok := slices.BinarySearchFunc(cached.ents, e.name, func(c cachedEntry, name string) int {
			switch {
			case c.name < name:
				return -1
			case c.name > name:
				return 1
			}
			return 0
		})
		if ok {
			c := &cached.ents[i]
			if c.kind == kindFile && !c.racy && c.st == keyOf(st) {
				return c.sum == e.sum
			}
		}
	}
	ffd, err := openRegular(fd, e.name, syscall.O_RDONLY)
	if err != nil {
		return false
	}
	defer syscall.Close(ffd)
	h := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:chunk]
	for {
		n, err := read(ffd, buf)
		if err != nil {
			return false
		}
		if n == 0 {
			break
		}
		h.Write(buf[:n])
	}
	return hash(h.Sum(nil)) == e.sum
}

// tempName returns a name for a file to be renamed into place.
func tempName() string {
	return ".perimeter-restore-" + strconv.FormatUint(rand.Uint64(), 36)
}

// writeFile writes e's content to a new file in fd and renames it to
// e.name, replacing a file, symlink or special file there.
func (r *restorer) writeFile(fd int, rel string, e *entry, mode uint32) error {
	path := joinPath(rel, e.name)
	src, err := r.s.openObject(e.sum)
	if err != nil {
		return fmt.Errorf("restore %q: %w", path, err)
	}
	defer src.Close()
	var tmp string
	var tfd int
	for {
		tmp = tempName()
		tfd, err = openat(fd, tmp, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err != syscall.EEXIST {
			break
		}
	}
	if err != nil {
		return r.wrap("create", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			syscall.Close(tfd)
			unlinkat(fd, tmp, 0)
		}
	}()
	h := sha256.New()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:chunk]
	var n int64
	for {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		m, rerr := src.Read(buf)
		if m > 0 {
			h.Write(buf[:m])
			if err := write(tfd, buf[:m]); err != nil {
				return r.wrap("write", path, err)
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("checkpoint: restore: %w", rerr)
		}
	}
	if n != e.size || hash(h.Sum(nil)) != e.sum {
		return fmt.Errorf("%w: object %s of %q does not match its hash", ErrCorrupt, e.sum, path)
	}
	if err := syscall.Fchmod(tfd, mode); err != nil {
		return r.wrap("chmod", path, err)
	}
	if r.chown {
		if err := syscall.Fchown(tfd, r.uid, r.gid); err != nil {
			return r.wrap("chown", path, err)
		}
	}
	if err := syscall.Close(tfd); err != nil {
		return r.wrap("close", path, err)
	}
	tfd = -1
	if err := syscall.Renameat(fd, tmp, fd, e.name); err != nil {
		unlinkat(fd, tmp, 0)
		ok = true
		return r.wrap("rename", path, err)
	}
	ok = true
	r.rep.Written++
	return nil
}

func (r *restorer) symlink(fd int, rel string, e *entry, exists bool, st *syscall.Stat_t) error {
	path := joinPath(rel, e.name)
	if exists && isType(st, syscall.S_IFLNK) {
		if t, err := readlinkat(fd, e.name, st.Size); err == nil && t == e.target {
			r.rep.Kept++
			return nil
		}
	}
	if exists && isType(st, syscall.S_IFDIR) {
		if err := r.remove(fd, rel, e.name, 0); err != nil {
			return err
		}
	}
	var tmp string
	var err error
	for {
		tmp = tempName()
		err = symlinkat(e.target, fd, tmp)
		if err != syscall.EEXIST {
			break
		}
	}
	if err != nil {
		return r.wrap("symlink", path, err)
	}
	if r.chown {
		if err := syscall.Fchownat(fd, tmp, r.uid, r.gid, atSymlinkNoFollow); err != nil {
			unlinkat(fd, tmp, 0)
			return r.wrap("chown", path, err)
		}
	}
	if err := syscall.Renameat(fd, tmp, fd, e.name); err != nil {
		unlinkat(fd, tmp, 0)
		return r.wrap("rename", path, err)
	}
	r.rep.Written++
	return nil
}

func (r *restorer) subdir(fd int, rel string, e *entry, exists bool, st *syscall.Stat_t) error {
	path := joinPath(rel, e.name)
	// A racing process may swap the directory for a symlink between the
	// steps below; each attempt starts over, and none follows the link.
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			err := fstatat(fd, e.name, &r.nameBuf, st)
			exists = err == nil
			if err != nil && err != syscall.ENOENT {
				return r.wrap("lstat", path, err)
			}
		}
		if attempt == 3 {
			return r.wrap("open", path, errors.New("directory keeps being replaced"))
		}
		if exists && !isType(st, syscall.S_IFDIR) {
			if err := unlinkat(fd, e.name, 0); err != nil && err != syscall.ENOENT {
				return r.wrap("remove", path, err)
			}
			r.rep.Removed++
			exists = false
		}
		if !exists {
			if err := syscall.Mkdirat(fd, e.name, 0o700); err != nil {
				if err == syscall.EEXIST {
					continue
				}
				return r.wrap("mkdir", path, err)
			}
			r.rep.Created++
		}
		cfd, err := openat(fd, e.name, openDir, 0)
		if err == syscall.ELOOP || err == syscall.ENOTDIR || err == syscall.ENOENT {
			continue
		}
		if err != nil {
			return r.wrap("open", path, err)
		}
		err = r.fillDir(cfd, path, e, !exists)
		syscall.Close(cfd)
		return err
	}
}

// fillDir restores the directory open at fd and then its mode, which may
// forbid writing into it.
func (r *restorer) fillDir(fd int, path string, e *entry, created bool) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return r.wrap("stat", path, err)
	}
	if created && r.chown {
		if err := syscall.Fchown(fd, r.uid, r.gid); err != nil {
			return r.wrap("chown", path, err)
		}
	}
	cur := st.Mode & modeMask
	if cur&0o700 != 0o700 {
		if err := syscall.Fchmod(fd, cur|0o700); err != nil {
			return r.wrap("chmod", path, err)
		}
		cur |= 0o700
	}
	if err := r.dir(fd, path, e.sum); err != nil {
		return err
	}
	if mode := e.mode &^ setIDBits; cur != mode {
		if err := syscall.Fchmod(fd, mode); err != nil {
			return r.wrap("chmod", path, err)
		}
		if !created {
			r.rep.Chmod++
		}
	} else if !created {
		r.rep.Kept++
	}
	return nil
}

// remove deletes name from the directory open at fd, and everything under
// it if it is a directory, without following any symlink.
func (r *restorer) remove(fd int, rel, name string, depth int) error {
	path := joinPath(rel, name)
	uerr := unlinkat(fd, name, 0)
	if uerr == nil {
		r.rep.Removed++
		return nil
	}
	if uerr == syscall.ENOENT {
		return nil
	}
	if uerr != syscall.EISDIR && uerr != syscall.EPERM {
		return r.wrap("remove", path, uerr)
	}
	// A directory (unlink reports EISDIR, or EPERM on some file systems).
	if depth >= maxRemoveDepth {
		// Move it up to the root, under a name of its own, and remove it
		// from there once this tree is gone: the descent starts afresh.
		for {
			aside := tempName()
			err := syscall.Renameat(fd, name, r.root, aside)
			switch err {
			case nil:
				r.aside = append(r.aside, aside)
				return nil
			case syscall.EEXIST, syscall.ENOTEMPTY, syscall.ENOTDIR, syscall.EISDIR:
				continue // the name is taken: another
			case syscall.ENOENT:
				return nil
			}
			return r.wrap("remove", path, err)
		}
	}
	if err := r.ctx.Err(); err != nil {
		return err
	}
	cfd, err := openat(fd, name, openDir, 0)
	if err == syscall.EACCES {
		// A directory without read or search permission for us: give it
		// back to its owner first.
		if err = chmodAt(fd, name, 0o700); err == nil {
			cfd, err = openat(fd, name, openDir, 0)
		}
	}
	switch {
	case err == syscall.ENOENT:
		return nil
	case err == syscall.ELOOP || err == syscall.ENOTDIR:
		if uerr == syscall.EISDIR {
			// It became something else meanwhile: remove that instead.
			return r.remove(fd, rel, name, depth+1)
		}
		return r.wrap("remove", path, uerr)
	case err != nil:
		return r.wrap("open", path, err)
	}
	names, err := readDirNames(cfd, make([]byte, 32<<10), math.MaxInt)
	if err == nil {
		var st syscall.Stat_t
		if syscall.Fstat(cfd, &st) == nil && st.Mode&0o300 != 0o300 {
			// Entries of a read-only directory cannot be unlinked.
			syscall.Fchmod(cfd, st.Mode&modeMask|0o700)
		}
		for _, n := range names {
			if err = r.remove(cfd, path, n, depth+1); err != nil {
				break
			}
		}
	} else {
		err = r.wrap("readdir", path, err)
	}
	syscall.Close(cfd)
	if err != nil {
		return err
	}
	if err := unlinkat(fd, name, atRemoveDir); err != nil && err != syscall.ENOENT {
		return r.wrap("remove", path, err)
	}
	r.rep.Removed++
	return nil
}

// chmodAt changes the mode of the directory name in dirfd without
// following a symlink: it is opened with O_PATH, which needs no
// permission on it, and changed through /proc/self/fd.
func chmodAt(dirfd int, name string, mode uint32) error {
	pfd, err := openat(dirfd, name, oPath|syscall.O_NOFOLLOW|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(pfd)
	return syscall.Chmod("/proc/self/fd/"+strconv.Itoa(pfd), mode)
}
