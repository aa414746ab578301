package egress

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// readAllAhead reads f to its end, checks that it read ahead, releases it
// and checks that it gave its slot back.
func readAllAhead(t *testing.T, f *filter) []byte {
	t.Helper()
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if f.pre == nil {
		t.Fatal("the body was not read ahead")
	}
	f.release()
	if len(f.aheads) != 0 {
		t.Fatal("the filter kept its slot")
	}
	return got
}

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
	if got := readAllAhead(t, f); string(got) != want {
		t.Fatalf("got %d bytes (want %d), %d redactions (want 4)", len(got), len(want), strings.Count(string(got), "[redacted]"))
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

// stalling passes reads on to r, and closes stalled when a read asks for
// more once r has given limit bytes: the read r then blocks in.
type stalling struct {
	r       io.Reader
	limit   int
	n       int
	stalled chan struct{}
	once    sync.Once
}

func (s *stalling) Read(p []byte) (int, error) {
	if s.n >= s.limit {
		s.once.Do(func() { close(s.stalled) })
	}
	k, err := s.r.Read(p)
	s.n += k
	return k, err
}

// waitStalled waits until the read-ahead is blocked in its source.
func waitStalled(t *testing.T, s *stalling) {
	t.Helper()
	select {
	case <-s.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the read ahead never asked for more than the source had")
	}
}

// releaseStalled releases f once its read ahead is blocked in watch's
// source, and checks that the release returns, with the goroutine gone and
// the slot free.
func releaseStalled(t *testing.T, f *filter, watch *stalling) {
	t.Helper()
	pre := f.pre
	if pre == nil {
		t.Fatal("a body longer than a piece is not read ahead")
	}
	waitStalled(t, watch)
	released := make(chan struct{})
	go func() { f.release(); close(released) }()
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("release waits for a read that never ends")
	}
	select {
	case <-pre.exited:
	default:
		t.Fatal("the read-ahead goroutine outlived the release")
	}
	if len(f.aheads) != 0 {
		t.Fatal("the filter kept its slot")
	}
}

// Released before the end (the sandbox left), a filter ends the read its
// read-ahead is blocked in, and its goroutine returns.
func TestReadAheadEndsABlockedReadOnRelease(t *testing.T) {
	src := &blockingSource{first: bytes.Repeat([]byte("x"), chunk+readSlack), closed: make(chan struct{})}
	watch := &stalling{r: src, limit: chunk + readSlack, stalled: make(chan struct{})}
	f := &filter{src: watch, full: true, aheads: make(chan struct{}, 1), abort: src.Close}
	if b, err := f.next(); err != nil || len(b) < chunk {
		t.Fatalf("first piece: %d bytes, %v", len(b), err)
	}
	releaseStalled(t, f, watch)
	select {
	case <-src.closed:
	default:
		t.Fatal("release did not end the source's read")
	}
}

