//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"net"
	"syscall"
)

func mkfifo(path string) error { return syscall.Mkfifo(path, 0o644) }

func unixSocket(path string) (func(), error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	return func() { l.Close() }, nil
}

// mknodNull creates a character device like /dev/null (needs root).
func mknodNull(path string) error {
	return syscall.Mknod(path, syscall.S_IFCHR|0o666, 1<<8|3)
}

func mountTmpfs(path string) (func(), error) {
	if err := syscall.Mount("tmpfs", path, "tmpfs", 0, "size=1m"); err != nil {
		return nil, err
	}
	return func() { syscall.Unmount(path, syscall.MNT_DETACH) }, nil
}
