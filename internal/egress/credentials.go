package egress

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"
)

// Secrets yields the real value of a credential when a request needs it.
// internal/secrets' Source is one. Errors name the secret, never its value.
type Secrets interface {
	Get(ctx context.Context, name string) ([]byte, error)
}

// Credential is a secret the sandbox uses by placeholder: it holds the
// placeholder, and the proxy substitutes the real value on requests to the
// credential's hosts.
type Credential struct {
	// Name is the secret's name as Secrets knows it; records and refusals
	// show it. Required and unique: letters, digits, '.', '_' and '-'.
	Name string
	// Placeholder stands for the value inside the sandbox: an opaque
	// string of at least 16 printable ASCII characters, unique to this
	// credential. NewPlaceholder makes one.
	Placeholder string
	// Hosts the value may be sent to, as in Rule.Hosts. Required. They
	// add no egress: the rules must allow a request too. A request to any
	// other host that carries the placeholder anywhere is refused.
	Hosts []string
	// In is where the placeholder is replaced: "header" (any header value,
	// also inside "Authorization: Basic" credentials), "query" (the query
	// string, escaped or not) and "body" (bodies up to
	// Options.MaxBodyBytes; JSON and form bodies get the value escaped for
	// them). Empty means header only. A placeholder elsewhere is sent as
	// it is.
	In []string
}

// PlaceholderPrefix starts every placeholder NewPlaceholder makes.
const PlaceholderPrefix = "perimeter-secret:"

// NewPlaceholder returns a fresh placeholder for the named secret:
// "perimeter-secret:<name>:<32 random hex digits>". The random part makes
// it unguessable, so only a sandbox that was given it can use it.
func NewPlaceholder(name string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return PlaceholderPrefix + name + ":" + hex.EncodeToString(b)
}

// credential is a validated Credential.
type credential struct {
	name  string
	ph    string
	hosts []hostPattern
	// Where the placeholder is replaced.
	header, query, body bool
}

func compileCredentials(creds []Credential) ([]*credential, error) {
	var out []*credential
	for i, c := range creds {
		if c.Name == "" {
			return nil, fmt.Errorf("credential %d: a name is required", i+1)
		}
		where := fmt.Sprintf("credential %d (%q)", i+1, c.Name)
		cc, err := compileCredential(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, o := range out {
			switch {
			case o.name == cc.name:
				return nil, fmt.Errorf("%s: another credential has the same name", where)
			case strings.Contains(o.ph, cc.ph) || strings.Contains(cc.ph, o.ph):
				return nil, fmt.Errorf("%s: its placeholder overlaps that of %q", where, o.name)
			}
		}
		out = append(out, cc)
	}
	return out, nil
}

// compileCredential validates one credential on its own; errors do not
// name it.
func compileCredential(c Credential) (*credential, error) {
	if strings.ContainsFunc(c.Name, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-')
	}) {
		return nil, errors.New("a name has only letters, digits, '.', '_' and '-'")
	}
	if len(c.Placeholder) < 16 || strings.ContainsFunc(c.Placeholder, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return nil, errors.New("the placeholder must be at least 16 printable ASCII characters without spaces (use egress.NewPlaceholder)")
	}
	if len(c.Hosts) == 0 {
		return nil, errors.New("at least one host is required")
	}
	cc := &credential{name: c.Name, ph: c.Placeholder}
	for _, h := range c.Hosts {
		p, err := parseHostPattern(h)
		if err != nil {
			return nil, err
		}
		cc.hosts = append(cc.hosts, p)
	}
	in := c.In
	if len(in) == 0 {
		in = []string{"header"}
	}
	for _, w := range in {
		switch w {
		case "header":
			cc.header = true
		case "query":
			cc.query = true
		case "body":
			cc.body = true
		default:
			return nil, fmt.Errorf("in %q: want header, query or body", w)
		}
	}
	return cc, nil
}

