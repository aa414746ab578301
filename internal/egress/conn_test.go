package egress

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// An intercepted connection batches TLS records under the TLS layer; what
// it writes must still arrive, up to the end of the stream.
func TestBatchedTLSDeliversEverything(t *testing.T) {
	p, err := NewProxy(Options{SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CACertPEM())
	server, client := net.Pipe()
	go func() {
		batch := &batchConn{Conn: server}
		ic := &innerConn{Conn: tls.Server(batch, p.tlsConfig(target{host: "x.test"})), batch: batch}
		_, _ = ic.Write([]byte("hello"))
		_ = ic.Close()
	}()
	got, err := io.ReadAll(tls.Client(client, &tls.Config{ServerName: "x.test", RootCAs: roots}))
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// deadlineConn records writes, and fails them once its write deadline has
// passed, like a socket.
type deadlineConn struct {
	net.Conn
	deadline time.Time
	written  []byte
	writes   int
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	if !c.deadline.IsZero() && !c.deadline.After(time.Now()) {
		return 0, os.ErrDeadlineExceeded
	}
	c.written = append(c.written, b...)
	c.writes++
	return len(b), nil
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error { c.deadline = t; return nil }
func (c *deadlineConn) Close() error                       { return nil }

// TLS sends close_notify under a short deadline, then sets the deadline to
// now: what the batch holds must leave before that.
func TestBatchSendsWhatItHoldsBeforeADeadline(t *testing.T) {
	under := &deadlineConn{}
	c := &batchConn{Conn: under}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("close_notify"))
	_ = c.SetWriteDeadline(time.Now())
	_ = c.Close()
	if string(under.written) != "close_notify" {
		t.Fatalf("written = %q", under.written)
	}
}

// While a body is copied, the records of many writes leave together.
func TestHeldWritesLeaveInOneWrite(t *testing.T) {
	under := &deadlineConn{}
	batch := &batchConn{Conn: under}
	ic := &innerConn{Conn: batch, batch: batch}
	ic.holding.Store(true)
	_, _ = ic.Write([]byte("first "))
	_, _ = ic.Write([]byte("second"))
	if len(under.written) != 0 {
		t.Fatalf("written while held: %q", under.written)
	}
	if err := batch.flush(); err != nil {
		t.Fatal(err)
	}
	ic.holding.Store(false)
	_, _ = ic.Write([]byte(" third"))
	if string(under.written) != "first second third" || under.writes != 2 {
		t.Fatalf("written %q in %d writes", under.written, under.writes)
	}
}
