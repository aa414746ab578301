package egress

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// hopByHop are the headers of one connection, never forwarded.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyHeader copies end-to-end headers: not hop-by-hop ones, nor those the
// Connection header names.
func copyHeader(dst, src http.Header) {
	var named []string
	for _, v := range src.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				named = append(named, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
	for k, vs := range src {
		if containsKey(hopByHop, k) || containsKey(named, k) {
			continue
		}
		dst[k] = append([]string(nil), vs...)
	}
}

func containsKey(list []string, k string) bool {
	for _, s := range list {
		if s == k {
			return true
		}
	}
	return false
}

// forward checks an HTTP request from the sandbox against the rules and
// credentials, sends it upstream and returns the redacted response.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, t target, intercepted bool) {
	start := time.Now()
	rec := p.newRecord(r.Method, t, r.URL.Path)
	rec.Intercepted = intercepted
	defer p.finish(&rec, start)
	what := r.Method + " " + t.url(r.URL.EscapedPath())

	d := p.rules.checkRequest(t.host, t.ip, t.port, r.Method, r.URL.Path)
	rec.Rule = d.rule
	rec.HostPattern = d.host
	if d.reason != "" {
		p.refuse(w, &rec, what, d.reason)
		return
	}
	rec.Allowed = true

	out := outboundRequest(r, t)
	var guard *atomic.Pointer[refusal]
	if len(p.creds) > 0 {
		g, release, ok := p.substitute(w, r, out, t, &rec, what)
		defer release()
		if !ok {
			return
		}
		guard = g
	}
	if p.redactor.Load() != nil {
		// A compressed answer could hide a value from redaction; ask for
		// the one encoding the proxy can undo.
		out.Header.Set("Accept-Encoding", "gzip")
	}
	if out.Body != nil && out.Body != http.NoBody {
		// The transport may still be sending the body after the response
		// has arrived, hence the atomic count.
		sent := &countingReader{r: out.Body}
		out.Body = sent
		defer func() { rec.BytesOut = sent.n.Load() }()
	}

	resp, err := p.transport.RoundTrip(out)
	var rf *refusal
	if guard != nil {
		rf = guard.Load()
	}
	if rf != nil {
		if err == nil {
			resp.Body.Close()
		}
		p.refuse(w, &rec, what, rf.reason)
		return
	}
	if err != nil {
		switch {
		case errors.As(err, &rf):
			p.refuse(w, &rec, what, rf.reason)
		case r.Context().Err() != nil:
			rec.Reason = "the sandbox closed the request"
		default:
			p.fail(w, &rec, what, err.Error())
		}
		return
	}
	defer resp.Body.Close()
	p.respond(w, r, resp, &rec, what)
}

