//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// The *at system calls the syscall package does not export, and small
// wrappers that retry EINTR. Every path argument here is one name inside
// an open directory, never a path with a slash.

const (
	atSymlinkNoFollow = 0x100
	atRemoveDir       = 0x200

	openDir = syscall.O_RDONLY | syscall.O_DIRECTORY | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
	oPath   = 0x200000 // O_PATH
)

// cstring returns name as a NUL-terminated string in *buf, reusing it.
func cstring(buf *[]byte, name string) (*byte, error) {
	for i := 0; i < len(name); i++ {
		if name[i] == 0 {
			return nil, syscall.EINVAL
		}
	}
	*buf = append(append((*buf)[:0], name...), 0)
	return &(*buf)[0], nil
}

// fstatat is lstat of name in dirfd.
func fstatat(dirfd int, name string, buf *[]byte, st *syscall.Stat_t) error {
	p, err := cstring(buf, name)
	if err != nil {
		return err
	}
	for {
		_, _, e := syscall.Syscall6(sysFstatat, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			uintptr(unsafe.Pointer(st)), atSymlinkNoFollow, 0, 0)
		if e != syscall.EINTR {
			return errnoErr(e)
		}
	}
}

func readlinkat(dirfd int, name string, sizeHint int64) (string, error) {
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return "", err
	}
	n := int(min(max(sizeHint+1, 128), maxTarget+1))
	for {
		b := make([]byte, n)
		r, _, e := syscall.Syscall6(syscall.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return "", e
		}
		if int(r) < len(b) || n > maxTarget {
			return string(b[:r]), nil
		}
		n = maxTarget + 1
	}
}

func unlinkat(dirfd int, name string, flags int) error {
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall(syscall.SYS_UNLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags))
	return errnoErr(e)
}

func symlinkat(target string, dirfd int, name string) error {
	t, err := syscall.BytePtrFromString(target)
	if err != nil {
		return err
	}
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall(syscall.SYS_SYMLINKAT, uintptr(unsafe.Pointer(t)), uintptr(dirfd), uintptr(unsafe.Pointer(p)))
	return errnoErr(e)
}

func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Openat(dirfd, name, flags, mode)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

func read(fd int, b []byte) (int, error) {
	for {
		n, err := syscall.Read(fd, b)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func pread(fd int, b []byte, off int64) (int, error) {
	for {
		n, err := syscall.Pread(fd, b, off)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func write(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// readDirNames lists the directory open at fd, without "." and "..", in
// the kernel's order, stopping once it holds max names.
func readDirNames(fd int, buf []byte, max int) ([]string, error) {
	var names []string
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 || len(names) >= max {
			return names, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, syscall.EIO
			}
			name := b[19:reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			b = b[reclen:]
			if s := string(name); s != "." && s != ".." {
				names = append(names, s)
			}
		}
	}
}

// syncFS flushes the file system holding path (syncfs(2)).
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _, e := syscall.Syscall(sysSyncfs, f.Fd(), 0, 0)
	return errnoErr(e)
}

func keyOf(st *syscall.Stat_t) statKey {
	return statKey{
		ino:   st.Ino,
		size:  st.Size,
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec,
		mode:  st.Mode,
	}
}

// errNotRegular: openRegular found something other than a regular file.
var errNotRegular = errors.New("not a regular file")

// openRegular opens the regular file name in dirfd with flags (O_RDONLY or
// O_WRONLY), and fails with errNotRegular if name is anything else. A
// plain open would call the driver of a device node that the sandbox
// swapped in after the stat (if it holds CAP_MKNOD), on the host, with
// whatever effect opening that device has; a FIFO would block. So the
// name is first opened with O_PATH, which opens nothing, the result is
// checked to be a regular file, and that very inode is then opened
// through /proc/self/fd. Without /proc, a non-blocking open checked
// afterwards is the fallback.
func openRegular(dirfd int, name string, flags int) (int, error) {
	pfd, err := openat(dirfd, name, oPath|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer syscall.Close(pfd)
	var st syscall.Stat_t
	if err := syscall.Fstat(pfd, &st); err != nil {
		return -1, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return -1, errNotRegular
	}
	fd, err := openat(-100, "/proc/self/fd/"+strconv.Itoa(pfd), flags|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
	if err != syscall.ENOENT {
		return fd, err
	}
	fd, err = openat(dirfd, name, flags|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC|syscall.O_NOCTTY, 0)
	if err == syscall.ELOOP || err == syscall.ENXIO {
		return -1, errNotRegular
	}
	if err != nil {
		return -1, err
	}
	if err := syscall.Fstat(fd, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		syscall.Close(fd)
		return -1, errNotRegular
	}
	return fd, nil
}
