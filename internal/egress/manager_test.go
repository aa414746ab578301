package egress

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

type managerSecrets map[string]string

func (s managerSecrets) Get(_ context.Context, name string) ([]byte, error) {
	if v, ok := s[name]; ok {
		return []byte(v), nil
	}
	return nil, errors.New("no such secret")
}

type toLoopback struct{}

func (toLoopback) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) {
	return []net.IPAddr{{IP: net.IPv4(127, 0, 0, 1)}}, nil
}

// viaSocket is an HTTP client whose proxy is the session's socket, as
// sandboxd's bridge makes it inside a sandbox.
func viaSocket(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "proxy"}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

func TestManagerOpensAProxyPerSession(t *testing.T) {
	var authz atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz.Store(r.Header.Get("Authorization"))
		io.WriteString(w, "hello from upstream")
	}))
	defer up.Close()
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	portN, _ := strconv.Atoi(port)

	configs := 0
	roots := []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----")
	m, err := NewManager(ManagerOptions{
		Dir: filepath.Join(testenv.ShortDir(t), "egress"),
		Config: func() Config {
			configs++
			return Config{
				Rules: []Rule{{Name: "api", Hosts: []string{"api.test"}, Ports: []int{portN}, AllowPrivate: true}},
				Credentials: []EnvCredential{{
					Credential: Credential{Name: "token", Hosts: []string{"api.test"}}, Env: "API_TOKEN",
				}},
			}
		},
		Secrets:      managerSecrets{"token": "real-value-123"},
		SandboxRoots: roots,
		Resolver:     toLoopback{},
	})
	if err != nil {
		t.Fatal(err)
	}
	var records []Record
	s1, err := m.Open(SessionOptions{SessionID: "sesn_1", OnRecord: func(r Record) { records = append(records, r) }, CurrentCall: func() string { return "toolu_1" }})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := m.Open(SessionOptions{SessionID: "sesn_2"})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if configs != 2 {
		t.Errorf("Config was called %d times for two sessions, want once each", configs)
	}

	// Each session has its own directory, socket, bundle and placeholder.
	if filepath.Dir(s1.Sandbox.Socket) == filepath.Dir(s2.Sandbox.Socket) {
		t.Error("two sessions share a directory")
	}
	ph := s1.Env["API_TOKEN"]
	if !strings.HasPrefix(ph, PlaceholderPrefix+"token:") || ph == s2.Env["API_TOKEN"] {
		t.Errorf("placeholders %q and %q: want fresh ones per session", ph, s2.Env["API_TOKEN"])
	}
	for k, want := range map[string]string{
		"HTTP_PROXY": "http://" + sandbox.EgressListen, "https_proxy": "http://" + sandbox.EgressListen,
		"SSL_CERT_FILE": sandbox.CABundle, "NODE_EXTRA_CA_CERTS": sandbox.CABundle, "NO_PROXY": "localhost,127.0.0.1,::1",
	} {
		if s1.Env[k] != want {
			t.Errorf("Env[%s] = %q, want %q", k, s1.Env[k], want)
		}
	}
	fi, err := os.Stat(s1.Sandbox.Socket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket: %v, %v; want a socket any uid may connect to", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(s1.Sandbox.Socket)); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("session directory: %v, %v; want 0711 (searchable, not listable)", fi.Mode(), err)
	}
	bundle, err := os.ReadFile(s1.Sandbox.CABundle)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(bundle), string(roots)+"\n") {
		t.Errorf("the bundle does not start with the sandbox roots:\n%s", bundle)
	}
	rest := bundle[len(roots)+1:]
	block, _ := pem.Decode(rest)
	if block == nil {
		t.Fatalf("no session CA after the roots:\n%s", rest)
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !ca.IsCA || !strings.Contains(ca.Subject.CommonName, "sesn_1") {
		t.Errorf("the session CA: %v, %+v", err, ca)
	}

	// A request through the socket reaches the upstream with the value.
	req, _ := http.NewRequest("GET", "http://api.test:"+port+"/x", nil)
	req.Header.Set("Authorization", "Bearer "+ph)
	resp, err := viaSocket(s1.Sandbox.Socket).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from upstream" {
		t.Errorf("through the proxy: %d %q", resp.StatusCode, body)
	}
	if got := authz.Load(); got != "Bearer real-value-123" {
		t.Errorf("the upstream received %q", got)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if len(records) != 1 || records[0].ToolUseID != "toolu_1" || records[0].SessionID != "sesn_1" || len(records[0].Secrets) != 1 {
		t.Errorf("records: %+v", records)
	}
	if _, err := os.Stat(filepath.Dir(s1.Sandbox.Socket)); !os.IsNotExist(err) {
		t.Errorf("Close left the session directory: %v", err)
	}
	if err := s1.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	if _, err := viaSocket(s1.Sandbox.Socket).Get("http://api.test:" + port + "/x"); err == nil {
		t.Error("the proxy still answers after Close")
	}
}