// A body read to its end needs no abort: the source is not closed by the
// filter, so the connection under a response can be kept.
func TestReadAheadLeavesAFinishedSourceOpen(t *testing.T) {
	text := bytes.Repeat([]byte("0123456789"), chunk/2)
	aborted := false
	f := &filter{src: bytes.NewReader(text), full: true, aheads: make(chan struct{}, 1), abort: func() error { aborted = true; return nil }}
	if got := readAllAhead(t, f); !bytes.Equal(got, text) {
		t.Fatalf("got %d of %d bytes", len(got), len(text))
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
	if got := readAllAhead(t, f); string(got) != want {
		t.Fatalf("got %d bytes (want %d), %d redactions (want %d)", len(got), len(want), strings.Count(string(got), "[R0]"), len(value)-1)
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
	var starts [2][]byte
	for i, f := range []*filter{first, second} {
		b, err := f.next()
		if err != nil {
			t.Fatal(err)
		}
		starts[i] = bytes.Clone(b)
	}
	if first.pre == nil {
		t.Fatal("the first body is not read ahead")
	}
	if second.pre != nil {
		t.Fatal("the second body is read ahead without a free slot")
	}
	for i, f := range []*filter{first, second} {
		rest, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(append(starts[i], rest...), text) {
			t.Fatalf("body %d: %d and %d bytes of %d, %v", i, len(starts[i]), len(rest), len(text), err)
		}
		f.release()
	}
	if len(slots) != 0 {
		t.Fatal("a released filter kept its slot")
	}
}

// panicking gives one piece, then panics, as a bug under a body would.
type panicking struct{ first []byte }

func (p *panicking) Read(b []byte) (int, error) {
	if len(p.first) == 0 {
		panic("broken reader")
	}
	n := copy(b, p.first)
	p.first = p.first[n:]
	return n, nil
}

// A panic while reading ahead fails the body, as it would in the
// goroutine that copies it (where net/http recovers it), rather than end
// the process.
func TestReadAheadTurnsAPanicIntoAnError(t *testing.T) {
	f := &filter{src: &panicking{first: make([]byte, chunk+readSlack)}, full: true, aheads: make(chan struct{}, 1)}
	defer f.release()
	if _, err := f.next(); err != nil || f.pre == nil {
		t.Fatalf("first piece: %v, read ahead %v", err, f.pre != nil)
	}
	_, err := io.ReadAll(f)
	if err == nil || !strings.Contains(err.Error(), "broken reader") {
		t.Fatalf("the rest of the body: %v", err)
	}
}

// Released with a real response body blocked in a read, identity or
// gzipped, a filter ends the read by closing the body, and frees its slot.
func TestReadAheadEndsAResponseBodysRead(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 3*chunk/8)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.NoCompression)
	_, _ = zw.Write(data)
	_ = zw.Close()
	unblock := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := data
		if r.URL.Path == "/gz" {
			body = gz.Bytes()
		}
		// Promise more than is sent, then wait.
		w.Header().Set("Content-Length", strconv.Itoa(4*len(body)))
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-unblock:
		}
	}))
	defer srv.Close()
	defer close(unblock)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	for _, path := range []string{"/identity", "/gz"} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		var src io.Reader = resp.Body
		if path == "/gz" {
			if src, err = gzip.NewReader(resp.Body); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(path[1:], func(t *testing.T) {
			watch := &stalling{r: src, limit: len(data), stalled: make(chan struct{})}
			f := &filter{src: watch, full: true, aheads: make(chan struct{}, 1), abort: resp.Body.Close}
			if _, err := f.next(); err != nil {
				t.Fatalf("first piece: %v", err)
			}
			releaseStalled(t, f, watch)
		})
	}
}

// A body read ahead to its end leaves the upstream connection to be used
// again, redacted or not; the proxy's slots are all free after.
func TestEgressKeepsTheUpstreamConnectionAfterABodyReadAhead(t *testing.T) {
	c := newCredEnv(t, nil)
	data := bytes.Repeat([]byte("0123456789abcdef"), 5*chunk/16+3)
	var conns atomic.Int32
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		_, _ = w.Write(data)
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	defer up.Close()
	port := up.Listener.Addr().(*net.TCPAddr).Port
	c.proxy.rules[0].ports = append(c.proxy.rules[0].ports, port)
	client := c.client(nil)
	for _, redacted := range []bool{false, true} {
		if redacted {
			c.useCredential(t, client, "http")
		}
		for range 5 {
			resp, err := client.Get(fmt.Sprintf("http://api.test:%d/", port))
			if err != nil {
				t.Fatal(err)
			}
			if b := readAll(t, resp); b != string(data) {
				t.Fatalf("redacted %v: got %d of %d bytes", redacted, len(b), len(data))
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 10 downloads in a row", n)
	}
	if n := len(c.proxy.aheads); n != 0 {
		t.Fatalf("%d read-ahead slots still taken", n)
	}
}
