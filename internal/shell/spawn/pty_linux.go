package spawn

import (
	"os"
	"syscall"
	"unsafe"
)

// start opens a terminal pair, turns the echo off, and starts bash on it.
func start(dir string, env []string) (*Proc, error) {
	ptmx, tty, err := openPTY()
	if err != nil {
		return nil, startError{err}
	}
	defer tty.Close()
	// Off before bash reads its first line: its line editor then echoes
	// nothing either, and no command comes back in the output.
	//
	// Canonical mode is off too. The line editor switches it off while it
	// reads and restores the terminal's mode while a command runs; the
	// next command is typed as soon as the last one's status is printed,
	// which can be before bash is back in its line editor, and a canonical
	// terminal keeps only the first 4095 bytes of a line, silently: the
	// shell would run the truncated command.
	var t syscall.Termios
	if err = ioctl(tty, syscall.TCGETS, unsafe.Pointer(&t)); err == nil {
		t.Lflag &^= syscall.ECHO | syscall.ICANON
		t.Cc[syscall.VMIN], t.Cc[syscall.VTIME] = 1, 0
		err = ioctl(tty, syscall.TCSETS, unsafe.Pointer(&t))
	}
	if err != nil {
		ptmx.Close()
		return nil, startError{err}
	}
	proc, err := os.StartProcess("/bin/bash", []string{"/bin/bash", "--noprofile", "--norc"}, &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []*os.File{tty, tty, tty},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: true},
	})
	if err != nil {
		ptmx.Close()
		return nil, startError{err}
	}
	exited := make(chan struct{})
	go awaitExit(proc.Pid, exited)
	return &Proc{PTY: ptmx, Process: proc, Dir: dir, exited: exited}, nil
}

// awaitExit closes exited when the process pid has exited. It leaves the
// process to be reaped by Kill (WNOWAIT), so that its id, which is also
// its group's, is not reused before Kill has killed the group.
func awaitExit(pid int, exited chan<- struct{}) {
	defer close(exited)
	const pPID = 1     // P_PID
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info[0])), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if errno != syscall.EINTR {
			return
		}
	}
}

// openPTY opens a new terminal pair, as creack/pty does on Linux.
func openPTY() (ptmx, tty *os.File, err error) {
	ptmx, err = os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		return nil, nil, err
	}
	var n, unlock uint32
	if err = ioctl(ptmx, syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err == nil {
		err = ioctl(ptmx, syscall.TIOCGPTN, unsafe.Pointer(&n))
	}
	if err == nil {
		tty, err = os.OpenFile("/dev/pts/"+itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	}
	if err != nil {
		ptmx.Close()
		return nil, nil, err
	}
	return ptmx, tty, nil
}

func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// killGroup kills the process group p leads (bash and whatever it
// started), or p alone if that fails.
func killGroup(p *os.Process) {
	if syscall.Kill(-p.Pid, syscall.SIGKILL) != nil {
		_ = p.Kill()
	}
}

// itoa is strconv's, which this package does without (see the package
// comment).
func itoa(n uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}