// respond copies the upstream's response to the sandbox, redacting the
// session's secret values from its headers and body.
func (p *Proxy) respond(w http.ResponseWriter, r *http.Request, resp *http.Response, rec *Record, what string) {
	if resp.StatusCode < 100 || resp.StatusCode > 999 {
		// The transport reads "099" as a status; the server would panic
		// writing it back.
		p.fail(w, rec, what, fmt.Sprintf("the upstream answered with status %d, which HTTP does not have", resp.StatusCode))
		return
	}
	h := w.Header()
	copyHeader(h, resp.Header)
	stream := streaming(resp)
	body := &filter{src: resp.Body, full: !stream, abort: resp.Body.Close}
	if resp.ContentLength > 2*chunk {
		// Long enough for a read ahead to be worth its buffers.
		body.aheads = p.aheads
	}
	defer body.release()
	m := p.redactor.Load()
	if m != nil {
		for _, vs := range h {
			for i, s := range vs {
				vs[i], _ = m.replace(s)
			}
		}
	}
	if bodyAllowed(r.Method, resp.StatusCode) {
		// Every line of the header: a second one would otherwise name a
		// coding that is never undone before the scan.
		enc := strings.ToLower(strings.TrimSpace(strings.Join(resp.Header.Values("Content-Encoding"), ",")))
		identity := enc == "" || enc == "identity"
		switch {
		case m == nil && identity && len(p.creds) > 0:
			// No value has been substituted yet, but one may be while
			// the body streams. Until then the body passes unscanned; the
			// sandbox has been told its length, if the upstream gave one.
			body.reload = p.redactor.Load
			body.sameLength = resp.ContentLength >= 0
		case m == nil:
			// Nothing to redact. In an encoding the sandbox asked for, a
			// value substituted from now on could not be found either.
		case identity:
			body.m, body.reload = m, p.redactor.Load
			h.Del("Content-Length")
		case enc == "gzip" || enc == "x-gzip":
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				p.fail(w, rec, what, "the upstream's gzip body is not valid: "+err.Error())
				return
			}
			// Not closed: Close does not close the body under it, and
			// the body's release (which ends a read ahead) is all the
			// reader needs.
			body.src = zr
			body.m, body.reload = m, p.redactor.Load
			h.Del("Content-Encoding")
			h.Del("Content-Length")
		default:
			p.fail(w, rec, what, fmt.Sprintf("the upstream answered with Content-Encoding %q, in which secret values cannot be found and redacted", enc))
			return
		}
	}
	rec.Status = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	ic, _ := r.Context().Value(connKey{}).(*innerConn)
	n, err := copyBody(w, body, stream, ic)
	rec.BytesIn = n
	if err != nil && r.Context().Err() == nil {
		rec.Reason = "the response was cut short: " + err.Error()
		// Reset the sandbox's connection, so that it does not take a
		// truncated body for a whole one. The record is still finished
		// by forward's deferred call.
		panic(http.ErrAbortHandler)
	}
}

func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// streaming reports whether a response may be a stream of events that
// must reach the sandbox as they come: its length is not known, or it says
// it is an event stream.
func streaming(resp *http.Response) bool {
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return resp.ContentLength < 0 || ct == "text/event-stream"
}

