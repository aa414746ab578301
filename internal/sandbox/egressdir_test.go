package sandbox

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// NewEgressDir leaves a directory any uid may search but not list, a
// bundle any uid may read and a socket any uid may connect to; when it
// cannot finish, it leaves nothing.
func TestNewEgressDir(t *testing.T) {
	// A hardened host's umask (027) must not take away what a sandbox,
	// which runs as another uid, needs.
	defer syscall.Umask(syscall.Umask(0o027))
	base := testenv.ShortDir(t)
	dir := filepath.Join(base, "s")
	eg, l, err := NewEgressDir(dir, []byte("ROOTS"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for path, want := range map[string]os.FileMode{dir: os.ModeDir | 0o711, eg.CABundle: 0o644, eg.Socket: os.ModeSocket | 0o666} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want %v", path, fi.Mode(), err, want)
		}
	}
	if string(eg.CABundlePEM) != "ROOTS" {
		t.Errorf("CABundlePEM = %q, want what was written", eg.CABundlePEM)
	}
	if b, _ := os.ReadFile(eg.CABundle); string(b) != "ROOTS" {
		t.Errorf("bundle %q", b)
	}
	c, err := net.Dial("unix", eg.Socket)
	if err != nil {
		t.Fatalf("the socket: %v", err)
	}
	c.Close()

	long := filepath.Join(base, strings.Repeat("x", MaxSocketPath))
	if _, _, err := NewEgressDir(long, nil); err == nil {
		t.Fatal("a socket path over the limit was accepted")
	}
	if _, err := os.Stat(long); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed NewEgressDir left %s (%v)", long, err)
	}
}
