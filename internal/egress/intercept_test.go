package egress

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// credEnv is a proxy with one credential, "github", usable on api.test,
// an echo upstream for api.test over TLS and over plain HTTP, and one for
// other.test, which the rules allow and the credential does not.
type credEnv struct {
	*testEnv
	pki         *testPKI
	value       string // the real secret: a canary
	ph          string
	api, apiTLS *upstream
	other       *upstream
	otherTLS    *upstream
	mu          sync.Mutex
	received    []echoed // what api.test's upstreams saw
}

func (c *credEnv) last(t *testing.T) echoed {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.received) == 0 {
		t.Fatal("the upstream received nothing")
	}
	return c.received[len(c.received)-1]
}

// useCredential sends api.test a request carrying the placeholder, through
// client and over plain HTTP or TLS: the session then knows the value, and
// redacts it from what follows.
func (c *credEnv) useCredential(t *testing.T, client *http.Client, scheme string) {
	t.Helper()
	port := c.api.port
	if scheme == "https" {
		port = c.apiTLS.port
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s://api.test:%d/", scheme, port), nil)
	req.Header.Set("Authorization", "Bearer "+c.ph)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
}

func newCanary() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	// '/', '+' and '=' make the escaped forms differ from the value.
	return "ghp_" + hex.EncodeToString(b) + "/a+b=c"
}

func newCredEnv(t *testing.T, tweak func(*Options)) *credEnv {
	c := &credEnv{pki: newTestPKI(t), value: newCanary(), ph: NewPlaceholder("github")}
	keep := func(e echoed) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.received = append(c.received, e)
	}
	c.api = newUpstream(t, nil, echoHandler(keep))
	c.apiTLS = newUpstream(t, c.pki, echoHandler(keep))
	c.other = newUpstream(t, nil, echoHandler(nil))
	c.otherTLS = newUpstream(t, c.pki, echoHandler(nil))
	opts := Options{
		RootCAs: c.pki.pool,
		Rules: []Rule{
			{Name: "api", Hosts: []string{"api.test"}, Ports: []int{c.api.port, c.apiTLS.port}, AllowPrivate: true},
			{Name: "other", Hosts: []string{"other.test"}, Ports: []int{c.other.port, c.otherTLS.port}, AllowPrivate: true},
		},
		Credentials: []Credential{{Name: "github", Placeholder: c.ph, Hosts: []string{"api.test"}, In: []string{"header", "query", "body"}}},
		Secrets:     &staticSecrets{values: map[string]string{"github": c.value}},
	}
	if tweak != nil {
		tweak(&opts)
	}
	c.testEnv = startProxy(t, opts)
	return c
}

