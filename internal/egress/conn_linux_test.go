package egress

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A sandbox's unix connection gets a send buffer that holds a few pieces
// of a body, more than the kernel's default.
func TestSandboxUnixConnectionsGetALargerSendBuffer(t *testing.T) {
	p, err := NewProxy(Options{SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l, err := net.Listen("unix", t.TempDir()+"/egress.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialed, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	c, err := (&limitListener{Listener: l, p: p}).Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sndbuf := func(c net.Conn) int {
		raw, err := c.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var serr error
		if err := raw.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF) }); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
		return v
	}
	b, err := os.ReadFile("/proc/sys/net/core/wmem_max")
	if err != nil {
		t.Fatal(err)
	}
	wmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// Linux doubles what it is asked for, after capping it.
	got, def := sndbuf(c.(*sandboxConn).Conn), sndbuf(dialed)
	if want := 2 * min(sandboxSendBuffer, wmemMax); got != want || got <= def {
		t.Fatalf("send buffer %d bytes, want %d (the default is %d)", got, want, def)
	}
}