func TestManagerRefusesADirectoryTooLongForSockets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 80))
	_, err := NewManager(ManagerOptions{Dir: dir, Config: func() Config { return Config{} }})
	if err == nil || !strings.Contains(err.Error(), "shorter state directory") {
		t.Errorf("err = %v, want a message asking for a shorter directory", err)
	}
}

func TestManagerRefusesAConfigThatDoesNotCompile(t *testing.T) {
	m, err := NewManager(ManagerOptions{Dir: testenv.ShortDir(t), Config: func() Config {
		return Config{Credentials: []EnvCredential{{Credential: Credential{Name: "x", Hosts: []string{"a.test"}}, Env: "X"}}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Credentials without a secret source.
	if _, err := m.Open(SessionOptions{SessionID: "s"}); err == nil {
		t.Error("Open started a proxy with credentials and no secrets")
	}
	entries, _ := os.ReadDir(m.opts.Dir)
	if len(entries) != 0 {
		t.Errorf("a failed Open left %d entries behind", len(entries))
	}
}

func TestCheckRuleAndCredentialSayWhatIsWrong(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{CheckRule(Rule{Name: "r", Hosts: []string{"https://a.test"}}), `host "https://a.test": want a host name`},
		{CheckRule(Rule{Name: "r", Hosts: []string{"a.test"}, Methods: []string{"GE T"}}), `method "GE T"`},
		{CheckCredential(EnvCredential{Credential: Credential{Name: "c", Hosts: []string{"a.test"}}, Env: "1X"}), `env "1X" is not a valid variable name`},
		{CheckCredential(EnvCredential{Credential: Credential{Name: "c", Hosts: []string{"a.test"}}, Env: "HTTPS_PROXY"}), `env HTTPS_PROXY is set by the egress proxy itself`},
		{CheckCredential(EnvCredential{Credential: Credential{Name: "c"}, Env: "C"}), `at least one host is required`},
	} {
		if tt.err == nil || !strings.HasPrefix(tt.err.Error(), tt.want) {
			t.Errorf("err = %v, want it to start %q", tt.err, tt.want)
		}
	}
	if err := CheckRule(Rule{Name: "r", Hosts: []string{"*.a.test"}, Ports: []int{443}}); err != nil {
		t.Errorf("a valid rule: %v", err)
	}
	if err := CheckCredential(EnvCredential{Credential: Credential{Name: "c", Hosts: []string{"a.test"}, In: []string{"query"}}, Env: "C_TOKEN"}); err != nil {
		t.Errorf("a valid credential: %v", err)
	}
}

func TestManagerStartsNoProxyWhenNothingIsAllowed(t *testing.T) {
	m, err := NewManager(ManagerOptions{Dir: testenv.ShortDir(t), Config: func() Config { return Config{InterceptAll: true} }})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Open(SessionOptions{SessionID: "s"})
	if err != nil || s != nil {
		t.Errorf("Open = %v, %v; want no proxy for a config that allows nothing", s, err)
	}
	if entries, _ := os.ReadDir(m.opts.Dir); len(entries) != 0 {
		t.Errorf("Open left %d entries", len(entries))
	}
}

// A session's proxy also serves a listener handed to Sandbox.Serve (the
// socket a warm sandbox was started with) until the session closes; one
// handed over after Close is closed at once.
func TestSessionServesAHandedOverListener(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer real-value-123" {
			io.WriteString(w, "the real value arrived")
		}
	}))
	defer up.Close()
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	portN, _ := strconv.Atoi(port)
	m, err := NewManager(ManagerOptions{
		Dir: filepath.Join(testenv.ShortDir(t), "egress"),
		Config: func() Config {
			return Config{
				Rules:       []Rule{{Name: "api", Hosts: []string{"api.test"}, Ports: []int{portN}, AllowPrivate: true}},
				Credentials: []EnvCredential{{Credential: Credential{Name: "token", Hosts: []string{"api.test"}}, Env: "API_TOKEN"}},
			}
		},
		Secrets:  managerSecrets{"token": "real-value-123"},
		Resolver: toLoopback{},
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Open(SessionOptions{SessionID: "sesn_1"})
	if err != nil {
		t.Fatal(err)
	}
	warm := filepath.Join(testenv.ShortDir(t), "warm.sock")
	l, err := net.Listen("unix", warm)
	if err != nil {
		t.Fatal(err)
	}
	s.Sandbox.Serve(l)
	req, _ := http.NewRequest("GET", "http://api.test:"+port+"/x", nil)
	req.Header.Set("Authorization", "Bearer "+s.Env["API_TOKEN"])
	resp, err := viaSocket(warm).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "the real value arrived" {
		t.Fatalf("through the handed-over socket: %d %q", resp.StatusCode, body)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := viaSocket(warm).Get("http://api.test:" + port + "/x"); err == nil {
		t.Error("the handed-over socket still answers after Close")
	}
	late, err := net.Listen("unix", filepath.Join(testenv.ShortDir(t), "late.sock"))
	if err != nil {
		t.Fatal(err)
	}
	s.Sandbox.Serve(late)
	if _, err := late.Accept(); err == nil {
		t.Error("a listener handed over after Close is still open")
	}
}