func TestEgressInterceptsAndSubstitutesCredentials(t *testing.T) {
	c := newCredEnv(t, nil)
	client := c.client(nil) // trusts the session CA only
	type check func(t *testing.T, got echoed)
	cases := []struct {
		name  string
		build func(base string) *http.Request
		check check
	}{
		{"bearer header", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/user", nil)
			r.Header.Set("Authorization", "Bearer "+c.ph)
			return r
		}, func(t *testing.T, got echoed) {
			if h := got.Header.Get("Authorization"); h != "Bearer "+c.value {
				t.Errorf("Authorization upstream = %q", h)
			}
		}},
		{"custom header", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/user", nil)
			r.Header.Set("X-Token", c.ph)
			return r
		}, func(t *testing.T, got echoed) {
			if h := got.Header.Get("X-Token"); h != c.value {
				t.Errorf("X-Token upstream = %q", h)
			}
		}},
		{"basic auth", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/user", nil)
			r.SetBasicAuth("x-access-token", c.ph)
			return r
		}, func(t *testing.T, got echoed) {
			if !got.BasicOK || got.BasicUser != "x-access-token" || got.BasicPass != c.value {
				t.Errorf("Basic upstream = %q %q %v", got.BasicUser, got.BasicPass, got.BasicOK)
			}
		}},
		{"query", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/search?q=x&access_token="+c.ph+"&other=%2F", nil)
			return r
		}, func(t *testing.T, got echoed) {
			if v := got.Query.Get("access_token"); v != c.value {
				t.Errorf("query upstream = %q", v)
			}
			if !strings.HasPrefix(got.RawQuery, "q=x&") || !strings.HasSuffix(got.RawQuery, "&other=%2F") {
				t.Errorf("the rest of the query changed: %q", got.RawQuery)
			}
		}},
		{"escaped query", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/search?"+url.Values{"access_token": {c.ph}}.Encode(), nil)
			return r
		}, func(t *testing.T, got echoed) {
			if v := got.Query.Get("access_token"); v != c.value {
				t.Errorf("query upstream = %q", v)
			}
		}},
		{"json body", func(base string) *http.Request {
			r, _ := http.NewRequest("POST", base+"/repos", strings.NewReader(`{"token":"`+c.ph+`","n":1}`))
			r.Header.Set("Content-Type", "application/json")
			return r
		}, func(t *testing.T, got echoed) {
			var v struct{ Token string }
			if err := json.Unmarshal([]byte(got.Body), &v); err != nil || v.Token != c.value {
				t.Errorf("JSON body upstream: token %q, err %v", v.Token, err)
			}
		}},
		{"form body", func(base string) *http.Request {
			r, _ := http.NewRequest("POST", base+"/login", strings.NewReader(url.Values{"password": {c.ph}, "user": {"me"}}.Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}, func(t *testing.T, got echoed) {
			v, err := url.ParseQuery(got.Body)
			if err != nil || v.Get("password") != c.value || v.Get("user") != "me" {
				t.Errorf("form body upstream = %q (%v)", got.Body, err)
			}
		}},
	}
	for _, scheme := range []string{"https", "http"} {
		port := c.apiTLS.port
		if scheme == "http" {
			port = c.api.port
		}
		base := fmt.Sprintf("%s://api.test:%d", scheme, port)
		for _, tc := range cases {
			t.Run(scheme+" "+tc.name, func(t *testing.T) {
				before := len(c.records.all())
				resp, err := client.Do(tc.build(base))
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
				tc.check(t, c.last(t))
				seen := headerText(resp.Header) + body
				if hasSecret(seen, c.value) {
					t.Errorf("the client saw the secret:\n%s", seen)
				}
				if !strings.Contains(seen, "[redacted:github]") {
					t.Errorf("nothing was redacted:\n%s", seen)
				}
				recs := c.records.waitFor(t, before+1)
				r := recs[len(recs)-1]
				if len(r.Secrets) != 1 || r.Secrets[0] != "github" || r.Intercepted != (scheme == "https") || !r.Allowed {
					t.Errorf("record = %+v", r)
				}
			})
		}
	}
}