func (c *credential) hostList() string {
	s := make([]string, len(c.hosts))
	for i, h := range c.hosts {
		s[i] = h.String()
	}
	return strings.Join(s, ", ")
}

// placeholderPatterns are the forms of every placeholder that the proxy
// recognises in a body it streams rather than buffers (a body it buffers is
// decoded before it is searched): as is and percent-encoded, wholly or in
// part, with upper- or lower-case hex.
func placeholderPatterns(creds []*credential) *matcher {
	var pats []pattern
	for i, c := range creds {
		for _, f := range escapings(c.ph) {
			if !slices.ContainsFunc(pats, func(p pattern) bool { return string(p.text) == f }) {
				pats = append(pats, pattern{text: []byte(f), repl: []byte(f), id: i})
			}
		}
	}
	return newMatcher(pats)
}

// maxEscapable bounds the bytes escapings varies: each triples the forms.
const maxEscapable = 4

// escapings returns s with each byte that URL encoding escapes left as is
// or percent-encoded in upper- or lower-case hex, in every combination. A
// placeholder has two such bytes, its colons: nine forms. Past
// maxEscapable such bytes it returns s and its whole escapes only.
func escapings(s string) []string {
	var at []int
	for i := range len(s) {
		if url.QueryEscape(s[i:i+1]) != s[i:i+1] {
			at = append(at, i)
		}
	}
	if len(at) > maxEscapable {
		e := url.QueryEscape(s)
		return []string{s, e, lowerHexEscapes(e)}
	}
	forms := []string{""}
	prev := 0
	for _, i := range at {
		upper, lower := fmt.Sprintf("%%%02X", s[i]), fmt.Sprintf("%%%02x", s[i])
		var next []string
		for _, f := range forms {
			f += s[prev:i]
			next = append(next, f+s[i:i+1], f+upper)
			if lower != upper {
				next = append(next, f+lower)
			}
		}
		forms, prev = next, i+1
	}
	for j := range forms {
		forms[j] += s[prev:]
	}
	return forms
}

func lowerHexEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = toLowerASCII(b[i+1]), toLowerASCII(b[i+2])
		}
	}
	return string(b)
}

func toLowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Where a placeholder was found in a request.
type place uint8

const (
	inURL place = 1 << iota
	inHeader
	inBody
)

// view is the text of a request in which placeholders are looked for:
// each part as sent, and percent-decoded where it holds escapes, and
// Basic credentials decoded.
type view struct {
	url    []string
	header []string
	body   [][]byte
}

func newView(out *http.Request, body []byte) *view {
	v := &view{}
	addText := func(list *[]string, s string) {
		*list = append(*list, s)
		if strings.IndexByte(s, '%') >= 0 {
			*list = append(*list, string(percentDecode([]byte(s))))
		}
	}
	addText(&v.url, out.URL.Path)
	addText(&v.url, out.URL.RawPath)
	addText(&v.url, out.URL.RawQuery)
	for _, vs := range out.Header {
		for _, s := range vs {
			addText(&v.header, s)
			if dec, ok := decodeBasic(s); ok {
				v.header = append(v.header, dec)
			}
		}
	}
	if len(body) > 0 {
		v.body = append(v.body, body)
		if bytes.IndexByte(body, '%') >= 0 {
			v.body = append(v.body, percentDecode(body))
		}
	}
	return v
}

// find returns where the view holds the placeholder.
func (v *view) find(ph string) place {
	var p place
	if slices.ContainsFunc(v.url, func(s string) bool { return strings.Contains(s, ph) }) {
		p |= inURL
	}
	if slices.ContainsFunc(v.header, func(s string) bool { return strings.Contains(s, ph) }) {
		p |= inHeader
	}
	if slices.ContainsFunc(v.body, func(b []byte) bool { return bytes.Contains(b, []byte(ph)) }) {
		p |= inBody
	}
	return p
}

