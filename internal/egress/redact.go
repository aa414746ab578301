package egress

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// pattern is a byte string to find in a stream, and what replaces it.
type pattern struct {
	text []byte
	repl []byte
	id   int // which credential the pattern belongs to
}

// matcher finds patterns: the leftmost match first and, of those starting
// at one position, the longest. It is a Wu–Manber search: a window as long
// as the shortest pattern slides over the text, and the last two bytes of
// the window say how far it may slide without passing a match. On text
// that shares little with the patterns it moves by nearly a window at a
// time, so a body is checked for every form of every value in about one
// pass, however many forms there are.
type matcher struct {
	pats   []pattern // longest first
	maxLen int
	win    int             // window: the shortest pattern, at most maxWindow
	blk    int             // bytes per block: 2, or 1 if win is 1
	shift  *[1 << 16]uint8 // by block at the window's end: how far to slide
	// cands lists, by block, the patterns whose window ends with it,
	// longest first.
	cands map[int][]int

	sameOnce sync.Once
	same     *matcher // built by sameLength
}

// maxWindow keeps shifts within a byte.
const maxWindow = 200

func newMatcher(pats []pattern) *matcher {
	pats = slices.Clone(pats)
	slices.SortStableFunc(pats, func(a, b pattern) int { return len(b.text) - len(a.text) })
	m := &matcher{pats: pats, win: maxWindow, blk: 2, cands: map[int][]int{}}
	for _, p := range pats {
		m.maxLen = max(m.maxLen, len(p.text))
		m.win = min(m.win, len(p.text))
	}
	if m.win < 2 {
		m.blk = 1
	}
	m.shift = new([1 << 16]uint8)
	for b := range m.shift {
		m.shift[b] = uint8(m.win - m.blk + 1)
	}
	for k, p := range pats {
		for q := m.blk - 1; q < m.win; q++ {
			b := block(p.text, q, m.blk)
			m.shift[b] = min(m.shift[b], uint8(m.win-1-q))
		}
		b := block(p.text, m.win-1, m.blk)
		m.cands[b] = append(m.cands[b], k)
	}
	return m
}

// sameLength returns a matcher for the same patterns whose replacements
// are cut, or padded with '*', to the length of what they replace.
func (m *matcher) sameLength() *matcher {
	m.sameOnce.Do(func() {
		s := &matcher{pats: slices.Clone(m.pats), maxLen: m.maxLen, win: m.win, blk: m.blk, shift: m.shift, cands: m.cands}
		for i := range s.pats {
			p := &s.pats[i]
			repl := make([]byte, len(p.text))
			for j := copy(repl, p.repl); j < len(repl); j++ {
				repl[j] = '*'
			}
			p.repl = repl
		}
		m.same = s
	})
	return m.same
}

// block is the blk bytes of b that end at i.
func block(b []byte, i, blk int) int {
	if blk == 1 {
		return int(b[i])
	}
	return int(b[i-1])<<8 | int(b[i])
}

// scan finds the matches in src and returns how much of src it consumed.
// If there was a match, it appends the consumed text to dst with every
// match replaced, and reports matched; if not, dst is untouched and the
// consumed text is src[:used] as it is, which saves a copy.
//
// Unless final, it stops before the shortest tail of src that could still
// become a match once more input follows; the caller passes that tail
// again, with the input that follows it. This bounds the look-behind to
// the longest pattern, and holds nothing back when the text cannot
// continue into a match (a stream of events is not delayed). onMatch, if
// set, sees each match before it is replaced; its error ends the scan.
func (m *matcher) scan(dst, src []byte, final bool, onMatch func(*pattern) error) (out []byte, used int, matched bool, err error) {
	i := 0 // src[:i] is handled
	for pos := m.win - 1; pos < len(src); {
		if m.blk == 2 {
			if pos = m.skip(src, pos); pos >= len(src) {
				break
			}
		}
		b := block(src, pos, m.blk)
		if sh := int(m.shift[b]); sh > 0 {
			pos += sh
			continue
		}
		at, best := pos-m.win+1, -1
		for _, k := range m.cands[b] {
			if bytes.HasPrefix(src[at:], m.pats[k].text) {
				best = k
				break
			}
		}
		if best < 0 {
			pos++
			continue
		}
		p := &m.pats[best]
		if !final && at+m.maxLen > len(src) {
			// Near the end, a longer match may start here or before
			// and finish in input still to come.
			if h := m.holdFrom(src, i); h <= at {
				if matched {
					dst = append(dst, src[i:h]...)
				}
				return dst, h, matched, nil
			}
		}
		if onMatch != nil {
			if err := onMatch(p); err != nil {
				return dst, i, matched, err
			}
		}
		dst = append(dst, src[i:at]...)
		dst = append(dst, p.repl...)
		matched = true
		i = at + len(p.text)
		pos = i + m.win - 1
	}
	end := len(src)
	if !final {
		end = m.holdFrom(src, i)
	}
	if matched {
		dst = append(dst, src[i:end]...)
	}
	return dst, end, matched, nil
}

