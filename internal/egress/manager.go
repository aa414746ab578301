package egress

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Config is the egress one session gets: what it may reach and the
// credentials it may use there. The policy file's egress section holds it.
type Config struct {
	Rules []Rule
	// Credentials reach the sandbox as environment variables holding a
	// placeholder fresh for each session.
	Credentials []EnvCredential
	// InterceptAll: see Options.InterceptAll.
	InterceptAll bool
}

// EnvCredential is a Credential the sandbox finds in the environment
// variable Env. Credential.Placeholder is left empty: each session gets a
// new one.
type EnvCredential struct {
	Credential
	Env string
}

// The variables Open sets itself: the proxy's address, and where the CA
// bundle is for the tools that read a variable rather than the system
// bundle. No credential may use them.
var (
	proxyEnv = []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
	noProxy  = []string{"NO_PROXY", "no_proxy"}
	caEnv    = []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"}
)

// CheckRule reports what is wrong with one rule, as NewProxy would, without
// naming the rule: the caller says which it is.
func CheckRule(r Rule) error {
	_, err := compileRule(r)
	return err
}

// CheckCredential reports what is wrong with one credential, as NewProxy
// would, and with its variable, without naming the credential.
func CheckCredential(c EnvCredential) error {
	switch {
	case !sandbox.ValidEnvName(c.Env):
		return fmt.Errorf("env %q is not a valid variable name", c.Env)
	case slices.Contains(proxyEnv, c.Env) || slices.Contains(noProxy, c.Env) || slices.Contains(caEnv, c.Env):
		return fmt.Errorf("env %s is set by the egress proxy itself", c.Env)
	}
	c.Placeholder = NewPlaceholder(c.Name)
	_, err := compileCredential(c.Credential)
	return err
}

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// Dir holds each session's proxy socket and CA bundle, in a directory
	// of its own with an unguessable name. Required; it must be short
	// enough for a unix socket path (about 60 bytes).
	Dir string
	// Config returns the egress of a session that starts now; it is
	// called once per session, so a reloaded policy applies to new
	// sessions. Required.
	Config func() Config
	// Secrets yields credentials' values; required when a Config has
	// credentials.
	Secrets Secrets
	// SandboxRoots is the PEM bundle of certificates the sandbox trusts
	// besides the session CA; nil reads the host's
	// sandbox.SystemCABundle (none if it is missing).
	SandboxRoots []byte
	// RootCAs verify upstreams; nil uses the system roots.
	RootCAs *x509.CertPool
	// Resolver and Dial: see Options; nil are the defaults.
	Resolver Resolver
	Dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives the proxies' operational messages; nil discards them.
	Logger *slog.Logger
}

// Manager starts one Proxy per session.
type Manager struct {
	opts  ManagerOptions
	roots []byte
}

// NewManager validates opts and prepares Dir.
func NewManager(opts ManagerOptions) (*Manager, error) {
	if opts.Dir == "" || opts.Config == nil {
		return nil, errors.New("egress: a manager needs a directory and a config")
	}
	// Searchable, not listable: a sandbox running as another host uid
	// reaches its own session's socket by its unguessable name, and
	// cannot find another's.
	if err := sandbox.MkdirMode(opts.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	if probe := sandbox.EgressSocketPath(filepath.Join(opts.Dir, "0123456789abcdef0123456789abcdef")); len(probe) > sandbox.MaxSocketPath {
		return nil, fmt.Errorf("egress: %s is too long a directory for unix sockets (%d bytes of at most %d); use a shorter state directory", opts.Dir, len(probe), sandbox.MaxSocketPath)
	}
	roots := opts.SandboxRoots
	if roots == nil {
		b, err := os.ReadFile(sandbox.SystemCABundle)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("egress: read the system CA bundle: %w", err)
		}
		roots = b
	}
	if len(roots) > 0 && !bytes.HasSuffix(roots, []byte("\n")) {
		roots = append(bytes.Clone(roots), '\n')
	}
	return &Manager{opts: opts, roots: roots}, nil
}

// Session is one session's running proxy as its sandbox reaches it.
type Session struct {
	// Sandbox says what to mount in the sandbox.
	Sandbox *sandbox.Egress
	// Env is what to add to the sandbox's environment: the proxy
	// variables, the CA bundle variables and the credentials'
	// placeholders.
	Env map[string]string

	proxy *Proxy
	dir   string
	once  sync.Once
}

// SessionOptions are the per-session hooks of a proxy.
type SessionOptions struct {
	SessionID   string
	OnRecord    func(Record)
	CurrentCall func() string
}

// Open starts the proxy of one session. Close the Session when the session
// ends. When the config allows nothing (no rules, no credentials) it starts
// none and returns nil: the sandbox then has no network at all.
func (m *Manager) Open(o SessionOptions) (*Session, error) {
	cfg := m.opts.Config()
	if len(cfg.Rules) == 0 && len(cfg.Credentials) == 0 {
		return nil, nil
	}
	creds := make([]Credential, len(cfg.Credentials))
	env := map[string]string{}
	for i, c := range cfg.Credentials {
		creds[i] = c.Credential
		creds[i].Placeholder = NewPlaceholder(c.Name)
		env[c.Env] = creds[i].Placeholder
	}
	p, err := NewProxy(Options{
		SessionID: o.SessionID, Rules: cfg.Rules, Credentials: creds, Secrets: m.opts.Secrets,
		OnRecord: o.OnRecord, CurrentCall: o.CurrentCall, InterceptAll: cfg.InterceptAll,
		RootCAs: m.opts.RootCAs, Resolver: m.opts.Resolver, Dial: m.opts.Dial, Logger: m.opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	dir := filepath.Join(m.opts.Dir, hex.EncodeToString(b))
	eg, l, err := sandbox.NewEgressDir(dir, append(bytes.Clone(m.roots), p.CACertPEM()...))
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("egress: %w", err)
	}
	s := &Session{proxy: p, dir: dir, Sandbox: eg}
	eg.Serve = s.serve
	s.serve(l)

	for _, k := range proxyEnv {
		env[k] = "http://" + sandbox.EgressListen
	}
	for _, k := range noProxy {
		env[k] = "localhost,127.0.0.1,::1"
	}
	for _, k := range caEnv {
		env[k] = sandbox.CABundle
	}
	s.Env = env
	return s, nil
}

// serve has the proxy accept connections on l: the session's own socket,
// and any handed over (see [sandbox.Egress]). Close closes them.
func (s *Session) serve(l net.Listener) { go s.proxy.Serve(l) }

// Close stops the proxy, waits for its requests to end and removes the
// socket and CA bundle.
func (s *Session) Close() error {
	var err error
	s.once.Do(func() {
		err = s.proxy.Close()
		if rerr := os.RemoveAll(s.dir); err == nil {
			err = rerr
		}
	})
	return err
}
