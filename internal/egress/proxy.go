package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Proxy. Zero values are documented defaults.
type Options struct {
	// SessionID goes into every Record and the session CA's name.
	SessionID string
	// Rules allow egress; with none, every request is refused.
	Rules []Rule
	// Credentials the sandbox may use by placeholder.
	Credentials []Credential
	// Secrets yields credentials' values. Required with Credentials.
	Secrets Secrets
	// OnRecord receives one Record per request when it ends, on the
	// request's goroutine; it should not block for long. Nil drops them.
	OnRecord func(Record)
	// CurrentCall returns the id of the tool call running in the sandbox,
	// for Record.ToolUseID. Nil leaves it empty.
	CurrentCall func() string
	// Dial connects to upstream addresses, always an IP address and port;
	// nil uses a net.Dialer with a 10 s timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver looks up upstream host names; nil is net.DefaultResolver.
	Resolver Resolver
	// RootCAs verify upstream certificates; nil uses the system roots.
	RootCAs *x509.CertPool
	// Logger receives operational messages (never a secret value); nil
	// discards them.
	Logger *slog.Logger
	// InterceptAll terminates TLS on every CONNECT, not only to hosts a
	// credential or a method or path rule covers, so that every response
	// is checked for secret values. Clients that do not trust the session
	// CA then fail on every host.
	InterceptAll bool
	// CAValidity is how long the session CA and its leaves are valid;
	// 0 means DefaultCAValidity.
	CAValidity time.Duration
	// MaxBodyBytes is the largest request body in which placeholders are
	// substituted; 0 means 10 MiB. Larger bodies are streamed and checked:
	// one that carries a placeholder its host may not receive, or that
	// needs a substitution, is cut off and refused.
	MaxBodyBytes int64
	// MaxConns bounds the sandbox's concurrent connections to the proxy;
	// 0 means 256. Further connections wait.
	MaxConns int
}

// Defaults of Options.
const (
	DefaultMaxBodyBytes = 10 << 20
	DefaultMaxConns     = 256
)

// bufferedBodies bounds how many request bodies are held in memory at once
// for substitution, so that the sandbox cannot make the supervisor hold
// MaxConns × MaxBodyBytes.
const bufferedBodies = 8

// maxRemembered bounds the values remembered per secret, across rotations.
const maxRemembered = 16

const handshakeTimeout = 30 * time.Second

// Proxy is one session's egress proxy. Its methods are safe for
// concurrent use.
type Proxy struct {
	sessionID   string
	rules       ruleSet
	creds       []*credential
	guard       *matcher // placeholder forms, for bodies too large to buffer
	secrets     Secrets
	onRecord    func(Record)
	currentCall func() string
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	resolver    Resolver
	log         *slog.Logger
	intercept   bool
	maxBody     int64
	ca          *authority

	transport *http.Transport // to upstreams
	server    *http.Server    // the sandbox's proxy requests
	inner     *http.Server    // requests inside intercepted tunnels
	queue     *connQueue      // hands intercepted tunnels to inner

	connSlots chan struct{} // one per open sandbox connection
	aheads    chan struct{} // one per response body read ahead (filter.aheads)
	bodySlots chan struct{} // one per buffered request body
	done      chan struct{} // closed by Close

	mu           sync.Mutex
	closed       bool                  // guarded by mu
	innerStarted bool                  // guarded by mu
	tracked      map[net.Conn]struct{} // guarded by mu: connections taken over from the servers
	// handlers counts request handlers in flight, Serve calls, and the inner server's
	// Serve; Add only under mu while !closed, so that Close can Wait.
	handlers sync.WaitGroup

	seenMu sync.Mutex
	// seen holds every value substituted in this session, by secret name:
	// responses are redacted of all of them. Guarded by seenMu.
	seen     map[string][][]byte
	redactor atomic.Pointer[matcher] // built from seen; nil until a value is
}

