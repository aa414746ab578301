package secrets

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeVault speaks the part of Vault's HTTP API that Vault uses: AppRole
// login, token lookup-self, renew-self and revoke-self, and KV version 2
// reads. It enforces token expiry and the namespace, records every request,
// and fails the test on anything else.
type fakeVault struct {
	t   *testing.T
	URL string

	// Set before the first request.
	mount     string        // KV v2 mount; "secret" if empty
	namespace string        // required X-Vault-Namespace, if set
	roleID    string        // AppRole credentials that log in
	secretID  string        //
	lease     time.Duration // TTL of tokens from login; 1h if zero
	denyRenew bool          // renew-self answers 403, as at a token's max TTL

	mu     sync.Mutex
	tokens map[string]*fakeToken                // guarded by mu
	kv     map[string][]map[string]any          // path -> versions (v1 first); nil data = deleted; guarded by mu
	raw    map[string]func(http.ResponseWriter) // path -> canned response; guarded by mu
	reqs   []fakeRequest                        // guarded by mu
	issued int                                  // guarded by mu
}

type fakeToken struct {
	expires   time.Time // zero: never
	ttl       time.Duration
	renewable bool
}

type fakeRequest struct {
	Method, Path, Query, Token, Namespace string
}

func newFakeVault(t *testing.T) *fakeVault {
	f := &fakeVault{
		t:      t,
		tokens: map[string]*fakeToken{},
		kv:     map[string][]map[string]any{},
		raw:    map[string]func(http.ResponseWriter){},
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// addToken makes token valid; ttl zero means it never expires.
func (f *fakeVault) addToken(token string, ttl time.Duration, renewable bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := &fakeToken{ttl: ttl, renewable: renewable}
	if ttl > 0 {
		tok.expires = time.Now().Add(ttl)
	}
	f.tokens[token] = tok
}

// put writes a new version of the secret at path (under the mount).
func (f *fakeVault) put(path string, data map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kv[path] = append(f.kv[path], data)
}

// cannedResponse makes reads of path answer with respond.
func (f *fakeVault) cannedResponse(path string, respond func(http.ResponseWriter)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.raw[path] = respond
}

func (f *fakeVault) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.reqs...)
}

// count reports how many requests were made to path.
func (f *fakeVault) count(path string) int {
	n := 0
	for _, r := range f.requests() {
		if r.Path == path {
			n++
		}
	}
	return n
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	token := r.Header.Get("X-Vault-Token")
	f.reqs = append(f.reqs, fakeRequest{r.Method, r.URL.Path, r.URL.RawQuery, token, r.Header.Get("X-Vault-Namespace")})
	if f.namespace != "" && r.Header.Get("X-Vault-Namespace") != f.namespace {
		vaultErrorResponse(w, http.StatusForbidden, "permission denied")
		return
	}
	write := r.Method == http.MethodPut || r.Method == http.MethodPost
	mount := f.mount
	if mount == "" {
		mount = "secret"
	}
	kvPrefix := "/v1/" + mount + "/data/"

	switch {
	case r.URL.Path == "/v1/auth/approle/login" && write:
		var body struct {
			RoleID   string `json:"role_id"`
			SecretID string `json:"secret_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || f.roleID == "" ||
			body.RoleID != f.roleID || body.SecretID != f.secretID {
			vaultErrorResponse(w, http.StatusBadRequest, "invalid role or secret ID")
			return
		}
		lease := f.lease
		if lease == 0 {
			lease = time.Hour
		}
		f.issued++
		tok := "hvs.approle-" + strconv.Itoa(f.issued)
		f.tokens[tok] = &fakeToken{expires: time.Now().Add(lease), ttl: lease, renewable: true}
		writeJSON(w, http.StatusOK, map[string]any{"auth": map[string]any{
			"client_token": tok, "lease_duration": int(lease.Seconds()), "renewable": true, "policies": []string{"default"},
		}})

	case r.URL.Path == "/v1/auth/token/lookup-self" && r.Method == http.MethodGet:
		tok := f.authenticate(w, token)
		if tok == nil {
			return
		}
		ttl := 0
		if !tok.expires.IsZero() {
			ttl = int(time.Until(tok.expires).Seconds())
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"ttl": ttl, "renewable": tok.renewable}})

	case r.URL.Path == "/v1/auth/token/renew-self" && write:
		tok := f.authenticate(w, token)
		if tok == nil {
			return
		}
		if f.denyRenew || !tok.renewable {
			vaultErrorResponse(w, http.StatusForbidden, "1 error occurred:\n\t* permission denied\n\n")
			return
		}
		tok.expires = time.Now().Add(tok.ttl)
		writeJSON(w, http.StatusOK, map[string]any{"auth": map[string]any{
			"client_token": token, "lease_duration": int(tok.ttl.Seconds()), "renewable": true,
		}})

	case r.URL.Path == "/v1/auth/token/revoke-self" && write:
		if f.authenticate(w, token) == nil {
			return
		}
		delete(f.tokens, token)
		w.WriteHeader(http.StatusNoContent)

	case strings.HasPrefix(r.URL.Path, kvPrefix) && r.Method == http.MethodGet:
		if f.authenticate(w, token) == nil {
			return
		}
		path := strings.TrimPrefix(r.URL.Path, kvPrefix)
		if respond, ok := f.raw[path]; ok {
			respond(w)
			return
		}
		versions := f.kv[path]
		if len(versions) == 0 {
			vaultErrorResponse(w, http.StatusNotFound)
			return
		}
		v := len(versions)
		if q := r.URL.Query().Get("version"); q != "" {
			n, err := strconv.Atoi(q)
			if err != nil || n < 1 || n > len(versions) {
				vaultErrorResponse(w, http.StatusNotFound)
				return
			}
			v = n
		}
		status := http.StatusOK
		meta := map[string]any{"version": v, "deletion_time": "", "destroyed": false}
		if versions[v-1] == nil {
			status = http.StatusNotFound // Vault answers 404 with metadata for a deleted version
			meta["deletion_time"] = "2026-01-01T00:00:00Z"
		}
		writeJSON(w, status, map[string]any{"data": map[string]any{"data": versions[v-1], "metadata": meta}})

	default:
		f.t.Errorf("fake vault: unscripted request %s %s", r.Method, r.URL)
		vaultErrorResponse(w, http.StatusNotFound)
	}
}

// authenticate checks the request's token, answering 403 itself if it is
// not valid.
func (f *fakeVault) authenticate(w http.ResponseWriter, token string) *fakeToken {
	tok, ok := f.tokens[token]
	if !ok || (!tok.expires.IsZero() && time.Now().After(tok.expires)) {
		vaultErrorResponse(w, http.StatusForbidden, "permission denied")
		return nil
	}
	return tok
}

func vaultErrorResponse(w http.ResponseWriter, status int, messages ...string) {
	if messages == nil {
		messages = []string{}
	}
	writeJSON(w, status, map[string]any{"errors": messages})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// testVaultOptions are options for f with fast retries and a logger whose
// output the test can inspect.
func testVaultOptions(f *fakeVault, logs io.Writer) VaultOptions {
	return VaultOptions{
		Address:   f.URL,
		Namespace: f.namespace,
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		retryWait: time.Millisecond,
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r fakeRequest) String() string {
	return fmt.Sprintf("%s %s?%s", r.Method, r.Path, r.Query)
}
