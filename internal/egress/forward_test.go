package egress

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/iotest"
)

// TestCopyBodyDeliversEveryPieceInOrder copies bodies of many sizes, as
// streams and not, with values to redact across the pieces' boundaries.
func TestCopyBodyDeliversEveryPieceInOrder(t *testing.T) {
	const value = "tok_ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	m := redactor(value)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, size := range []int{0, 1, 1000, chunk - 1, chunk, chunk + readSlack + 1, 7*chunk + 123} {
		text := make([]byte, size)
		for i := range text {
			text[i] = byte(rng.UintN(256))
		}
		for at := 5; at+len(value) < size; at += chunk - 7 {
			copy(text[at:], value)
		}
		want, _ := m.replace(string(text))
		for _, mode := range []struct{ stream, ahead bool }{{true, false}, {false, false}, {false, true}} {
			rec := httptest.NewRecorder()
			f := &filter{src: iotest.HalfReader(bytes.NewReader(text)), m: m, full: !mode.stream}
			if mode.ahead {
				f.aheads = make(chan struct{}, 1)
			}
			n, err := copyBody(rec, f, mode.stream, nil)
			if mode.ahead && size > 2*chunk && f.pre == nil {
				t.Fatalf("size %d: the body was not read ahead", size)
			}
			f.release()
			if err != nil || n != int64(len(want)) || rec.Body.String() != want {
				t.Fatalf("size %d, %+v: wrote %d of %d bytes, %v", size, mode, n, len(want), err)
			}
		}
	}
}

// splitWriter is a ResponseWriter that writes each piece to the
// connection in two writes, as net/http does with its chunk framing.
type splitWriter struct {
	http.ResponseWriter
	conn   net.Conn
	pieces int
}

func (w *splitWriter) Write(b []byte) (int, error) {
	w.pieces++
	half := len(b) / 2
	if _, err := w.conn.Write(b[:half]); err != nil {
		return 0, err
	}
	n, err := w.conn.Write(b[half:])
	return half + n, err
}

// On an intercepted connection, each piece of a body leaves in one write.
func TestCopyBodySendsEachPieceInOneWrite(t *testing.T) {
	under := &deadlineConn{}
	batch := &batchConn{Conn: under}
	ic := &innerConn{Conn: batch, batch: batch}
	text := bytes.Repeat([]byte("0123456789abcdef"), 3*chunk/16+100)
	f := &filter{src: bytes.NewReader(text), full: true}
	defer f.release()
	w := &splitWriter{ResponseWriter: httptest.NewRecorder(), conn: ic}
	n, err := copyBody(w, f, false, ic)
	if err != nil || n != int64(len(text)) || !bytes.Equal(under.written, text) {
		t.Fatalf("copied %d of %d bytes, %v", n, len(text), err)
	}
	if w.pieces < 2 || under.writes != w.pieces {
		t.Errorf("%d writes for %d pieces", under.writes, w.pieces)
	}
	if ic.holding.Load() {
		t.Error("the connection still holds its writes")
	}
	if batch.buf != nil {
		t.Error("the connection keeps a buffer with nothing to write")
	}
}
