package egress

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// A value longer than the room a piece leaves for the tail held before it
// is still found where the pieces read ahead split it.
func TestReadAheadFindsValuesLongerThanTheTailRoom(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	value := make([]byte, 3*tailRoom)
	for i := range value {
		value[i] = 'a' + byte(rng.UintN(26))
	}
	m := newMatcher([]pattern{{text: value, repl: []byte("[redacted]")}})
	text := bytes.Repeat([]byte("-"), 9*chunk)
	for _, at := range []int{chunk - len(value)/2, 3*chunk - 5, 5*chunk + readSlack - 1, 8 * chunk} {
		copy(text[at:], value)
	}
	want, _ := m.replace(string(text))
	f := &filter{src: iotest.HalfReader(bytes.NewReader(text)), m: m, full: true, aheads: make(chan struct{}, 1)}
	got, err := readFiltered(f)
	if err != nil || string(got) != want {
		t.Fatalf("got %d bytes (want %d), %d redactions (want 4), %v", len(got), len(want), strings.Count(string(got), "[redacted]"), err)
	}
}

// blockingSource gives one piece, then blocks until closed.
type blockingSource struct {
	first  []byte
	closed chan struct{}
}

func (b *blockingSource) Read(p []byte) (int, error) {
	if len(b.first) > 0 {
		n := copy(p, b.first)
		b.first = b.first[n:]
		return n, nil
	}
	<-b.closed
	return 0, io.ErrClosedPipe
}

func (b *blockingSource) Close() error { close(b.closed); return nil }

// Released before the end (the sandbox left), a filter ends the read its
// read-ahead is blocked in, and its goroutine returns.
func TestReadAheadEndsABlockedReadOnRelease(t *testing.T) {
	src := &blockingSource{first: bytes.Repeat([]byte("x"), chunk+readSlack), closed: make(chan struct{})}
	f := &filter{src: src, full: true, aheads: make(chan struct{}, 1), abort: src.Close}
	if b, err := f.next(); err != nil || len(b) < chunk {
		t.Fatalf("first piece: %d bytes, %v", len(b), err)
	}
	pre := f.pre
	if pre == nil {
		t.Fatal("a body longer than a piece is not read ahead")
	}
	released := make(chan struct{})
	go func() { f.release(); close(released) }()
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("release waits for a read that never ends")
	}
	select {
	case <-src.closed:
	default:
		t.Fatal("release did not end the source's read")
	}
	select {
	case <-pre.done:
	default:
		t.Fatal("the read-ahead goroutine is still running")
	}
}

// A body read to its end needs no abort: the source is not closed by the
// filter, so the connection under a response can be kept.
func TestReadAheadLeavesAFinishedSourceOpen(t *testing.T) {
	text := bytes.Repeat([]byte("0123456789"), chunk/2)
	aborted := false
	f := &filter{src: bytes.NewReader(text), full: true, aheads: make(chan struct{}, 1), abort: func() error { aborted = true; return nil }}
	got, err := readFiltered(f)
	if err != nil || !bytes.Equal(got, text) {
		t.Fatalf("got %d of %d bytes, %v", len(got), len(text), err)
	}
	if aborted {
		t.Fatal("a source read to its end was aborted")
	}
}

// Values that straddle the boundaries between pieces read ahead, split at
// every byte, are found: the tail held from one piece goes before the next.
func TestReadAheadFindsValuesAcrossPieces(t *testing.T) {
	const value = "tok_ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	m := redactor(value)
	text := bytes.Repeat([]byte("."), (len(value)+1)*chunk)
	for k := 1; k < len(value); k++ {
		copy(text[(k+1)*chunk-k:], value) // k bytes before the boundary
	}
	// Pieces of exactly chunk bytes: each read ahead ends on a boundary.
	var pieces []string
	for at := 0; at < len(text); at += chunk {
		pieces = append(pieces, string(text[at:min(at+chunk, len(text))]))
	}
	want, _ := m.replace(string(text))
	f := &filter{src: &chunked{pieces: pieces}, m: m, full: true, aheads: make(chan struct{}, 1)}
	got, err := readFiltered(f)
	if err != nil || string(got) != want {
		t.Fatalf("got %d bytes (want %d), %d redactions (want %d), %v", len(got), len(want), strings.Count(string(got), "[R0]"), len(value)-1, err)
	}
}

// A proxy reads only a few bodies ahead at once: a filter that finds no
// free slot reads in the goroutine that copies the body, and one that
// read ahead frees its slot when released.
func TestReadAheadTakesOneOfTheProxysSlots(t *testing.T) {
	text := bytes.Repeat([]byte("0123456789"), chunk/2)
	slots := make(chan struct{}, 1)
	first := &filter{src: bytes.NewReader(text), full: true, aheads: slots}
	second := &filter{src: bytes.NewReader(text), full: true, aheads: slots}
	if _, err := first.next(); err != nil || first.pre == nil {
		t.Fatalf("the first body is not read ahead (%v)", err)
	}
	if _, err := second.next(); err != nil || second.pre != nil {
		t.Fatalf("the second body is read ahead without a free slot (%v)", err)
	}
	for _, f := range []*filter{first, second} {
		rest, err := io.ReadAll(f)
		if err != nil || len(rest) == 0 || !bytes.HasSuffix(text, rest) {
			t.Fatalf("the rest of a body: %d bytes, %v", len(rest), err)
		}
		f.release()
	}
	if len(slots) != 0 {
		t.Fatal("a released filter kept its slot")
	}
}
