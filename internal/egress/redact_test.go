package egress

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

func redactor(values ...string) *matcher {
	var pats []pattern
	for i, v := range values {
		for _, f := range secretForms([]byte(v)) {
			pats = append(pats, pattern{text: f, repl: []byte("[R" + string(rune('0'+i)) + "]")})
		}
	}
	return newMatcher(pats)
}

// readFiltered reads all of f, then returns its buffers to the pool.
func readFiltered(f *filter) ([]byte, error) {
	defer f.release()
	return io.ReadAll(f)
}

// chunked is a reader that returns the text in the given pieces.
type chunked struct{ pieces []string }

func (c *chunked) Read(b []byte) (int, error) {
	for len(c.pieces) > 0 && c.pieces[0] == "" {
		c.pieces = c.pieces[1:]
	}
	if len(c.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.pieces[0])
	c.pieces[0] = c.pieces[0][n:]
	return n, nil
}

func TestRedactionCatchesValuesSplitAcrossReads(t *testing.T) {
	const value = "s3cr3t-VALUE/with+chars"
	m := redactor(value)
	text := "before " + value + " middle " + base64.StdEncoding.EncodeToString([]byte("user:"+value)) + " end " + value
	want, _ := m.replace(text)
	if strings.Contains(want, value) || hasSecret(want, value) {
		t.Fatalf("replace left the value: %q", want)
	}
	for i := 0; i <= len(text); i++ {
		for j := i; j <= len(text); j += 7 {
			got, err := readFiltered(newFilter(&chunked{pieces: []string{text[:i], text[i:j], text[j:]}}, m, nil))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Fatalf("split at %d, %d: got %q, want %q", i, j, got, want)
			}
		}
	}
	got, _ := readFiltered(newFilter(iotest.OneByteReader(strings.NewReader(text)), m, nil))
	if string(got) != want {
		t.Fatalf("one byte at a time: got %q", got)
	}
}

func TestRedactionHoldsBackOnlyWhatCouldStartAValue(t *testing.T) {
	m := redactor("abcdef")
	for _, tc := range []struct{ in, out, held string }{
		{"data: x\n\n", "data: x\n\n", ""},
		{"data: xab", "data: x", "ab"},
		{"data: abcdexyz", "data: abcdexyz", ""},
		{"abcdef", "[R0]", ""},
		{"aaaaaaaaaa", "aaaaaaaaa", "a"},
		{"xabcde", "x", "abcde"},
	} {
		got, used, matched, _ := m.scan(nil, []byte(tc.in), false, nil)
		if !matched {
			got = []byte(tc.in[:used])
		}
		if string(got) != tc.out || tc.in[used:] != tc.held {
			t.Errorf("%q: emitted %q holding %q, want %q holding %q", tc.in, got, tc.in[used:], tc.out, tc.held)
		}
	}
}

// naiveRedact is the reference: at each position, the longest pattern that
// matches there, else the byte as it is.
func naiveRedact(text string, pats []pattern) string {
	var b strings.Builder
	for i := 0; i < len(text); {
		best := -1
		for k, p := range pats {
			if strings.HasPrefix(text[i:], string(p.text)) && (best < 0 || len(p.text) > len(pats[best].text)) {
				best = k
			}
		}
		if best < 0 {
			b.WriteByte(text[i])
			i++
			continue
		}
		b.Write(pats[best].repl)
		i += len(pats[best].text)
	}
	return b.String()
}

func TestRedactionMatchesReferenceOnRandomText(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "abc"[rng.IntN(3)]
		}
		return string(b)
	}
	for round := range 3000 {
		var pats []pattern
		for k := range 1 + rng.IntN(4) {
			pats = append(pats, pattern{text: []byte(word(1 + rng.IntN(6))), repl: []byte{'[', byte('0' + k), ']'}})
		}
		text := word(rng.IntN(60))
		m := newMatcher(pats)
		want := naiveRedact(text, m.pats)
		var pieces []string
		for rest := text; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(8))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		got, err := readFiltered(newFilter(&chunked{pieces: slices.Clone(pieces)}, m, nil))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			var texts []string
			for _, p := range m.pats {
				texts = append(texts, string(p.text))
			}
			t.Fatalf("round %d: patterns %q, text %q in %q:\ngot  %q\nwant %q", round, texts, text, pieces, got, want)
		}
	}
}

func TestRedactionPrefersTheLongestValue(t *testing.T) {
	m := newMatcher([]pattern{{text: []byte("tok"), repl: []byte("[A]")}, {text: []byte("tokXYZ"), repl: []byte("[B]")}})
	got, err := readFiltered(newFilter(&chunked{pieces: []string{"1 tok", "XYZ 2 tok 3"}}, m, nil))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "1 [B] 2 [A] 3" {
		t.Fatalf("got %q", got)
	}
}

func TestSecretFormsCoverEncodings(t *testing.T) {
	const value = `p@ss/wo+rd"<x>`
	m := redactor(value)
	for _, text := range []string{
		value,
		"q=p%40ss%2Fwo%2Brd%22%3Cx%3E",
		`{"v":"p@ss/wo+rd\"\u003cx\u003e"}`,
		`{"v":"p@ss/wo+rd\"<x>"}`,
		base64.StdEncoding.EncodeToString([]byte(value)),
		base64.StdEncoding.EncodeToString([]byte("a" + value + "b")),
		base64.StdEncoding.EncodeToString([]byte("ab" + value)),
		base64.URLEncoding.EncodeToString([]byte("abc:" + value)),
		// Other escapers' spellings.
		"q=p%40ss%2fwo%2brd%22%3cx%3e",       // lower-case hex
		"p%40ss/wo%2Brd%22%3Cx%3E",           // Python's quote(), "/" kept
		`{"v":"p@ss\/wo+rd\"\u003cx\u003e"}`, // "/" escaped, as PHP does
		`{"v":"p@ss\/wo+rd\"<x>"}`,
		// An echo of a request whose query carried the value, base64'd.
		base64.StdEncoding.EncodeToString([]byte("GET /?q=" + url.QueryEscape(value) + " HTTP/1.1")),
		base64.RawURLEncoding.EncodeToString([]byte("/x/" + url.PathEscape(value))),
	} {
		got, ok := m.replace(text)
		if !ok || bytes.Contains([]byte(got), []byte(value)) || hasSecret(got, value) {
			t.Errorf("%q: got %q", text, got)
		}
	}
}

