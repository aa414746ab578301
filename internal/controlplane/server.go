// Package controlplane is Perimeter's embedded control plane: an offline,
// API-compatible stand-in for the Claude Managed Agents endpoints a
// self-hosted environment worker talks to — environments, the work queue
// with its leases, sessions, their event log and SSE stream — plus the
// operator endpoints that create sessions and inspect the queue. Sessions
// are driven by scripted agents: each scenario file (package scenario)
// becomes an agent, and the session's run through it decides which tool
// calls appear and whether the results the worker posts back are right.
//
// It is good enough that the unmodified official Go SDK, as an operator and
// as a worker (EnvironmentWorker.Run / HandleItem), works against it; where
// the two could differ, the real API's documented behaviour wins.
//
// Trust model: credentials are split exactly as the real API splits them.
// The API key is the operator's; the environment key polls and claims
// work; each work item carries its own sessions token (inside the poll
// response's secret) that authorizes only that item and its session. Keys
// and tokens never reach a log line.
//
// State lives in SQLite (a file, or memory) and survives a restart. Every
// read-modify-write runs under one mutex in one transaction, so a rejected
// request never changes anything.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
)

// DefaultEnvironmentID is the self-hosted environment that always exists.
const DefaultEnvironmentID = "env_default"

const (
	defaultTTL          = 30 * time.Second
	defaultPingInterval = 15 * time.Second
	// closeWait bounds how long Close waits for in-flight requests.
	closeWait = 5 * time.Second
)

