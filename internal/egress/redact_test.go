package egress

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
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
			got, err := io.ReadAll(newFilter(&chunked{pieces: []string{text[:i], text[i:j], text[j:]}}, m, nil))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Fatalf("split at %d, %d: got %q, want %q", i, j, got, want)
			}
		}
	}
	got, _ := io.ReadAll(newFilter(iotest.OneByteReader(strings.NewReader(text)), m, nil))
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
		got, err := io.ReadAll(newFilter(&chunked{pieces: slices.Clone(pieces)}, m, nil))
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
	got, err := io.ReadAll(newFilter(&chunked{pieces: []string{"1 tok", "XYZ 2 tok 3"}}, m, nil))
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
	got, err := io.ReadAll(newFilter(&chunked{pieces: []string{src[:100003], src[100003:]}}, m, refuse))
	if _, ok := err.(*refusal); !ok {
		t.Fatalf("err = %v", err)
	}
	if bytes.Contains(got, []byte("PLACEHOLDER")) || bytes.Contains(got, []byte("PLACE")) {
		t.Fatal("the refused pattern passed through")
	}
}