// NewProxy validates the options and creates the session CA. Serve starts
// the proxy; Close stops it.
func NewProxy(opts Options) (*Proxy, error) {
	rules, err := compileRules(opts.Rules)
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	creds, err := compileCredentials(opts.Credentials)
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	if len(creds) > 0 && opts.Secrets == nil {
		return nil, errors.New("egress: credentials need a Secrets source")
	}
	if opts.CAValidity <= 0 {
		opts.CAValidity = DefaultCAValidity
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	ca, err := newAuthority(opts.SessionID, opts.CAValidity, time.Now())
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	p := &Proxy{
		sessionID:   opts.SessionID,
		rules:       rules,
		creds:       creds,
		secrets:     opts.Secrets,
		onRecord:    opts.OnRecord,
		currentCall: opts.CurrentCall,
		dial:        opts.Dial,
		resolver:    opts.Resolver,
		log:         opts.Logger,
		intercept:   opts.InterceptAll,
		maxBody:     opts.MaxBodyBytes,
		ca:          ca,
		queue:       newConnQueue(),
		connSlots:   make(chan struct{}, opts.MaxConns),
		aheads:      make(chan struct{}, maxReadAheads),
		bodySlots:   make(chan struct{}, bufferedBodies),
		done:        make(chan struct{}),
		tracked:     make(map[net.Conn]struct{}),
		seen:        make(map[string][][]byte),
	}
	if len(creds) > 0 {
		p.guard = placeholderPatterns(creds)
	}
	if p.dial == nil {
		p.dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	if p.resolver == nil {
		p.resolver = net.DefaultResolver
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	p.transport = &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := p.dialUpstream(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &bulkConn{Conn: c}, nil
		},
		TLSClientConfig:     &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		Protocols:           protocols,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// The sandbox's Accept-Encoding goes upstream as it is, and the
		// body comes back as sent, unless it must be redacted.
		DisableCompression:     true,
		MaxResponseHeaderBytes: 1 << 20,
		// Response bodies are read in pieces larger than this buffer
		// (see readSlack), which it then passes by.
		ReadBufferSize:  readSlack,
		WriteBufferSize: 64 << 10,
	}
	errorLog := slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	p.server = &http.Server{
		Handler:           http.HandlerFunc(p.serveSandbox),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          errorLog,
	}
	p.inner = &http.Server{
		Handler:           http.HandlerFunc(p.serveIntercepted),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          errorLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if ic, ok := c.(*innerConn); ok {
				return context.WithValue(ctx, connKey{}, ic)
			}
			return ctx
		},
	}
	return p, nil
}

// CACertPEM returns the session CA's certificate, for the sandbox's trust
// store. Its private key never leaves the Proxy.
func (p *Proxy) CACertPEM() []byte { return bytes.Clone(p.ca.certPEM) }

// Serve answers proxy requests from the sandbox on l until Close; it then
// returns nil. l is closed when Serve returns, and Close waits for it to.
// Serve may be called for more than one listener.
func (p *Proxy) Serve(l net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	p.handlers.Add(1)
	defer p.handlers.Done()
	if !p.innerStarted {
		p.innerStarted = true
		p.handlers.Add(1)
		go func() {
			defer p.handlers.Done()
			_ = p.inner.Serve(p.queue)
		}()
	}
	p.mu.Unlock()
	err := p.server.Serve(&limitListener{Listener: l, p: p})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the proxy: it closes the listeners and every connection,
// tunnels included, waits for the requests in flight to end, and forgets
// the secret values it held for redaction.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	conns := make([]net.Conn, 0, len(p.tracked))
	for c := range p.tracked {
		conns = append(conns, c)
	}
	p.mu.Unlock()

	err := p.server.Close()
	p.queue.Close()
	_ = p.inner.Close()
	for _, c := range conns {
		c.Close()
	}
	p.handlers.Wait()
	p.transport.CloseIdleConnections()

	p.seenMu.Lock()
	for _, vs := range p.seen {
		for _, v := range vs {
			clear(v)
		}
	}
	clear(p.seen)
	p.seenMu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// enter registers a request handler, unless the proxy is closing.
func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.handlers.Add(1)
	return true
}

// track adds a connection that Close must close itself, unless the proxy
// is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.tracked[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.tracked, c)
	p.mu.Unlock()
}

// target is where a request goes.
type target struct {
	scheme string     // "http" or "https"
	host   string     // normalized (normalizeHost)
	ip     netip.Addr // valid when host is an IP address
	port   int
}

// connKey is the context key of the *innerConn a request came on.
type connKey struct{}