func TestFilterStopsAtRefusedPattern(t *testing.T) {
	m := newMatcher([]pattern{{text: []byte("PLACEHOLDER"), repl: []byte("PLACEHOLDER")}})
	refuse := func(*pattern) error { return &refusal{"no"} }
	src := strings.Repeat("x", 100000) + "PLACE" + "HOLDER" + "tail"
	got, err := readFiltered(newFilter(&chunked{pieces: []string{src[:100003], src[100003:]}}, m, refuse))
	if _, ok := err.(*refusal); !ok {
		t.Fatalf("err = %v", err)
	}
	if bytes.Contains(got, []byte("PLACEHOLDER")) || bytes.Contains(got, []byte("PLACE")) {
		t.Fatal("the refused pattern passed through")
	}
}

// TestRedactionFindsLongValuesInRandomBytes covers the fast slide over
// text that shares little with the patterns: binary data, long values.
func TestRedactionFindsLongValuesInRandomBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	for round := range 30 {
		var pats []pattern
		for k := range 1 + rng.IntN(6) {
			pats = append(pats, pattern{text: randBytes(2 + rng.IntN(60)), repl: []byte{'[', byte('0' + k), ']'}})
		}
		m := newMatcher(pats)
		text := randBytes(rng.IntN(2 * chunk))
		for range rng.IntN(20) {
			p := pats[rng.IntN(len(pats))].text
			at := rng.IntN(len(text) + 1)
			text = slices.Concat(text[:at], p, text[at:])
		}
		want := naiveRedact(string(text), m.pats)
		var pieces []string
		for rest := string(text); len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(2*chunk))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		f := newFilter(&chunked{pieces: pieces}, m, nil)
		f.full = round%2 == 0
		if round%4 == 0 {
			f.aheads = make(chan struct{}, 1)
		}
		got, err := readFiltered(f)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Fatalf("round %d: output differs from the reference (%d bytes, want %d)", round, len(got), len(want))
		}
	}
}

// revealing is a source that calls reveal before it returns its piece
// number at: the moment the proxy learns a value, before the upstream can
// send it.
type revealing struct {
	chunked
	at, n  int
	reveal func()
}

func (r *revealing) Read(b []byte) (int, error) {
	if r.n == r.at {
		r.reveal()
	}
	r.n++
	return r.chunked.Read(b)
}

func TestRedactionBeginsWhenAValueBecomesKnown(t *testing.T) {
	const value = "s3cr3t-VALUE/with+chars"
	m := redactor(value)
	for _, sameLength := range []bool{false, true} {
		for split := 0; split <= len(value); split++ {
			// The value arrives in pieces 2 and 3, split anywhere;
			// the proxy learns it before piece 2 is read.
			pieces := []string{"before, ", "more text ", "a" + value[:split], value[split:] + " after " + value}
			var known atomic.Pointer[matcher]
			f := newFilter(&revealing{chunked: chunked{pieces: slices.Clone(pieces)}, at: 2, reveal: func() { known.Store(m) }}, nil, nil)
			f.reload, f.sameLength = known.Load, sameLength
			got, err := readFiltered(f)
			if err != nil {
				t.Fatal(err)
			}
			in := strings.Join(pieces, "")
			if strings.Contains(string(got), value) || hasSecret(string(got), value) {
				t.Fatalf("split %d, same length %v: the value passed: %q", split, sameLength, got)
			}
			if !strings.HasPrefix(string(got), "before, more text a") {
				t.Fatalf("split %d: what came before the value changed: %q", split, got)
			}
			if sameLength && len(got) != len(in) {
				t.Fatalf("split %d: %d bytes out of %d: %q", split, len(got), len(in), got)
			}
			if !sameLength && string(got) != "before, more text a[R0] after [R0]" {
				t.Fatalf("split %d: got %q", split, got)
			}
		}
	}
}

func TestRedactionWithoutPatternsPassesTheInput(t *testing.T) {
	text := strings.Repeat("0123456789", 30000)
	f := newFilter(&chunked{pieces: []string{text[:100], text[100:70000], text[70000:]}}, nil, nil)
	f.reload = func() *matcher { return nil }
	got, err := readFiltered(f)
	if err != nil || string(got) != text {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
}

func TestSameLengthReplacementsFitWhatTheyReplace(t *testing.T) {
	m := newMatcher([]pattern{
		{text: []byte("abcdefghijklmnopqrstuvwxyz"), repl: []byte("[redacted:x]")},
		{text: []byte("0123456"), repl: []byte("[redacted:x]")},
	})
	got, _ := m.sameLength().replace("<abcdefghijklmnopqrstuvwxyz> <0123456>")
	if want := "<[redacted:x]**************> <[redact>"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if first, again := m.sameLength(), m.sameLength(); first != again {
		t.Fatal("sameLength built its matcher twice")
	}
}