// skip slides a window ending at pos over blocks that occur in no
// pattern's window, and returns where it stops: the first window to look
// at more closely, or len(src) or beyond. The slide is the same for every
// such block, and testing for it (a branch the processor predicts) rather
// than adding whatever the table holds lets each load start before the
// previous one is done. Only for two-byte blocks.
func (m *matcher) skip(src []byte, pos int) int {
	far, shift := m.win-1, m.shift
	for pos < len(src) && pos > 0 { // pos > 0 always; saying so spares a bounds check
		if int(shift[uint16(src[pos-1])<<8|uint16(src[pos])]) != far {
			return pos
		}
		pos += far
	}
	return pos
}

// holdFrom returns the start of the longest tail of src[from:] that is a
// proper prefix of some pattern, or len(src).
func (m *matcher) holdFrom(src []byte, from int) int {
	h := len(src)
	for _, p := range m.pats {
		for j := max(from, len(src)-len(p.text)+1); j < h; j++ {
			k := bytes.IndexByte(src[j:h], p.text[0])
			if k < 0 {
				break
			}
			j += k
			if bytes.HasPrefix(p.text, src[j:]) {
				h = j
				break
			}
		}
	}
	return h
}

// replace returns s with every match replaced, and whether there was one.
func (m *matcher) replace(s string) (string, bool) {
	found := false
	for _, p := range m.pats {
		if strings.Contains(s, string(p.text)) {
			found = true
			break
		}
	}
	if !found {
		return s, false
	}
	out, _, _, _ := m.scan(nil, []byte(s), true, nil)
	return string(out), true
}

// chunk is the least a filter reads before it scans and passes on what it
// read, unless each read must pass on at once (filter.full). readSlack is
// room beyond it, one TLS record: every read asks for more than a
// bufio.Reader of that size (the transport's, see NewProxy) holds, so the
// reader hands it over without first copying it into its own buffer.
// tailRoom is room for a held tail, so that the buffer need not grow.
const (
	chunk     = 256 << 10
	readSlack = 16 << 10
	tailRoom  = 4 << 10
)

// inputBuffers are filters' input buffers, reused across responses.
var inputBuffers = sync.Pool{New: func() any { b := make([]byte, 0, chunk+readSlack+tailRoom); return &b }}

// filter is a reader that passes its source through a matcher: it replaces
// patterns (redaction), or stops at the first one onMatch refuses (a
// request body carrying a placeholder it must not).
type filter struct {
	src io.Reader
	// m has the patterns; nil passes the input as it is, unscanned.
	m *matcher
	// reload, if set, replaces m after each read: the session's values as
	// known once the input was read. A value substituted while a body
	// streams is then redacted from everything read after: an upstream
	// can learn the value only from a request the proxy sends after it
	// remembered the value, so nothing read before can carry it (unless
	// the upstream had the value before the session ever used it).
	reload  func() *matcher
	onMatch func(*pattern) error
	// sameLength cuts or pads each replacement to the length of what it
	// replaces (matcher.sameLength): for a body whose length the sandbox
	// has already been told.
	sameLength bool
	// full makes each fill read at least chunk bytes: fewer, larger scans
	// and writes, for a body whose reader does not wait for it.
	full bool
	// aheads, with full, lets the filter read the rest of the source in a
	// goroutine of its own (readAhead) once a first read shows there is
	// more, if it can take one of the slots: decrypting what the upstream
	// sends next then overlaps scanning and encrypting what the filter
	// passed on. The slot is held until release. abort, if set, unblocks
	// that goroutine's read when the filter is released before the end
	// (closing a response body does).
	aheads chan struct{}
	abort  func() error
	pre    *readAhead
	// in is the input: in[:lent] is being returned as it is (out is a
	// slice of it), and after it comes a held tail, then new reads.
	in     []byte
	pooled *[]byte // the buffer from inputBuffers that in is (or was) in, until release
	lent   int
	buf    []byte // output with replacements; out may be a slice of it
	out    []byte // what Read returns next
	err    error  // returned once out is drained
}

