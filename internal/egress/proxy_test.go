package egress

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestEgressAllowsListedHostOverPlainHTTP(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s", r.Host, r.URL.Path)
	}))
	e := startProxy(t, Options{Rules: []Rule{{Name: "plain", Hosts: []string{"plain.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	resp, err := e.client(nil).Get(fmt.Sprintf("http://plain.test:%d/x", up.port))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != fmt.Sprintf("hello plain.test:%d /x", up.port) {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// A status HTTP does not have (the transport reads "099" as 99) is a
// failed request, not a status passed on.
func TestEgressRefusesAStatusHTTPDoesNotHave(t *testing.T) {
	up := rawUpstream(t, func(conn io.Writer) {
		io.WriteString(conn, "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi")
	})
	e := startProxy(t, Options{Rules: []Rule{{Name: "plain", Hosts: []string{"plain.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	resp, err := e.client(nil).Get(fmt.Sprintf("http://plain.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "status 99") {
		t.Errorf("got %d %q, want 502 naming the status", resp.StatusCode, body)
	}
}

func TestEgressServesOverUnixSocket(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	e := startProxy(t, Options{Rules: []Rule{{Name: "plain", Hosts: []string{"plain.test"}, Ports: []int{up.port}, AllowPrivate: true}}}, onUnixSocket)
	resp, err := e.client(nil).Get(fmt.Sprintf("http://plain.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); body != "ok" {
		t.Fatalf("got %q", body)
	}
}

func TestEgressTunnelsAllowedHostUntouched(t *testing.T) {
	pki := newTestPKI(t)
	up := newUpstream(t, pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls ok") }))
	e := startProxy(t, Options{Rules: []Rule{{Name: "api", Hosts: []string{"api.test"}, Ports: []int{up.port}, AllowPrivate: true}}})

	// The client trusts the upstream's own CA, not the session's: it gets
	// through only if the proxy leaves TLS alone.
	c := e.client(pki.pool)
	resp, err := c.Get(fmt.Sprintf("https://api.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); body != "tls ok" {
		t.Fatalf("got %q", body)
	}
	if got := resp.TLS.PeerCertificates[0].Subject.CommonName; got != "api.test" {
		t.Errorf("the client saw a certificate for %q, not the upstream's", got)
	}
	c.CloseIdleConnections()
	recs := e.records.waitFor(t, 1)
	r := recs[0]
	if r.Method != "CONNECT" || r.Host != "api.test" || r.Port != up.port || !r.Allowed || r.Intercepted || r.Status != 200 || r.BytesIn == 0 || r.BytesOut == 0 || r.Rule != "api" {
		t.Errorf("record = %+v", r)
	}
}

func TestEgressRejectsUnlistedHost(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	e := startProxy(t, Options{Rules: []Rule{{Name: "api", Hosts: []string{"api.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	c := e.client(nil)
	for _, u := range []string{
		fmt.Sprintf("http://other.test:%d/x", up.port),
		fmt.Sprintf("https://other.test:%d/x", up.port),
	} {
		t.Run(strings.SplitN(u, ":", 2)[0], func(t *testing.T) {
			resp, err := c.Get(u)
			if strings.HasPrefix(u, "https") {
				// Go's client reports a refused CONNECT as an error
				// carrying the status line, not the body.
				if err == nil || !strings.Contains(err.Error(), "Forbidden") {
					t.Fatalf("CONNECT to an unlisted host: err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			want := "perimeter egress: GET http://other.test:" + fmt.Sprint(up.port) + "/x is not allowed: no egress rule allows host other.test (add it under egress.allow in the policy)"
			if resp.StatusCode != 403 || strings.TrimSpace(body) != want {
				t.Fatalf("got %d %q\nwant 403 %q", resp.StatusCode, body, want)
			}
		})
	}
	if up.count() != 0 {
		t.Errorf("the upstream received %d requests", up.count())
	}
	for _, r := range e.records.waitFor(t, 2) {
		if r.Allowed || r.Status != 403 || !strings.Contains(r.Reason, "no egress rule allows host other.test") {
			t.Errorf("record = %+v", r)
		}
	}
}

// rawConnect sends a CONNECT and returns the status line and body.
func rawConnect(t *testing.T, e *testEnv, authority string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	req, _ := http.NewRequest("CONNECT", "http://"+authority, nil)
	resp, err := http.ReadResponse(newBufReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == 200 {
		return 200, ""
	}
	return resp.StatusCode, readAll(t, resp)
}

func TestEgressRefusalOfConnectNamesTheHost(t *testing.T) {
	e := startProxy(t, Options{Rules: []Rule{{Name: "api", Hosts: []string{"api.test"}}}})
	code, body := rawConnect(t, e, "other.test:443")
	want := "perimeter egress: CONNECT other.test:443 is not allowed: no egress rule allows host other.test (add it under egress.allow in the policy)\n"
	if code != 403 || body != want {
		t.Fatalf("got %d %q, want 403 %q", code, body, want)
	}
	code, body = rawConnect(t, e, "api.test:8443")
	if code != 403 || !strings.Contains(body, `rule "api" allows host api.test on ports 443, 80 only (add 8443 to its ports`) {
		t.Fatalf("other port: got %d %q", code, body)
	}
}

func TestEgressRejectsMethodAndPathOutsideRule(t *testing.T) {
	pki := newTestPKI(t)
	plain := newUpstream(t, nil, echoHandler(nil))
	secure := newUpstream(t, pki, echoHandler(nil))
	e := startProxy(t, Options{
		RootCAs: pki.pool,
		Rules: []Rule{{Name: "github", Hosts: []string{"api.test"}, Ports: []int{plain.port, secure.port},
			Methods: []string{"get"}, PathPrefixes: []string{"/repos", "/user/"}, AllowPrivate: true}},
	})
	c := e.client(nil)
	for _, scheme := range []string{"http", "https"} {
		port := plain.port
		if scheme == "https" {
			port = secure.port
		}
		base := fmt.Sprintf("%s://api.test:%d", scheme, port)
		for _, tc := range []struct {
			method, path string
			code         int
			reason       string
		}{
			{"GET", "/repos", 200, ""},
			{"GET", "/repos/a/b", 200, ""},
			{"GET", "/user/x", 200, ""},
			{"POST", "/repos/a", 403, `rule "github" allows GET only`},
			{"GET", "/reposx", 403, `rule "github" allows paths /repos, /user/ only`},
			{"GET", "/user", 403, `rule "github" allows paths /repos, /user/ only`},
			{"GET", "/admin", 403, `rule "github" allows paths /repos, /user/ only`},
			{"GET", "/repos/../admin", 403, `is not canonical`},
			{"GET", "/repos/%2e%2e/admin", 403, `is not canonical`},
			{"GET", "/repos//x", 403, `is not canonical`},
			// Servlet containers drop a segment's ";parameters" before
			// resolving dot segments: /repos/..;/admin is /admin to them.
			{"GET", "/repos/..;/admin", 403, `is not canonical`},
			{"GET", "/repos/%2e%2e;x=1/admin", 403, `is not canonical`},
			{"GET", "/repos/.;/a", 403, `is not canonical`},
			{"GET", "/repos/a;v=1/b", 200, ""},
		} {
			t.Run(scheme+" "+tc.method+" "+tc.path, func(t *testing.T) {
				req, _ := http.NewRequest(tc.method, base+tc.path, nil)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != tc.code || !strings.Contains(body, tc.reason) {
					t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.code, tc.reason)
				}
			})
		}
	}
	// A rule with methods makes its CONNECTs intercepted.
	for _, r := range e.records.all() {
		if r.Port == secure.port && !r.Intercepted {
			t.Errorf("not intercepted: %+v", r)
		}
	}
}

func TestEgressRejectsRawIPAddresses(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	e := startProxy(t, Options{Rules: []Rule{
		{Name: "api", Hosts: []string{"api.test", "*.test"}, Ports: []int{up.port}, AllowPrivate: true},
	}})
	c := e.client(nil)
	for _, host := range []string{"127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "127.1", "0x7f.0.0.1"} {
		t.Run(host, func(t *testing.T) {
			resp, err := c.Get(fmt.Sprintf("http://%s:%d/", host, up.port))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			want := "127.0.0.1 is an IP address, and no egress rule lists it"
			if !strings.Contains(host, "127.0.0.1") {
				// Numeric forms some resolvers read as addresses.
				want = "not a valid host name or IP address"
			}
			if resp.StatusCode != 403 || !strings.Contains(body, want) {
				t.Fatalf("got %d %q, want 403 containing %q", resp.StatusCode, body, want)
			}
		})
	}
	if up.count() != 0 {
		t.Fatalf("the upstream received %d requests", up.count())
	}

	listed := startProxy(t, Options{Rules: []Rule{{Name: "ip", Hosts: []string{"127.0.0.1"}, Ports: []int{up.port}}}})
	resp, err := listed.client(nil).Get(fmt.Sprintf("http://127.0.0.1:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("a listed IP: got %d %q", resp.StatusCode, body)
	}
}

func TestEgressRejectsNamesResolvingToPrivateAddresses(t *testing.T) {
	pki := newTestPKI(t)
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	secure := newUpstream(t, pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	resolver := loopbackNames()
	resolver["private.test"] = []string{"127.0.0.1"}
	resolver["mixed.test"] = []string{"10.1.2.3", "169.254.169.254"}
	e := startProxy(t, Options{
		Resolver: resolver,
		Rules: []Rule{
			{Name: "private", Hosts: []string{"private.test", "mixed.test"}, Ports: []int{up.port, secure.port}},
			{Name: "opted-in", Hosts: []string{"api.test"}, Ports: []int{up.port}, AllowPrivate: true},
		},
	})
	c := e.client(pki.pool)
	resp, err := c.Get(fmt.Sprintf("http://private.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 403 || !strings.Contains(body, `host private.test resolves to 127.0.0.1, a loopback address (set allow_private: true on rule "private" to allow it)`) {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	resp, err = c.Get(fmt.Sprintf("http://mixed.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, "10.1.2.3, a private address") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	code, body := rawConnect(t, e, fmt.Sprintf("private.test:%d", secure.port))
	if code != 403 || !strings.Contains(body, "a loopback address") {
		t.Fatalf("CONNECT: got %d %q", code, body)
	}
	if up.count()+secure.count() != 0 {
		t.Fatalf("the upstreams received %d requests", up.count()+secure.count())
	}
	resp, err = c.Get(fmt.Sprintf("http://api.test:%d/", up.port))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 {
		t.Fatalf("with allow_private: got %d %q", resp.StatusCode, body)
	}
	for _, r := range e.records.all() {
		if r.Host == "private.test" && (r.Allowed || r.Rule != "private") {
			t.Errorf("record = %+v", r)
		}
	}
}

func TestEgressWildcardMatchesSubdomainsOnly(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	e := startProxy(t, Options{Rules: []Rule{{Name: "svc", Hosts: []string{"*.svc.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	c := e.client(nil)
	for host, want := range map[string]int{"a.svc.test": 200, "a.b.svc.test": 200, "svc.test": 403, "A.SVC.TEST.": 200, "xsvc.test": 403} {
		resp, err := c.Get(fmt.Sprintf("http://%s:%d/", host, up.port))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != want {
			t.Errorf("%s: got %d %q, want %d", host, resp.StatusCode, body, want)
		}
	}
}

func TestEgressAnswersDirectRequestsWithUsage(t *testing.T) {
	e := startProxy(t, Options{})
	resp, err := http.Get("http://" + e.proxyURL.Host + "/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 400 || !strings.Contains(body, "send requests with an absolute URL") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestEgressStripsHopByHopHeaders(t *testing.T) {
	var got echoed
	up := newUpstream(t, nil, echoHandler(func(e echoed) { got = e }))
	e := startProxy(t, Options{Rules: []Rule{{Name: "plain", Hosts: []string{"plain.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://plain.test:%d/", up.port), nil)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("Proxy-Authorization", "Basic c2FuZGJveDpwYXNz")
	req.Header.Set("X-End-To-End", "kept")
	resp, err := e.client(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	for _, h := range []string{"X-Hop", "Proxy-Authorization"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("%s reached the upstream: %q", h, v)
		}
	}
	if got.Header.Get("X-End-To-End") != "kept" {
		t.Error("an end-to-end header was dropped")
	}
}

func TestEgressReadsPlainHTTPInsideTunnel(t *testing.T) {
	up := newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "inner ok") }))
	e := startProxy(t, Options{Rules: []Rule{{Name: "ro", Hosts: []string{"plain.test"}, Ports: []int{up.port}, Methods: []string{"GET"}, AllowPrivate: true}}})
	conn, err := net.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authority := fmt.Sprintf("plain.test:%d", up.port)
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	br := newBufReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	for _, tc := range []struct {
		method string
		code   int
		body   string
	}{{"GET", 200, "inner ok"}, {"POST", 403, `rule "ro" allows GET only`}} {
		fmt.Fprintf(conn, "%s /x HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", tc.method, authority)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s: got %d %q", tc.method, resp.StatusCode, body)
		}
	}
}

func TestEgressCloseEndsOpenTunnels(t *testing.T) {
	pki := newTestPKI(t)
	up := newUpstream(t, pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	e := startProxy(t, Options{Rules: []Rule{{Name: "api", Hosts: []string{"api.test"}, Ports: []int{up.port}, AllowPrivate: true}}})
	conn, err := net.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", up.port)
	br := newBufReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	done := make(chan error, 1)
	go func() { done <- e.proxy.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a tunnel open")
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel is still open")
	}
	if recs := e.records.all(); len(recs) != 1 || recs[0].Method != "CONNECT" {
		t.Errorf("records = %+v", recs)
	}
}
