package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPKI is an upstream's own CA and a certificate it signed for the test
// host names and 127.0.0.1.
type testPKI struct {
	pool *x509.CertPool
	cert tls.Certificate
}

var upstreamNames = []string{"api.test", "other.test", "plain.test", "svc.test", "*.svc.test", "private.test", "dl.test"}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "upstream test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "api.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     upstreamNames,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{pool: pool, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// testResolver answers for the test names; every other name does not exist.
type testResolver map[string][]string

func (r testResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	ips, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []net.IPAddr
	for _, s := range ips {
		out = append(out, net.IPAddr{IP: net.ParseIP(s)})
	}
	return out, nil
}

// loopbackNames resolve every test name to 127.0.0.1.
func loopbackNames() testResolver {
	r := testResolver{}
	for _, n := range upstreamNames {
		if !strings.HasPrefix(n, "*") {
			r[n] = []string{"127.0.0.1"}
		}
	}
	r["a.svc.test"] = []string{"127.0.0.1"}
	r["a.b.svc.test"] = []string{"127.0.0.1"}
	return r
}

type recorder struct {
	mu   sync.Mutex
	recs []Record
}

func (r *recorder) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func (r *recorder) all() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}

// waitFor waits until n records have arrived: a tunnel's record comes when
// both sides have closed, a little after the client has its answer.
func (r *recorder) waitFor(t testing.TB, n int) []Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := r.all()
		if len(recs) >= n || time.Now().After(deadline) {
			if len(recs) < n {
				t.Fatalf("got %d records, want %d: %+v", len(recs), n, recs)
			}
			return recs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testEnv is a running Proxy and what it reported.
type testEnv struct {
	t        testing.TB
	proxy    *Proxy
	proxyURL *url.URL
	records  *recorder
	logs     *syncBuffer
	socket   string // set when the proxy listens on a unix socket
}

type envOption func(*envConfig)

type envConfig struct{ unix bool }

func onUnixSocket(c *envConfig) { c.unix = true }

// startProxy starts a proxy with opts, filling in a loopback resolver, a
// recorder and a debug logger unless opts set them.
func startProxy(t testing.TB, opts Options, o ...envOption) *testEnv {
	t.Helper()
	var cfg envConfig
	for _, f := range o {
		f(&cfg)
	}
	e := &testEnv{t: t, records: &recorder{}, logs: &syncBuffer{}}
	if opts.Resolver == nil {
		opts.Resolver = loopbackNames()
	}
	if opts.OnRecord == nil {
		opts.OnRecord = e.records.add
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.SessionID == "" {
		opts.SessionID = "sesn_test"
	}
	p, err := NewProxy(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	var l net.Listener
	if cfg.unix {
		e.socket = filepath.Join(t.TempDir(), "egress.sock")
		l, err = net.Listen("unix", e.socket)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	e.proxyURL = &url.URL{Scheme: "http", Host: l.Addr().String()}
	if cfg.unix {
		e.proxyURL.Host = "egress.invalid"
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", e.logs.String())
		}
	})
	return e
}

// client returns a client that uses the proxy and trusts roots (nil: the
// session CA only).
func (e *testEnv) client(roots *x509.CertPool) *http.Client {
	if roots == nil {
		roots = e.sessionRoots()
	}
	tr := &http.Transport{
		Proxy:               http.ProxyURL(e.proxyURL),
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
	}
	if e.socket != "" {
		socket := e.socket
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func (e *testEnv) sessionRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(e.proxy.CACertPEM()) {
		e.t.Fatal("CACertPEM holds no certificate")
	}
	return pool
}

// upstream is a test server with a port for the rules, counting the
// requests it received.
type upstream struct {
	*httptest.Server
	port int
	mu   sync.Mutex
	hits int
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits
}

func newUpstream(t testing.TB, pki *testPKI, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hits++
		u.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	if pki != nil {
		u.TLS = &tls.Config{Certificates: []tls.Certificate{pki.cert}}
		u.StartTLS()
	} else {
		u.Start()
	}
	t.Cleanup(u.Close)
	_, port, _ := net.SplitHostPort(u.Listener.Addr().String())
	u.port, _ = strconv.Atoi(port)
	return u
}

// rawUpstream is a plain-HTTP upstream that writes each answer to the
// connection itself, as a server that breaks HTTP does, and then closes it.
func rawUpstream(t testing.TB, answer func(conn io.Writer)) *upstream {
	t.Helper()
	return newUpstream(t, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_ = brw.Flush()
		answer(conn)
	}))
}

// echoed is what the echo handler received.
type echoed struct {
	Method    string
	Host      string
	Path      string
	RawQuery  string
	Query     url.Values
	Header    http.Header
	Body      string
	BasicUser string
	BasicPass string
	BasicOK   bool
}

// echoHandler answers with everything it received: as JSON, as a
// base64-encoded dump in the body, and some of it in response headers.
// received, if set, gets a copy of each request as the server saw it.
func echoHandler(received func(echoed)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e := echoed{Method: r.Method, Host: r.Host, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Query: r.URL.Query(),
			Header: r.Header.Clone(), Body: string(body)}
		e.BasicUser, e.BasicPass, e.BasicOK = r.BasicAuth()
		if received != nil {
			received(e)
		}
		js, _ := json.Marshal(e)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
		w.Header().Set("X-Echo-Token", r.Header.Get("X-Token"))
		w.Header().Set("X-Echo-Dump", base64.StdEncoding.EncodeToString(js))
		w.Header().Set("Location", "https://elsewhere.example/?q="+url.QueryEscape(r.URL.RawQuery))
		resp := map[string]any{
			"echo":         json.RawMessage(js),
			"dump":         base64.StdEncoding.EncodeToString(js),
			"dump_url":     base64.URLEncoding.EncodeToString(js),
			"body_b64":     base64.StdEncoding.EncodeToString(body),
			"password":     e.BasicPass,
			"password_b64": base64.StdEncoding.EncodeToString([]byte(e.BasicPass)),
		}
		_ = json.NewEncoder(w).Encode(resp)
	})
}

// hasSecret reports whether text shows value in any form a sandbox could
// decode: as is, URL-escaped, or base64 at any alignment, either alphabet.
func hasSecret(text, value string) bool {
	if strings.Contains(text, value) || strings.Contains(text, url.QueryEscape(value)) {
		return true
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for k := range 3 {
			e := enc.EncodeToString([]byte(strings.Repeat("x", k) + value))
			if strings.Contains(text, e[4:len(e)-4]) {
				return true
			}
		}
	}
	return false
}

// staticSecrets is a Secrets with fixed values that counts its Gets.
type staticSecrets struct {
	mu     sync.Mutex
	values map[string]string
	gets   int
}

func (s *staticSecrets) Get(_ context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	v, ok := s.values[name]
	if !ok {
		return nil, errors.New("secret " + strconv.Quote(name) + " is not configured")
	}
	return []byte(v), nil
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// headerText is every response header as one text.
func headerText(h http.Header) string {
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

func newBufReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