func TestEgressRefusesPlaceholderBoundForAnotherHost(t *testing.T) {
	c := newCredEnv(t, func(o *Options) { o.InterceptAll = true })
	client := c.client(nil)
	cases := []struct {
		name  string
		build func(base string) *http.Request
	}{
		{"header", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/", nil)
			r.Header.Set("Authorization", "token "+c.ph)
			return r
		}},
		{"basic auth", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/", nil)
			r.SetBasicAuth("u", c.ph)
			return r
		}},
		{"escaped query", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/?"+url.Values{"t": {c.ph}}.Encode(), nil)
			return r
		}},
		{"path", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/x/"+url.PathEscape(c.ph), nil)
			return r
		}},
		{"json body", func(base string) *http.Request {
			r, _ := http.NewRequest("POST", base+"/", strings.NewReader(`{"t":"`+c.ph+`"}`))
			r.Header.Set("Content-Type", "application/json")
			return r
		}},
		{"form body", func(base string) *http.Request {
			r, _ := http.NewRequest("POST", base+"/", strings.NewReader(url.Values{"t": {c.ph}}.Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}},
		{"cookie, percent-encoded in lower case", func(base string) *http.Request {
			r, _ := http.NewRequest("GET", base+"/", nil)
			r.Header.Set("Cookie", "t="+strings.ToLower(url.QueryEscape(c.ph)))
			return r
		}},
	}
	for _, scheme := range []string{"http", "https"} {
		port := c.other.port
		if scheme == "https" {
			port = c.otherTLS.port
		}
		base := fmt.Sprintf("%s://other.test:%d", scheme, port)
		for _, tc := range cases {
			t.Run(scheme+" "+tc.name, func(t *testing.T) {
				resp, err := client.Do(tc.build(base))
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				want := `it carries the placeholder of secret "github", which may be sent only to api.test (add the host to the secret's hosts)`
				if resp.StatusCode != 403 || !strings.Contains(body, want) {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
			})
		}
	}
	if n := c.other.count() + c.otherTLS.count(); n != 0 {
		t.Fatalf("the other host received %d requests", n)
	}
	if got := c.proxy.secrets.(*staticSecrets).gets; got != 0 {
		t.Errorf("the secret was read %d times for refused requests", got)
	}
}

func TestEgressChecksBodiesTooLargeToBuffer(t *testing.T) {
	var mu sync.Mutex
	var otherSaw []string
	c := newCredEnv(t, func(o *Options) { o.MaxBodyBytes = 4096 })
	other := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		otherSaw = append(otherSaw, string(b))
		mu.Unlock()
		fmt.Fprintf(w, "%d", len(b))
	}))
	c.proxy.rules[1].ports = append(c.proxy.rules[1].ports, other.port)
	client := c.client(nil)
	big := func(with string) io.Reader {
		b := bytes.Repeat([]byte("x"), 20000)
		copy(b[15000:], with)
		// No Content-Length: the proxy must read to know the size.
		return io.MultiReader(bytes.NewReader(b))
	}
	post := func(u string, body io.Reader) (int, string) {
		resp, err := client.Post(u, "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, readAll(t, resp)
	}
	if code, body := post(fmt.Sprintf("http://other.test:%d/", other.port), big("")); code != 200 || body != "20000" {
		t.Fatalf("large body without placeholder: got %d %q", code, body)
	}
	// As is, and escaped wholly or in part, in either case of hex.
	first := strings.Index(c.ph, ":")
	second := first + 1 + strings.Index(c.ph[first+1:], ":")
	for _, form := range []string{
		c.ph,
		url.QueryEscape(c.ph),
		c.ph[:first] + "%3A" + c.ph[first+1:],
		c.ph[:second] + "%3a" + c.ph[second+1:],
		c.ph[:first] + "%3a" + c.ph[first+1:second] + "%3A" + c.ph[second+1:],
	} {
		code, body := post(fmt.Sprintf("http://other.test:%d/", other.port), big(form))
		if code != 403 || !strings.Contains(body, `placeholder of secret "github"`) {
			t.Errorf("large body with %q to another host: got %d %q", form, code, body)
		}
	}
	code, body := post(fmt.Sprintf("http://api.test:%d/", c.api.port), big(c.ph))
	if code != 403 || !strings.Contains(body, "larger than 4096 bytes") {
		t.Fatalf("large body needing substitution: got %d %q", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range otherSaw {
		if strings.Contains(s, c.ph) || strings.Contains(s, c.value) {
			t.Fatal("the other host received the placeholder or the value")
		}
	}
}

func TestEgressRedactsValuesFromResponses(t *testing.T) {
	c := newCredEnv(t, nil)
	var mu sync.Mutex
	next := make(chan struct{})
	leak := newUpstream(t, c.pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/gzip":
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			fmt.Fprintf(zw, "token=%s", c.value)
			zw.Close()
		case "/brotli":
			w.Header().Set("Content-Encoding", "br")
			io.WriteString(w, "not really brotli")
		case "/two-lines":
			// Two header lines: the body is gzip, whatever the first says.
			w.Header()["Content-Encoding"] = []string{"identity", "gzip"}
			zw := gzip.NewWriter(w)
			fmt.Fprintf(zw, "token=%s", c.value)
			zw.Close()
		case "/split":
			// The value arrives in two writes, flushed apart.
			half := len(c.value) / 2
			io.WriteString(w, "a"+c.value[:half])
			w.(http.Flusher).Flush()
			io.WriteString(w, c.value[half:]+"b")
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			<-next // the client has read the first event
			io.WriteString(w, "data: "+c.value+"\n\n")
		}
	}))
	c.proxy.rules[0].ports = append(c.proxy.rules[0].ports, leak.port)
	client := c.client(nil)
	base := fmt.Sprintf("https://api.test:%d", leak.port)

	// Nothing is redacted before the session has substituted a value.
	c.useCredential(t, client, "https")

	for path, want := range map[string]string{"/gzip": "token=[redacted:github]", "/split": "a[redacted:github]b"} {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); body != want || resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("%s: got %q (%q), want %q", path, body, resp.Header.Get("Content-Encoding"), want)
		}
	}
	resp, err := client.Get(base + "/brotli")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 502 || !strings.Contains(body, `Content-Encoding "br"`) {
		t.Errorf("br: got %d %q", resp.StatusCode, body)
	}
	resp, err = client.Get(base + "/two-lines")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 502 || !strings.Contains(body, `Content-Encoding "identity,gzip"`) {
		t.Errorf("Content-Encoding on two lines: got %d %q", resp.StatusCode, body)
	}

	resp, err = client.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("data: first\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		close(next)
		t.Fatalf("the first event did not arrive on its own: %v", err)
	}
	close(next)
	if rest := readAll(t, resp); rest != "data: [redacted:github]\n\n" {
		t.Errorf("events: got %q", rest)
	}
}

