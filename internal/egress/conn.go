package egress

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// sandboxConn is a connection from the sandbox. Closing it frees its place
// under Options.MaxConns, and forgets it in the set of connections the
// Proxy closes itself (those taken over from the HTTP server).
type sandboxConn struct {
	net.Conn
	p    *Proxy
	once sync.Once
}

func (c *sandboxConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.p.untrack(c)
		<-c.p.connSlots
	})
	return err
}

// limitListener admits as many connections as the Proxy has slots.
type limitListener struct {
	net.Listener
	p *Proxy
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.p.connSlots <- struct{}{}:
	case <-l.p.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.p.connSlots
		return nil, err
	}
	if u, ok := c.(*net.UnixConn); ok {
		// The kernel caps it at net.core.wmem_max, without an error.
		_ = u.SetWriteBuffer(sandboxSendBuffer)
	}
	return &sandboxConn{Conn: c, p: l.p}, nil
}

// sandboxSendBuffer is the send buffer of a sandbox's unix connection: room
// for a few of the pieces a body is copied in (chunk each, and their TLS
// records), so that the proxy goes on reading from the upstream while the
// sandbox takes in the last piece. The usual default
// (net.core.wmem_default, 208 KiB) holds less than one, and the proxy then
// waits for the sandbox after every piece. A TCP connection's buffer is
// left to the kernel, which grows it as needed unless it is set.
const sandboxSendBuffer = 1 << 20

// prefixConn returns prefix before reading from the connection: bytes a
// reader had already buffered when the connection was taken over.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// innerConn is a connection inside an intercepted tunnel, with the target
// the sandbox asked to CONNECT to.
type innerConn struct {
	net.Conn
	target target
	// batch, when set, is under the TLS connection: each Write's records
	// leave in one system call rather than one per record.
	batch *batchConn
	// holding leaves the records in the batch after each Write, to leave
	// when the batch is full or flushed: set while a body is copied
	// (copyBody), which flushes after each piece.
	holding atomic.Bool
}

func (c *innerConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if c.batch != nil && !c.holding.Load() {
		if ferr := c.batch.flush(); err == nil {
			err = ferr
		}
	}
	return n, err
}

// batchConn holds what is written to it until flushed, or until it reads
// (a handshake waits for an answer to what it wrote) or closes. It holds
// a buffer only while it has something to write: an idle connection
// holds none.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	buf *[]byte // guarded by mu: from batchBuffers, nil when empty
	err error   // guarded by mu: the first write error, returned from then on
}

// maxBatch is the most a batchConn holds before it writes anyway: a whole
// piece of a body (chunk, and a little more) with its TLS records.
const maxBatch = 2 * chunk

// batchBuffers hold what batchConns are about to write: maxBatch, and one
// TLS record that may come on top before a write.
var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch+32<<10); return &b }}

func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.buf == nil {
		c.buf = batchBuffers.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, b...)
	if len(*c.buf) >= maxBatch {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *batchConn) flushLocked() error {
	if c.err != nil || c.buf == nil {
		return c.err
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	batchBuffers.Put(c.buf)
	c.buf = nil
	c.err = err
	return err
}

func (c *batchConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *batchConn) Close() error {
	_ = c.flush()
	return c.Conn.Close()
}

// SetWriteDeadline sends what is held first, under the deadline in force
// when it was written: TLS sets a deadline of "now" after its close_notify
// alert, which would otherwise never leave.
func (c *batchConn) SetWriteDeadline(t time.Time) error {
	_ = c.flush()
	return c.Conn.SetWriteDeadline(t)
}

func (c *batchConn) SetDeadline(t time.Time) error {
	_ = c.flush()
	return c.Conn.SetDeadline(t)
}

// connQueue is the listener of the server that reads intercepted tunnels:
// the CONNECT handler hands each one over through it.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c over, or reports false if the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "intercepted" }
func (queueAddr) String() string  { return "intercepted" }

// bulkConn reads from its connection in large pieces once data streams. A
// TLS connection reads little more than one record (16 KiB) at a time from
// the connection under it; on a long body that is one system call per
// record. Once a read fills its buffer (the caller's, or the pooled one),
// more is likely waiting, and the next read takes up to bulkRead bytes into
// a pooled buffer that the following reads drain. After a read that does
// not fill its buffer, reads go straight to the connection again, so an
// idle connection, blocked in a read, holds no buffer (unless the data
// before it ended exactly at a full pooled buffer).
type bulkConn struct {
	net.Conn
	streaming bool    // the last read from the connection filled its buffer
	buf       *[]byte // from bulkBuffers; buf[r:w] is unread
	r, w      int
	err       error // the connection's error, returned once buf is drained
}

// bulkRead is the most a bulkConn reads at once.
const bulkRead = 128 << 10

var bulkBuffers = sync.Pool{New: func() any { b := make([]byte, bulkRead); return &b }}

func (c *bulkConn) Read(b []byte) (int, error) {
	if c.buf != nil {
		n := copy(b, (*c.buf)[c.r:c.w])
		c.r += n
		if c.r < c.w {
			return n, nil
		}
		bulkBuffers.Put(c.buf)
		c.buf = nil
		err := c.err
		c.err = nil
		return n, err
	}
	if !c.streaming || len(b) >= bulkRead {
		n, err := c.Conn.Read(b)
		c.streaming = n == len(b) && n > 0
		return n, err
	}
	buf := bulkBuffers.Get().(*[]byte)
	n, err := c.Conn.Read(*buf)
	k := copy(b, (*buf)[:n])
	c.streaming = n == len(*buf)
	if k == n {
		bulkBuffers.Put(buf)
		return k, err
	}
	c.buf, c.r, c.w, c.err = buf, k, n, err
	return k, nil
}
