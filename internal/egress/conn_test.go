package egress

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"slices"
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

// scriptedConn answers each Read with the next of its pieces (as much of it
// as fits), then err.
type scriptedConn struct {
	net.Conn
	pieces [][]byte
	err    error
	sizes  []int // len(b) of each Read
}

func (c *scriptedConn) Read(b []byte) (int, error) {
	c.sizes = append(c.sizes, len(b))
	if len(c.pieces) == 0 {
		return 0, c.err
	}
	n := copy(b, c.pieces[0])
	if c.pieces[0] = c.pieces[0][n:]; len(c.pieces[0]) == 0 {
		c.pieces = c.pieces[1:]
	}
	return n, nil
}

// A bulkConn reads the connection in large pieces only while a stream
// fills its caller's reads, hands over every byte in order, and returns
// the connection's error after the data before it.
func TestBulkConnReadsLargePiecesWhileStreaming(t *testing.T) {
	stream := make([]byte, 300<<10)
	for i := range stream {
		stream[i] = byte(i * 7)
	}
	sc := &scriptedConn{pieces: [][]byte{stream[:4<<10], stream[4<<10 : 5<<10], stream[5<<10:]}, err: io.EOF}
	c := &bulkConn{Conn: sc}
	var got []byte
	b := make([]byte, 4<<10)
	var err error
	for err == nil {
		var n int
		n, err = c.Read(b)
		got = append(got, b[:n]...)
	}
	if err != io.EOF {
		t.Fatalf("error %v, want EOF", err)
	}
	if !bytes.Equal(got, stream) {
		t.Fatalf("read %d bytes, not the stream of %d", len(got), len(stream))
	}
	// The first read is direct and fills b: the next is bulk, takes the
	// short piece whole (so streaming ends); the next is direct again and
	// fills b; then bulk reads, full but for the last, take the rest; and
	// the read after that, at the end, is direct.
	want := []int{4 << 10, bulkRead, 4 << 10, bulkRead, bulkRead, bulkRead, 4 << 10}
	if !slices.Equal(sc.sizes, want) {
		t.Fatalf("connection reads of %v, want %v first", sc.sizes, want)
	}
	if c.buf != nil {
		t.Fatal("a drained bulkConn still holds a buffer")
	}
}

// An idle connection (its reads do not fill the caller's buffer) is read
// directly: a read blocked on it holds no pooled buffer.
func TestBulkConnIdleReadsDirect(t *testing.T) {
	sc := &scriptedConn{pieces: [][]byte{[]byte("HTTP/1.1 200 OK\r\n"), []byte("x")}, err: io.EOF}
	c := &bulkConn{Conn: sc}
	b := make([]byte, 16<<10)
	for range 3 {
		_, _ = c.Read(b)
	}
	if !slices.Equal(sc.sizes, []int{16 << 10, 16 << 10, 16 << 10}) {
		t.Fatalf("connection reads of %v, want only direct ones", sc.sizes)
	}
}