func newFilter(src io.Reader, m *matcher, onMatch func(*pattern) error) *filter {
	return &filter{src: src, m: m, onMatch: onMatch}
}

func (f *filter) Read(b []byte) (int, error) {
	for len(f.out) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		f.fill()
	}
	n := copy(b, f.out)
	f.out = f.out[n:]
	return n, nil
}

// next returns the rest of what the last fill produced, or fills again;
// the slice is valid until the next call. At the end it returns the
// source's error (io.EOF for a clean end), or the one onMatch returned.
func (f *filter) next() ([]byte, error) {
	for len(f.out) == 0 {
		if f.err != nil {
			return nil, f.err
		}
		f.fill()
	}
	out := f.out
	f.out = nil
	return out, nil
}

// WriteTo writes the rest of the filtered stream to w, without copying
// what it does not change.
func (f *filter) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for {
		b, err := f.next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		k, err := w.Write(b)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
}

// release ends a read ahead and returns the input buffers to the pool;
// the filter is not used after.
func (f *filter) release() {
	if f.pre != nil {
		f.pre.close(f.abort)
		f.pre = nil
		<-f.aheads
	}
	if f.pooled != nil {
		inputBuffers.Put(f.pooled)
	}
	f.pooled, f.in, f.out = nil, nil, nil
}

func (f *filter) fill() {
	var err error
	if f.pre != nil {
		err = f.takePiece()
	} else {
		err = f.read()
		if err == nil && f.full && f.aheads != nil {
			select {
			case f.aheads <- struct{}{}:
				f.pre = startReadAhead(f.src)
			default:
			}
		}
	}
	final := err != nil
	if f.reload != nil {
		f.m = f.reload()
	}
	m := f.m
	if m == nil {
		f.out, f.lent = f.in, len(f.in)
	} else {
		if f.sameLength {
			m = m.sameLength()
		}
		out, used, matched, merr := m.scan(f.buf[:0], f.in, final, f.onMatch)
		if merr != nil {
			f.out, f.in, f.err = nil, f.in[:0], merr
			return
		}
		if matched {
			f.buf, f.out = out, out
			f.in = f.in[:copy(f.in, f.in[used:])]
		} else {
			f.out, f.lent = f.in[:used], used
		}
	}
	if final {
		f.err = err
	}
}

// read appends to the input what the source gives, after the tail held
// from the last fill.
func (f *filter) read() error {
	if f.lent > 0 {
		f.in = f.in[:copy(f.in, f.in[f.lent:])]
		f.lent = 0
	}
	if cap(f.in)-len(f.in) < chunk+readSlack {
		if f.in == nil && f.pooled == nil {
			f.pooled = inputBuffers.Get().(*[]byte)
			f.in = (*f.pooled)[:0]
		} else {
			f.in = append(make([]byte, 0, len(f.in)+chunk+readSlack+tailRoom), f.in...)
		}
	}
	room := f.in[len(f.in):cap(f.in)]
	var n int
	var err error
	if f.full {
		n, err = readAtLeast(f.src, room, chunk)
	} else {
		n, err = f.src.Read(room)
	}
	f.in = f.in[:len(f.in)+n]
	return err
}