// percentDecode decodes every valid %XX escape and leaves everything else.
func percentDecode(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '%' && i+2 < len(b) && isHex(b[i+1]) && isHex(b[i+2]) {
			out = append(out, unhex(b[i+1])<<4|unhex(b[i+2]))
			i += 2
			continue
		}
		out = append(out, b[i])
	}
	return out
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// decodeBasic returns the "user:password" of a Basic credentials header.
func decodeBasic(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(token))
	if err != nil {
		return "", false
	}
	return string(dec), true
}

// errUnfit means a value cannot be placed where its placeholder is.
var errUnfit = errors.New("the value cannot be placed there")

// substituteHeaders replaces the placeholder in every header value and in
// Basic credentials, and returns how many it replaced.
func substituteHeaders(h http.Header, ph string, value []byte) (int, error) {
	n := 0
	for k, vs := range h {
		for i, s := range vs {
			if c := strings.Count(s, ph); c > 0 {
				if bytes.ContainsAny(value, "\r\n\x00") {
					return 0, fmt.Errorf("%w: it holds a line break or NUL, which a header cannot carry", errUnfit)
				}
				s = strings.ReplaceAll(s, ph, string(value))
				n += c
			}
			if dec, ok := decodeBasic(s); ok && strings.Contains(dec, ph) {
				n += strings.Count(dec, ph)
				scheme, _, _ := strings.Cut(s, " ")
				s = scheme + " " + base64.StdEncoding.EncodeToString([]byte(strings.ReplaceAll(dec, ph, string(value))))
			}
			h[k][i] = s
		}
	}
	return n, nil
}

// substituteForm replaces the placeholder in an "&"-separated, URL-encoded
// text (a query string or a form body): each key or value that holds it,
// escaped or not, is decoded, substituted and encoded again; every other
// byte is left as it was.
func substituteForm(s, ph string, value []byte) (string, int) {
	parts := strings.Split(s, "&")
	total := 0
	for i, part := range parts {
		k, v, eq := strings.Cut(part, "=")
		k, n1 := substituteComponent(k, ph, value)
		v, n2 := substituteComponent(v, ph, value)
		if n1+n2 == 0 {
			continue
		}
		total += n1 + n2
		if eq {
			parts[i] = k + "=" + v
		} else {
			parts[i] = k
		}
	}
	if total == 0 {
		return s, 0
	}
	return strings.Join(parts, "&"), total
}

func substituteComponent(c, ph string, value []byte) (string, int) {
	if !strings.Contains(c, ph) && !(strings.IndexByte(c, '%') >= 0 && strings.Contains(string(percentDecode([]byte(c))), ph)) {
		return c, 0
	}
	dec, err := url.QueryUnescape(c)
	if err != nil {
		n := strings.Count(c, ph)
		return strings.ReplaceAll(c, ph, url.QueryEscape(string(value))), n
	}
	n := strings.Count(dec, ph)
	return url.QueryEscape(strings.ReplaceAll(dec, ph, string(value))), n
}

// substituteBody replaces the placeholder in a buffered body, escaping the
// value for the body's media type: JSON string escapes for JSON, URL
// encoding for forms, as is for anything else.
func substituteBody(body []byte, contentType, ph string, value []byte) ([]byte, int, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	switch {
	case mt == "application/x-www-form-urlencoded":
		s, n := substituteForm(string(body), ph, value)
		return []byte(s), n, nil
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		n := bytes.Count(body, []byte(ph))
		if n == 0 {
			return body, 0, nil
		}
		if !utf8.Valid(value) {
			return nil, 0, fmt.Errorf("%w: it is not UTF-8, so a JSON string cannot hold it", errUnfit)
		}
		return bytes.ReplaceAll(body, []byte(ph), jsonEscape(value, false)), n, nil
	}
	n := bytes.Count(body, []byte(ph))
	if n == 0 {
		return body, 0, nil
	}
	return bytes.ReplaceAll(body, []byte(ph), value), n, nil
}