func newTarget(scheme, hostport string) (target, error) {
	t := target{scheme: scheme}
	switch scheme {
	case "http":
		t.port = 80
	case "https":
		t.port = 443
	default:
		return t, fmt.Errorf("scheme %q is not proxied (http and https are)", scheme)
	}
	host := hostport
	if h, port, err := net.SplitHostPort(hostport); err == nil {
		host = h
		if t.port, err = strconv.Atoi(port); err != nil || t.port < 1 || t.port > 65535 {
			return t, fmt.Errorf("port %q is not valid", port)
		}
	}
	var err error
	if t.host, t.ip, err = normalizeHost(host); err != nil {
		return t, &refusal{fmt.Sprintf("host %q: %v", host, err)}
	}
	return t, nil
}

// connectTarget parses the host:port of a CONNECT.
func connectTarget(authority string) (target, error) {
	h, port, err := net.SplitHostPort(authority)
	if err != nil {
		return target{}, fmt.Errorf("CONNECT needs host:port, not %q", authority)
	}
	t := target{}
	if t.port, err = strconv.Atoi(port); err != nil || t.port < 1 || t.port > 65535 {
		return t, fmt.Errorf("port %q is not valid", port)
	}
	if t.host, t.ip, err = normalizeHost(h); err != nil {
		return t, &refusal{fmt.Sprintf("host %q: %v", h, err)}
	}
	return t, nil
}

// authority is host:port, as dialled.
func (t target) authority() string { return net.JoinHostPort(t.host, strconv.Itoa(t.port)) }

// hostHeader is the host as a URL or Host header names it: without the
// scheme's default port.
func (t target) hostHeader() string {
	if t.scheme == "https" && t.port == 443 || t.scheme == "http" && t.port == 80 {
		if t.ip.Is6() {
			return "[" + t.host + "]"
		}
		return t.host
	}
	return t.authority()
}

// url names the request in messages: scheme, host and path, no query.
func (t target) url(escapedPath string) string {
	return t.scheme + "://" + t.hostHeader() + escapedPath
}

// serveSandbox answers the sandbox's requests to the proxy itself.
func (p *Proxy) serveSandbox(w http.ResponseWriter, r *http.Request) {
	if !p.enter() {
		writeText(w, http.StatusServiceUnavailable, "perimeter egress: the proxy is shutting down")
		return
	}
	defer p.handlers.Done()
	switch {
	case r.Method == http.MethodConnect:
		p.serveConnect(w, r)
	case r.URL.IsAbs():
		t, err := newTarget(r.URL.Scheme, r.URL.Host)
		if err != nil {
			p.badRequest(w, r, r.URL.Host, err)
			return
		}
		p.forward(w, r, t, false)
	default:
		writeText(w, http.StatusBadRequest, "perimeter egress: this is the session's HTTP proxy: send requests with an absolute URL (http_proxy) or CONNECT (https_proxy)")
	}
}

// serveIntercepted answers requests read inside an intercepted tunnel.
func (p *Proxy) serveIntercepted(w http.ResponseWriter, r *http.Request) {
	if !p.enter() {
		writeText(w, http.StatusServiceUnavailable, "perimeter egress: the proxy is shutting down")
		return
	}
	defer p.handlers.Done()
	ic, ok := r.Context().Value(connKey{}).(*innerConn)
	if !ok {
		writeText(w, http.StatusInternalServerError, "perimeter egress: no tunnel target")
		return
	}
	t := ic.target
	if reason := hostMismatch(r, t); reason != "" {
		start := time.Now()
		rec := p.newRecord(r.Method, t, r.URL.Path)
		rec.Intercepted = true
		p.refuse(w, &rec, r.Method+" "+t.url(r.URL.EscapedPath()), reason)
		p.finish(&rec, start)
		return
	}
	p.forward(w, r, t, true)
}

// hostMismatch refuses a request inside a tunnel that names another host
// than the tunnel's: an upstream that routes by Host could otherwise serve
// a host the rules and credentials were never checked against.
func hostMismatch(r *http.Request, t target) string {
	if r.Method == http.MethodConnect {
		return "CONNECT inside a tunnel is not supported"
	}
	if r.Host == "" {
		return "" // an HTTP/1.0 request without Host: the tunnel's host it is
	}
	host, port := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		host, port = h, p
	}
	name, _, err := normalizeHost(host)
	if err == nil && name == t.host && (port == "" || port == strconv.Itoa(t.port)) {
		return ""
	}
	return fmt.Sprintf("the request names host %q, but its tunnel was opened to %s", r.Host, t.authority())
}

