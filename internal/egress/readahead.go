package egress

import (
	"fmt"
	"io"
)

// readAhead reads a source into pooled buffers in a goroutine of its own,
// up to three pieces ahead of the filter that scans them. On an intercepted
// download the proxy decrypts what the upstream sends, scans it, and
// encrypts it again for the sandbox; in one goroutine those steps take
// turns on one CPU, which makes the proxy the slowest stage between the
// upstream and the sandbox. Split in two, decrypting the next piece
// overlaps encrypting this one.
//
// Each piece is read tailRoom bytes into its buffer: the filter puts the
// tail it held back from the piece before into that room, so the piece
// is scanned where it was read, without a copy.
type readAhead struct {
	src    io.Reader
	filled chan piece    // pieces read, in order; the last carries an error
	free   chan *[]byte  // buffers to read into
	stop   chan struct{} // closed when the filter is released
	done   chan struct{} // closed when the goroutine reads no more
	exited chan struct{} // closed when the goroutine has returned
}

// piece is one read: (*buf)[tailRoom:tailRoom+n], and the source's error.
type piece struct {
	buf *[]byte
	n   int
	err error
}

func (p piece) data() []byte { return (*p.buf)[tailRoom : tailRoom+p.n] }

// maxReadAheads is how many response bodies a Proxy reads ahead at once.
// A read ahead lets one download use two CPUs; with more downloads than
// that at once, they keep the CPUs busy without it, and the buffers it
// takes stay bounded.
const maxReadAheads = 4

// aheadBuffers is how many buffers a readAhead and its filter share: one
// the filter scans and writes from, one being read into, and two read and
// waiting, which carry either side over a short stall of the other. The
// filter brings one, the buffer of its first read.
const aheadBuffers = 4

func startReadAhead(src io.Reader) *readAhead {
	a := &readAhead{
		src:    src,
		filled: make(chan piece, aheadBuffers),
		free:   make(chan *[]byte, aheadBuffers),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	for range aheadBuffers - 1 {
		a.free <- inputBuffers.Get().(*[]byte)
	}
	go a.run()
	return a
}

// run reads until the source fails (io.EOF at its end) or the filter is
// released. Each read takes at least chunk bytes, as a full filter's do.
// done is closed before the last piece is handed over, so that a filter
// which has it knows there is no read left to end.
func (a *readAhead) run() {
	defer close(a.exited)
	for {
		buf := a.buffer()
		if buf == nil {
			close(a.done)
			return
		}
		n, err := a.read(buf)
		if err != nil {
			close(a.done)
		}
		a.filled <- piece{buf: buf, n: n, err: err}
		if err != nil {
			return
		}
	}
}

// buffer returns a free buffer to read into, or nil once the filter is
// released (even if a buffer is free too).
func (a *readAhead) buffer() *[]byte {
	select {
	case <-a.stop:
		return nil
	default:
	}
	select {
	case b := <-a.free:
		return b
	case <-a.stop:
		return nil
	}
}

// read reads one piece into buf. A panic under it (in the transport, TLS
// or gzip) becomes the piece's error, which resets the sandbox's
// connection: in the goroutine that copies the body, net/http would have
// recovered it so; here it would end the process, every session with it.
func (a *readAhead) read(buf *[]byte) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			n, err = 0, fmt.Errorf("reading the body failed: %v", r)
		}
	}()
	return readAtLeast(a.src, (*buf)[tailRoom:cap(*buf)], chunk)
}

// close stops the goroutine and waits for it, calling abort to end a read
// it may be blocked in, and puts the buffers back in the pool. The filter
// hands no buffer back after.
func (a *readAhead) close(abort func() error) {
	close(a.stop)
	select {
	case <-a.done: // a filter that has the last piece always gets here
	default:
		if abort != nil {
			_ = abort()
		}
	}
	<-a.exited
	for {
		select {
		case p := <-a.filled:
			inputBuffers.Put(p.buf)
		case b := <-a.free:
			inputBuffers.Put(b)
		default:
			return
		}
	}
}