// Options configure a Server. APIKey and EnvironmentKey are required; every
// other zero value is a documented default.
type Options struct {
	// APIKey authorizes operator calls (X-Api-Key or Bearer).
	APIKey string
	// EnvironmentKey authorizes polling and claiming work, in every
	// environment, and per-item calls as the SDK's documented fallback.
	EnvironmentKey string
	// Database is the SQLite file; "" or ":memory:" keeps state in memory.
	Database string
	// ScenarioDir holds the scenario files (*.yaml); empty means no agents.
	ScenarioDir string
	// TTL is the work-item lease; zero means 30s. It is reported in whole
	// seconds, at least one.
	TTL time.Duration
	// PingInterval is how often an idle SSE stream gets a ping; zero means 15s.
	PingInterval time.Duration
	// Logger receives the control plane's log; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the control plane. Create it with New, serve Handler, and Close
// it when done.
type Server struct {
	opts      Options
	log       *slog.Logger
	db        *sql.DB
	hub       *hub
	mux       *http.ServeMux
	ttl       int64 // lease TTL in seconds
	scenarios map[string]*scenario.Scenario
	agents    []agentJSON // sorted by id
	sweeper   *time.Ticker

	// mu serialises every read-modify-write of the database and guards the
	// fields below it.
	mu           sync.Mutex
	lastStamp    time.Time             // last timestamp handed out; stamps strictly increase
	queueChanged chan struct{}         // closed and replaced when work becomes claimable
	pollers      map[string]*pollerSet // by environment

	// gate guards closed and admission to inflight, so Close cannot race a
	// request that is just starting.
	gate     sync.Mutex
	closed   bool
	inflight sync.WaitGroup
	closing  chan struct{} // closed by Close: streams and long polls end
	done     chan struct{} // closed when the sweeper has stopped
}

// New opens the database, loads the scenarios and starts the lease and
// deadline sweeper. Invalid scenario files fail New with file:line errors.
func New(opts Options) (*Server, error) {
	switch {
	case opts.APIKey == "":
		return nil, errors.New("controlplane: Options.APIKey is required")
	case opts.EnvironmentKey == "":
		return nil, errors.New("controlplane: Options.EnvironmentKey is required")
	case opts.APIKey == opts.EnvironmentKey:
		return nil, errors.New("controlplane: the API key and the environment key must differ, as they authorize different calls")
	}
	if opts.TTL <= 0 {
		opts.TTL = defaultTTL
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = defaultPingInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts:         opts,
		log:          opts.Logger,
		hub:          newHub(),
		ttl:          max(1, int64((opts.TTL+time.Second-1)/time.Second)),
		scenarios:    map[string]*scenario.Scenario{},
		queueChanged: make(chan struct{}),
		pollers:      map[string]*pollerSet{},
		closing:      make(chan struct{}),
		done:         make(chan struct{}),
	}
	if opts.ScenarioDir != "" {
		scs, err := scenario.LoadDir(opts.ScenarioDir)
		if err != nil {
			return nil, fmt.Errorf("controlplane: load scenarios: %w", err)
		}
		loaded := time.Now()
		for _, sc := range scs {
			s.scenarios[sc.AgentID] = sc
			s.agents = append(s.agents, newAgentJSON(sc, loaded))
		}
	}
	db, err := openDB(opts.Database)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s.db = db
	if err := s.ensureDefaultEnvironment(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s.routes()
	s.sweeper = time.NewTicker(sweepInterval(opts.TTL))
	go s.sweep()
	s.log.Info("control plane ready", slog.Int("agents", len(s.agents)), slog.String("database", dbName(opts.Database)),
		slog.Duration("ttl", opts.TTL), slog.String("environment_id", DefaultEnvironmentID))
	return s, nil
}

func dbName(path string) string {
	if path == "" {
		return ":memory:"
	}
	return path
}

// sweepInterval checks leases often enough that one lapses within about a
// quarter TTL of its deadline.
func sweepInterval(ttl time.Duration) time.Duration {
	return min(max(ttl/4, 50*time.Millisecond), time.Second)
}

// Handler serves the API.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Close ends every SSE stream and long poll, refuses new requests, waits
// briefly for in-flight ones, stops the sweeper and closes the database.
// It is safe to call more than once.
func (s *Server) Close() error {
	s.gate.Lock()
	if s.closed {
		s.gate.Unlock()
		return nil
	}
	s.closed = true
	s.gate.Unlock()

	close(s.closing)
	s.hub.dropAll()
	s.sweeper.Stop()
	<-s.done

	finished := make(chan struct{})
	go func() { s.inflight.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(closeWait):
		s.log.Warn("closing with requests still in flight", slog.Duration("waited", closeWait))
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("controlplane: close database: %w", err)
	}
	return nil
}

// DropStreams ends every open SSE stream at once, mid-session, as a network
// blip or a proxy's idle cut would; clients are expected to reconnect and
// catch up from the event list. It is a test hook.
func (s *Server) DropStreams() { s.hub.dropAll() }

// stamp returns the current time, strictly later than any stamp before it,
// so event processed_at values and heartbeat tokens are unique. Callers
// hold s.mu.
func (s *Server) stamp() time.Time {
	now := time.Now().UTC()
	if !now.After(s.lastStamp) {
		now = s.lastStamp.Add(time.Nanosecond)
	}
	s.lastStamp = now
	return now
}

// notifyQueue wakes long polls. Callers hold s.mu.
func (s *Server) notifyQueue() {
	close(s.queueChanged)
	s.queueChanged = make(chan struct{})
}

// update runs fn in a transaction and commits when fn returns nil. Callers
// hold s.mu, so the read-modify-write is atomic. The context is detached
// from the request: once started, a change is finished even if the client
// goes away.
func (s *Server) update(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	ctx = context.WithoutCancel(ctx)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(ctx, tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// handlerFunc is an endpoint; a returned error becomes the response.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(pattern string, h handlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				s.log.Error("request failed", slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("error", err))
			}
			writeError(w, err)
		}
	})
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.handle("POST /v1/environments", s.createEnvironment)
	s.handle("GET /v1/environments", s.listEnvironments)
	s.handle("GET /v1/environments/{env}", s.getEnvironment)
	s.handle("POST /v1/environments/{env}", s.updateEnvironment)

	s.handle("GET /v1/environments/{env}/work/poll", s.pollWork)
	s.handle("GET /v1/environments/{env}/work/stats", s.workStats)
	s.handle("GET /v1/environments/{env}/work", s.listWork)
	s.handle("GET /v1/environments/{env}/work/{work}", s.getWork)
	s.handle("POST /v1/environments/{env}/work/{work}", s.updateWork)
	s.handle("POST /v1/environments/{env}/work/{work}/ack", s.ackWork)
	s.handle("POST /v1/environments/{env}/work/{work}/heartbeat", s.heartbeatWork)
	s.handle("POST /v1/environments/{env}/work/{work}/stop", s.stopWork)

	s.handle("GET /v1/agents", s.listAgents)
	s.handle("GET /v1/agents/{agent}", s.getAgent)

	s.handle("POST /v1/sessions", s.createSession)
	s.handle("GET /v1/sessions", s.listSessions)
	s.handle("GET /v1/sessions/{session}", s.getSession)
	s.handle("GET /v1/sessions/{session}/events", s.listEvents)
	s.handle("POST /v1/sessions/{session}/events", s.sendEvents)
	s.handle("GET /v1/sessions/{session}/events/stream", s.streamEvents)

	// Everything else, including a known path with another method.
	s.handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return errNotFound("no route for %s %s in the Perimeter control plane; it serves /v1/environments (and their /work queue), /v1/agents and /v1/sessions (and their /events)", r.Method, r.URL.Path)
	})
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.gate.Lock()
	if s.closed {
		s.gate.Unlock()
		w.Header().Set("x-should-retry", "true")
		writeError(w, newAPIError(http.StatusServiceUnavailable, "api_error", "the control plane is shutting down; retry against its next instance"))
		return
	}
	s.inflight.Add(1)
	s.gate.Unlock()
	defer s.inflight.Done()

	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("panic serving request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			writeError(w, fmt.Errorf("panic: %v", p))
		}
	}()
	w.Header().Set("request-id", newID("req"))
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	sw := &statusWriter{ResponseWriter: w}
	// Handlers read r.URL.Query, which drops what it cannot parse; a request
	// must not be served on the part of its query that survived.
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		writeError(sw, errInvalid("the query string cannot be parsed: %v", err))
	} else {
		s.mux.ServeHTTP(sw, r)
	}
	s.log.Debug("request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", sw.status), slog.Duration("took", time.Since(start)))
}

// statusWriter records the status for the request log and passes flushes
// through for the SSE stream.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// newID returns prefix_ followed by 24 random hex digits.
func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// newToken returns an opaque sessions token.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "sk-ant-sess-" + base64.RawURLEncoding.EncodeToString(b[:])
}

// workSecret is the poll response's secret: URL-safe base64 of a JSON
// object carrying the sessions token.
func workSecret(token string) string {
	b, _ := json.Marshal(map[string]string{"sessions_token": token})
	return base64.RawURLEncoding.EncodeToString(b)
}

func equalSecret(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