func TestEgressRefusesHostHeaderOtherThanTunnels(t *testing.T) {
	c := newCredEnv(t, nil)
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/", c.apiTLS.port), nil)
	req.Host = "other.test"
	req.Header.Set("Authorization", "Bearer "+c.ph)
	resp, err := c.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 403 || !strings.Contains(body, `names host "other.test", but its tunnel was opened to api.test:`) {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if c.apiTLS.count() != 0 {
		t.Fatal("the upstream received the request")
	}
}

func TestEgressFailsClosedWhenSecretIsUnavailable(t *testing.T) {
	c := newCredEnv(t, func(o *Options) { o.Secrets = &staticSecrets{} })
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/", c.apiTLS.port), nil)
	req.Header.Set("Authorization", "Bearer "+c.ph)
	resp, err := c.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 502 || !strings.Contains(body, `secret "github" could not be read`) {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if c.apiTLS.count() != 0 {
		t.Fatal("the upstream received the request")
	}
}

func TestEgressReportsUntrustedSessionCA(t *testing.T) {
	c := newCredEnv(t, nil)
	// This client trusts the upstream's CA, not the session's.
	_, err := c.client(c.pki.pool).Get(fmt.Sprintf("https://api.test:%d/", c.apiTLS.port))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v", err)
	}
	recs := c.records.waitFor(t, 1)
	if r := recs[0]; r.Method != "CONNECT" || !r.Intercepted || !strings.Contains(r.Reason, "does the sandbox trust the session CA?") {
		t.Fatalf("record = %+v", r)
	}
}

// A value the session substitutes while a response is on its way is
// redacted from the rest of that response, wherever reads split it. A
// response whose length the sandbox was told keeps it.
func TestEgressRedactsValueSubstitutedDuringAResponse(t *testing.T) {
	c := newCredEnv(t, nil)
	// Longer than one piece, so that the sandbox sees the start of the
	// body while the upstream waits.
	head := strings.Repeat("h", 2*chunk)
	tail := " after " + c.value + " end"
	var mu sync.Mutex
	proceed := map[string]chan struct{}{"/sized": make(chan struct{}), "/stream": make(chan struct{})}
	slow := newUpstream(t, c.pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		next := proceed[r.URL.Path]
		mu.Unlock()
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", strconv.Itoa(len(head)+len(c.value)+len(tail)))
		}
		io.WriteString(w, head)
		w.(http.Flusher).Flush()
		<-next
		half := len(c.value) / 2
		io.WriteString(w, c.value[:half])
		w.(http.Flusher).Flush()
		io.WriteString(w, c.value[half:]+tail)
	}))
	c.proxy.rules[0].ports = append(c.proxy.rules[0].ports, slow.port)
	client := c.client(nil)

	for _, path := range []string{"/sized", "/stream"} {
		t.Run(path[1:], func(t *testing.T) {
			resp, err := client.Get(fmt.Sprintf("https://api.test:%d%s", slow.port, path))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			start := make([]byte, chunk/2)
			if _, err := io.ReadFull(resp.Body, start); err != nil {
				t.Fatal(err)
			}
			// The session substitutes the value for the first time.
			req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/", c.apiTLS.port), nil)
			req.Header.Set("Authorization", "Bearer "+c.ph)
			sub, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, sub)
			close(proceed[path])
			rest, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body := string(start) + string(rest)
			if strings.Contains(body, c.value) || hasSecret(body, c.value) {
				t.Fatal("the value reached the sandbox")
			}
			if !strings.HasPrefix(body, head) || !strings.Contains(body, "[redacted:github]") {
				t.Fatalf("body does not end as expected: %q", body[min(len(body), len(head)):])
			}
			if path == "/sized" && (resp.ContentLength != int64(len(body)) || len(body) != len(head)+len(c.value)+len(tail)) {
				t.Fatalf("Content-Length %d, body %d bytes", resp.ContentLength, len(body))
			}
		})
	}
}