// badRequest answers a request whose target cannot be parsed: 403 for a
// host that is not a valid name or IP address, 400 for anything else.
func (p *Proxy) badRequest(w http.ResponseWriter, r *http.Request, authority string, err error) {
	start := time.Now()
	t := target{host: authority}
	if h, port, err := net.SplitHostPort(authority); err == nil {
		t.host = h
		t.port, _ = strconv.Atoi(port)
	}
	path := r.URL.Path
	what := r.Method + " " + r.URL.Scheme + "://" + r.URL.Host + r.URL.EscapedPath()
	if r.Method == http.MethodConnect {
		path, what = "", "CONNECT "+authority
	}
	rec := p.newRecord(r.Method, t, path)
	var rf *refusal
	if errors.As(err, &rf) {
		p.refuse(w, &rec, what, rf.reason)
	} else {
		rec.Reason = err.Error()
		rec.Status = http.StatusBadRequest
		writeText(w, http.StatusBadRequest, "perimeter egress: "+err.Error())
	}
	p.finish(&rec, start)
}

func (p *Proxy) newRecord(method string, t target, path string) Record {
	rec := Record{SessionID: p.sessionID, Method: method, Host: t.host, Port: t.port, Path: path}
	if p.currentCall != nil {
		rec.ToolUseID = p.currentCall()
	}
	return rec
}

// finish completes a record and hands it over.
func (p *Proxy) finish(rec *Record, start time.Time) {
	rec.Duration = time.Since(start)
	rec.Reason = p.scrub(rec.Reason)
	p.log.Debug("egress request", "method", rec.Method, "host", rec.Host, "port", rec.Port, "path", rec.Path,
		"rule", rec.Rule, "allowed", rec.Allowed, "status", rec.Status, "secrets", rec.Secrets,
		"intercepted", rec.Intercepted, "reason", rec.Reason, "tool_use_id", rec.ToolUseID)
	if p.onRecord != nil {
		p.onRecord(*rec)
	}
}

// refuse answers 403 with the reason, which names what to change.
func (p *Proxy) refuse(w http.ResponseWriter, rec *Record, what, reason string) {
	rec.Allowed = false
	rec.Reason = reason
	rec.Status = http.StatusForbidden
	writeText(w, http.StatusForbidden, "perimeter egress: "+what+" is not allowed: "+reason)
}

// fail answers 502 for an allowed request that could not be completed.
func (p *Proxy) fail(w http.ResponseWriter, rec *Record, what, reason string) {
	rec.Reason = p.scrub(reason)
	rec.Status = http.StatusBadGateway
	writeText(w, http.StatusBadGateway, "perimeter egress: "+what+" failed: "+rec.Reason)
}

func writeText(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	clear(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// remember adds a value substituted in this session to those redacted
// from responses, errors and records.
func (p *Proxy) remember(name string, value []byte) {
	p.seenMu.Lock()
	defer p.seenMu.Unlock()
	for _, v := range p.seen[name] {
		if bytes.Equal(v, value) {
			return
		}
	}
	vals := append(p.seen[name], bytes.Clone(value))
	if len(vals) > maxRemembered {
		clear(vals[0])
		vals = vals[1:]
	}
	p.seen[name] = vals
	var pats []pattern
	for n, vs := range p.seen {
		repl := []byte("[redacted:" + n + "]")
		for _, v := range vs {
			for _, f := range secretForms(v) {
				pats = append(pats, pattern{text: f, repl: repl})
			}
		}
	}
	p.redactor.Store(newMatcher(pats))
}

// scrub redacts the session's secret values from a text.
func (p *Proxy) scrub(s string) string {
	m := p.redactor.Load()
	if m == nil || s == "" {
		return s
	}
	s, _ = m.replace(s)
	return s
}

// credentialHost reports whether a credential may be sent to the target.
func (p *Proxy) credentialHost(t target) bool {
	for _, c := range p.creds {
		if matchAny(c.hosts, t.host, t.ip) {
			return true
		}
	}
	return false
}
