package sandbox

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// MaxSocketPath is the longest unix socket path Linux accepts.
const MaxSocketPath = 107

// EgressSocketPath is where NewEgressDir puts the socket in dir.
func EgressSocketPath(dir string) string { return filepath.Join(dir, "egress.sock") }

// NewEgressDir makes dir hold what a sandbox reaches an egress proxy by:
// the CA bundle the sandbox is to trust (ca.pem, holding bundle) and a
// unix socket (egress.sock) whose listener it returns. Any uid may search
// dir and connect to the socket, since a sandbox may run as a uid of its
// own; dir is not listable, so only a process that knows its (random)
// name reaches the socket. On error nothing is left.
func NewEgressDir(dir string, bundle []byte) (*Egress, net.Listener, error) {
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, nil, err
	}
	e := &Egress{Socket: EgressSocketPath(dir), CABundle: filepath.Join(dir, "ca.pem"), CABundlePEM: bundle}
	// The modes are set, not left to the umask: a host's 027 would keep
	// the sandbox's uid from the directory and the bundle.
	err := os.Chmod(dir, 0o711)
	if err == nil {
		err = os.WriteFile(e.CABundle, bundle, 0o644)
	}
	if err == nil {
		err = os.Chmod(e.CABundle, 0o644)
	}
	var l net.Listener
	if err == nil {
		l, err = net.Listen("unix", e.Socket)
	}
	if err == nil {
		err = os.Chmod(e.Socket, 0o666)
	}
	if err != nil {
		if l != nil {
			l.Close()
		}
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("egress socket and CA bundle in %s: %w", dir, err)
	}
	return e, l, nil
}