// copyBody copies a response body to the sandbox. A stream is flushed
// after each read, so that events are not held back; any other body is
// copied in large pieces, which cost fewer writes and TLS records. On an
// intercepted connection (ic), the TLS records of each piece (with the
// chunk framing and, first, the header) leave in one write.
func copyBody(w http.ResponseWriter, body *filter, stream bool, ic *innerConn) (int64, error) {
	send := func() error { return nil }
	if ic != nil && ic.batch != nil {
		ic.holding.Store(true)
		defer ic.holding.Store(false)
		send = ic.batch.flush
	}
	rc := http.NewResponseController(w)
	var n int64
	for {
		b, err := body.next()
		if len(b) > 0 {
			k, werr := w.Write(b)
			n += int64(k)
			if werr == nil && stream {
				werr = rc.Flush()
			}
			if werr == nil {
				werr = send()
			}
			if werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// outboundRequest is the request sent upstream for r: end-to-end headers
// only, addressed to the target.
func outboundRequest(r *http.Request, t target) *http.Request {
	u := &url.URL{
		Scheme:   t.scheme,
		Host:     t.hostHeader(),
		Path:     r.URL.Path,
		RawPath:  r.URL.RawPath,
		RawQuery: r.URL.RawQuery,
	}
	out := (&http.Request{
		Method:        r.Method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        make(http.Header, len(r.Header)),
		Body:          r.Body,
		ContentLength: r.ContentLength,
		Host:          u.Host,
	}).WithContext(r.Context())
	copyHeader(out.Header, r.Header)
	// The proxy has answered (or will) the sandbox's Expect itself.
	out.Header.Del("Expect")
	if r.ContentLength == 0 || r.Body == nil {
		out.Body = http.NoBody
		out.ContentLength = 0
	}
	return out
}

// substitute looks for every credential's placeholder in the request. One
// that the target may not receive refuses the request; one it may receive
// is replaced by the value where the credential allows. It answers the
// sandbox itself when it refuses or fails (ok is false). A body too large
// to buffer is checked as it streams; guard, if set, then receives the
// refusal that cut it off. release frees the buffered body's slot once the
// request is done.
func (p *Proxy) substitute(w http.ResponseWriter, r *http.Request, out *http.Request, t target, rec *Record, what string) (guard *atomic.Pointer[refusal], release func(), ok bool) {
	body, large, release, err := p.readBody(r)
	if err != nil {
		rec.Reason = "reading the request body: " + err.Error()
		if r.Context().Err() == nil {
			rec.Status = http.StatusBadRequest
			writeText(w, http.StatusBadRequest, "perimeter egress: could not read the request body")
		}
		return nil, release, false
	}
	v := newView(out, body)
	for _, c := range p.creds {
		found := v.find(c.ph)
		if found == 0 {
			continue
		}
		if !matchAny(c.hosts, t.host, t.ip) {
			p.refuse(w, rec, what, misplaced(c))
			return nil, release, false
		}
		var where place
		if c.header {
			where |= inHeader
		}
		if c.query {
			where |= inURL
		}
		if c.body {
			where |= inBody
		}
		if found&where == 0 {
			continue
		}
		value, err := p.secrets.Get(r.Context(), c.name)
		if err == nil && len(value) == 0 {
			err = errors.New("it is empty")
		}
		if err != nil {
			reason := fmt.Sprintf("secret %q could not be read: %v", c.name, err)
			p.log.Warn("egress: secret unavailable", "secret", c.name, "host", t.host, "err", p.scrub(err.Error()))
			p.fail(w, rec, what, reason)
			return nil, release, false
		}
		p.remember(c.name, value)
		n, err := p.place(out, &body, c, found&where, value)
		clear(value)
		if err != nil {
			p.fail(w, rec, what, fmt.Sprintf("secret %q: %v", c.name, err))
			return nil, release, false
		}
		if n > 0 {
			rec.Secrets = append(rec.Secrets, c.name)
		}
	}
	switch {
	case large != nil:
		guard = new(atomic.Pointer[refusal])
		out.Body = io.NopCloser(newFilter(large, p.guard, func(pt *pattern) error {
			c := p.creds[pt.id]
			var rf *refusal
			switch {
			case !matchAny(c.hosts, t.host, t.ip):
				rf = &refusal{misplaced(c)}
			case c.body:
				rf = &refusal{fmt.Sprintf("the request body carries the placeholder of secret %q, and is larger than %d bytes, the most in which a placeholder is replaced",
					c.name, p.maxBody)}
			default:
				return nil
			}
			guard.Store(rf)
			return rf
		}))
	case body != nil:
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		if len(body) == 0 {
			out.Body = http.NoBody
		}
	}
	return guard, release, true
}

// place puts a value where its placeholder was found and is allowed.
func (p *Proxy) place(out *http.Request, body *[]byte, c *credential, where place, value []byte) (int, error) {
	n := 0
	if where&inHeader != 0 {
		k, err := substituteHeaders(out.Header, c.ph, value)
		if err != nil {
			return 0, err
		}
		n += k
	}
	if where&inURL != 0 {
		q, k := substituteForm(out.URL.RawQuery, c.ph, value)
		out.URL.RawQuery = q
		n += k
	}
	if where&inBody != 0 {
		b, k, err := substituteBody(*body, out.Header.Get("Content-Type"), c.ph, value)
		if err != nil {
			return 0, err
		}
		*body = b
		n += k
	}
	return n, nil
}

func misplaced(c *credential) string {
	return fmt.Sprintf("it carries the placeholder of secret %q, which may be sent only to %s (add the host to the secret's hosts)",
		c.name, c.hostList())
}

// readBody reads a request body of up to maxBody bytes into memory; a
// larger one is returned as a reader (what was read, then the rest).
func (p *Proxy) readBody(r *http.Request) (small []byte, large io.Reader, release func(), err error) {
	release = func() {}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, nil, release, nil
	}
	if r.ContentLength > p.maxBody {
		return nil, r.Body, release, nil
	}
	select {
	case p.bodySlots <- struct{}{}:
	case <-r.Context().Done():
		return nil, nil, release, r.Context().Err()
	}
	release = func() { <-p.bodySlots }
	buf, err := io.ReadAll(io.LimitReader(r.Body, p.maxBody+1))
	if err != nil {
		return nil, nil, release, err
	}
	if int64(len(buf)) > p.maxBody {
		return nil, io.MultiReader(bytes.NewReader(buf), r.Body), release, nil
	}
	return buf, nil, release, nil
}
