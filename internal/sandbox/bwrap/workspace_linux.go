package bwrap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// handOver makes dir and everything in it owned by uid:gid, the host ids
// of the sandbox's user, so that the sandbox can use files the worker put
// there as root. It works inside an os.Root, so a symlink planted by an
// earlier sandbox can never lead it out of dir, and it changes symlinks
// themselves, never what they point to. A file with more than one hard
// link is left alone (and counted): another name of it may be outside dir,
// shared with something that is not the sandbox's to own.
func handOver(dir string, uid, gid int) (skipped int, err error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		fi, err := root.Lstat(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no ownership information", path)
		}
		if int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
		if !fi.IsDir() && st.Nlink > 1 {
			skipped++
			return nil
		}
		return root.Lchown(path, uid, gid)
	})
	return skipped, err
}