// A large body through interception, redacted, arrives whole and in
// order, with values straddling the pieces it is copied in.
func TestEgressDeliversLargeInterceptedBodiesWhole(t *testing.T) {
	c := newCredEnv(t, nil)
	text := make([]byte, 3<<20)
	rng := mrand.New(mrand.NewPCG(9, 10))
	for i := range text {
		text[i] = byte(rng.UintN(256))
	}
	for at := chunk - 11; at+len(c.value) < len(text); at += chunk + 3 {
		copy(text[at:], c.value)
	}
	big := newUpstream(t, c.pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(text)))
		w.Write(text)
	}))
	c.proxy.rules[0].ports = append(c.proxy.rules[0].ports, big.port)
	client := c.client(nil)
	for _, substituted := range []bool{false, true} {
		if substituted {
			req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/", c.apiTLS.port), nil)
			req.Header.Set("Authorization", "Bearer "+c.ph)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
		}
		resp, err := client.Get(fmt.Sprintf("https://api.test:%d/", big.port))
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, resp)
		want := string(text)
		if substituted {
			want = strings.ReplaceAll(want, c.value, "[redacted:github]")
		}
		if got != want {
			t.Fatalf("substituted %v: got %d bytes, want %d, and they differ", substituted, len(got), len(want))
		}
	}
}

// A sandbox that leaves in the middle of a large body ends the upstream
// request too, rather than leave the proxy reading it.
// A body the upstream cuts short reaches the sandbox cut short, never as a
// whole body: whether it passes with its length, is redacted as it streams
// (framed anew, without a length) or is gunzipped to be redacted.
func TestEgressDeliversACutShortBodyCutShort(t *testing.T) {
	const declared = 1 << 20
	var sent atomic.Int64
	var gzipped atomic.Bool
	cut := rawUpstream(t, func(conn io.Writer) {
		body, enc := strings.Repeat("a", int(sent.Load())), ""
		if gzipped.Load() {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			_, _ = io.WriteString(zw, body)
			_ = zw.Close()
			body, enc = b.String()[:b.Len()-8], "Content-Encoding: gzip\r\n" // without its trailer
		}
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", enc, declared, body)
	})
	c := newCredEnv(t, func(o *Options) { o.Rules[0].Ports = append(o.Rules[0].Ports, cut.port) })
	client := c.client(nil)
	check := func(what string) {
		t.Helper()
		resp, err := client.Get(fmt.Sprintf("http://api.test:%d/", cut.port))
		if err != nil {
			return // reset before the header: not passed off as whole either
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && err == nil {
			t.Errorf("%s: %d of %d bytes reached the sandbox as a whole body (Content-Length %d)", what, len(b), declared, resp.ContentLength)
		}
	}
	for _, n := range []int64{10, 300 << 10} {
		sent.Store(n)
		check(fmt.Sprintf("%d bytes, no value known yet", n))
	}
	// Once a value is known, responses are redacted as they stream.
	c.useCredential(t, client, "http")
	for _, z := range []bool{false, true} {
		gzipped.Store(z)
		for _, n := range []int64{10, 300 << 10} {
			sent.Store(n)
			check(fmt.Sprintf("%d bytes, gzip %v, redacted", n, z))
		}
	}
}

func TestEgressEndsUpstreamRequestWhenSandboxLeaves(t *testing.T) {
	c := newCredEnv(t, nil)
	ended := make(chan struct{})
	slow := newUpstream(t, c.pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(100<<20))
		w.Write(make([]byte, 1<<20))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(ended)
	}))
	c.proxy.rules[0].ports = append(c.proxy.rules[0].ports, slow.port)
	resp, err := c.client(nil).Get(fmt.Sprintf("https://api.test:%d/", slow.port))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, chunk)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request is still open")
	}
}