// takePiece makes the next piece read ahead the input, after the tail
// held from the last fill, which goes into the room left before the piece
// (a longer one makes the input a copy). The buffer the input was in goes
// back to the reading goroutine.
func (f *filter) takePiece() error {
	p := <-f.pre.filled
	tail := f.in[f.lent:]
	f.lent = 0
	if len(tail) > tailRoom {
		f.in = append(append(make([]byte, 0, len(tail)+p.n), tail...), p.data()...)
		f.pre.free <- p.buf
		if f.pooled != nil {
			f.pre.free <- f.pooled
			f.pooled = nil
		}
		return p.err
	}
	start := tailRoom - len(tail)
	copy((*p.buf)[start:tailRoom], tail)
	f.in = (*p.buf)[start : tailRoom+p.n]
	if f.pooled != nil {
		f.pre.free <- f.pooled
	}
	f.pooled = p.buf
	return p.err
}

// readAtLeast reads into b until it holds min bytes or r fails, and
// returns what it read with r's own error. Unlike io.ReadAtLeast it does
// not turn an end before min into io.ErrUnexpectedEOF, so that error means
// what r meant by it: the input was cut short (a body shorter than its
// Content-Length, a gzip stream without its end).
func readAtLeast(r io.Reader, b []byte, min int) (n int, err error) {
	for n < min && err == nil {
		var k int
		k, err = r.Read(b[n:])
		n += k
	}
	return n, err
}

// minFragment is the shortest base64 fragment of a value that is redacted;
// shorter ones would match by chance.
const minFragment = 6

// secretForms returns the forms of a value that an upstream may send back:
// as is; URL-escaped (Go's query and path styles, and every byte but the
// unreserved ones, with and without "/", each with upper- or lower-case
// hex); JSON-escaped (with or without HTML characters and "/"
// escaped); and base64 (standard and URL alphabets) of the value and of
// its URL-escaped forms, at each of the three alignments it can have
// inside a longer encoded text, such as Basic credentials or an encoded
// dump of a request whose query carried it.
func secretForms(value []byte) [][]byte {
	forms := [][]byte{value}
	add := func(b []byte) {
		if len(b) > 0 && !slices.ContainsFunc(forms, func(f []byte) bool { return bytes.Equal(f, b) }) {
			forms = append(forms, b)
		}
	}
	query := []byte(url.QueryEscape(string(value)))
	pathEsc := []byte(url.PathEscape(string(value)))
	for _, esc := range [][]byte{query, pathEsc, strictEscape(value, ""), strictEscape(value, "/")} {
		add(esc)
		add([]byte(lowerHexEscapes(string(esc))))
	}
	for _, html := range []bool{true, false} {
		j := jsonEscape(value, html)
		add(j)
		add(bytes.ReplaceAll(j, []byte("/"), []byte(`\/`)))
	}
	srcs := [][]byte{value}
	for _, esc := range [][]byte{query, pathEsc} {
		if !slices.ContainsFunc(srcs, func(f []byte) bool { return bytes.Equal(f, esc) }) {
			srcs = append(srcs, esc)
		}
	}
	for _, src := range srcs {
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			for k := range 3 {
				e := enc.EncodeToString(append(make([]byte, k), src...))
				// Characters that mix in bits of the unknown bytes around
				// the value are left out: (8k+5)/6 at the start, the
				// partial one at the end.
				lo, hi := (8*k+5)/6, 8*(k+len(src))/6
				if hi-lo >= minFragment {
					add([]byte(e[lo:hi]))
				}
			}
		}
	}
	return forms
}

// strictEscape percent-escapes every byte of s but RFC 3986's unreserved
// characters and those in keep, as Python's quote and JavaScript's
// encodeURIComponent (nearly) do.
func strictEscape(s []byte, keep string) []byte {
	const hex = "0123456789ABCDEF"
	var out []byte
	for _, c := range s {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~"+keep, c) >= 0 {
			out = append(out, c)
			continue
		}
		out = append(out, '%', hex[c>>4], hex[c&15])
	}
	return out
}

// jsonEscape returns value as it appears inside a JSON string.
func jsonEscape(value []byte, escapeHTML bool) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(string(value))
	s := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	return s[1 : len(s)-1]
}
