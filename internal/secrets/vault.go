package secrets

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// VaultRef locates one secret in Vault's KV version 2 engine.
type VaultRef struct {
	// Path of the secret under the mount, e.g. "ci/github".
	Path string `yaml:"path"`
	// Key in the secret's data whose value (a string) is the secret.
	Key string `yaml:"key"`
	// Version to read; zero means the latest.
	Version int `yaml:"version"`
}

// VaultOptions configures a Vault source. Authentication is a token or an
// AppRole; the zero value reads VAULT_ADDR and VAULT_TOKEN and the "secret"
// mount.
//
// Only the variables named here configure the connection. The Vault
// client's others (VAULT_SKIP_VERIFY, VAULT_AGENT_ADDR, VAULT_CLIENT_CERT…)
// are ignored on purpose: certificate verification cannot be turned off.
// VAULT_HEADERS, which the client library applies itself, still adds its
// headers.
type VaultOptions struct {
	// Address of Vault, e.g. https://vault.example.com:8200; empty means
	// VAULT_ADDR. It must be https, except to a loopback address (a local
	// Vault Agent or dev server), so the token never crosses a network in
	// clear text.
	Address string `yaml:"address"`
	// Namespace (Vault Enterprise, HCP Vault); empty means VAULT_NAMESPACE,
	// and if that is empty too, the root namespace.
	Namespace string `yaml:"namespace"`
	// CACert is a PEM file of the CAs that sign Vault's certificate; empty
	// means VAULT_CACERT, and if that is empty too, the system roots.
	CACert string `yaml:"ca_cert"`
	// Mount is where the KV version 2 engine is mounted; empty means
	// "secret".
	Mount string `yaml:"mount"`

	// Token authenticates as a Vault token; empty means VAULT_TOKEN (unless
	// RoleID is set). It is never read from a config file.
	Token string `yaml:"-"`
	// RoleID selects AppRole auth instead, with the secret ID in SecretID
	// or, better, in SecretIDFile (a private file, read at every login). The
	// token a login returns is renewed while it can be, and a new login is
	// made when it cannot.
	RoleID       string `yaml:"role_id"`
	SecretID     string `yaml:"-"`
	SecretIDFile string `yaml:"secret_id_file"`
	// AppRoleMount is where the AppRole auth method is mounted; empty means
	// "approle".
	AppRoleMount string `yaml:"approle_mount"`

	// Paths maps secret names to where they live in Vault.
	Paths map[string]VaultRef `yaml:"-"`

	// Timeout bounds each request to Vault; zero means 30s.
	Timeout time.Duration `yaml:"timeout"`
	// HTTPClient replaces the client built from Address and CACert (tests
	// use it); its transport's TLS settings are then the caller's.
	HTTPClient *http.Client `yaml:"-"`
	// Logger receives renewal and login events; nil means slog.Default().
	Logger *slog.Logger `yaml:"-"`

	// retryWait replaces the Vault client's one-second wait between retries
	// of failed requests; tests shorten it.
	retryWait time.Duration
}

const (
	defaultVaultTimeout = 30 * time.Second
	// maxVaultResponse bounds a response body read from Vault.
	maxVaultResponse = 4 << 20
)

// Vault reads secrets from Vault's KV version 2 engine. A background
// goroutine, owned by the Vault and stopped by Close, keeps its token alive.
type Vault struct {
	client  *vault.Client // holds the current token; safe for concurrent use
	addr    string        // for messages; credentials in the URL are redacted
	mount   string
	paths   map[string]VaultRef // never modified
	timeout time.Duration
	log     *slog.Logger
	login   *appRoleLogin // nil with token auth
	owned   bool          // the token came from a login of ours, so Close revokes it

	ctx    context.Context // ends at Close, stopping renewal and logins
	cancel context.CancelFunc
	done   chan struct{} // closed when the renewal goroutine has returned
	once   sync.Once
}

var _ Source = (*Vault)(nil)

// appRoleLogin logs in with an AppRole.
type appRoleLogin struct {
	// client never holds a token, so a login never presents an expired one.
	client       *vault.Client
	mount        string
	roleID       string
	secretID     string
	secretIDFile string
}

// NewVault connects to Vault: it logs in with the AppRole, or checks the
// token with a lookup-self, and starts keeping the token alive. ctx bounds
// only this first exchange; renewal runs until Close.
func NewVault(ctx context.Context, opts VaultOptions) (*Vault, error) {
	addr := firstNonEmpty(opts.Address, os.Getenv("VAULT_ADDR"))
	if addr == "" {
		return nil, errors.New("vault: no address: set the Vault address or VAULT_ADDR")
	}
	shownAddr, err := checkVaultAddress(addr)
	if err != nil {
		return nil, err
	}
	namespace := firstNonEmpty(opts.Namespace, os.Getenv("VAULT_NAMESPACE"))
	caCert := firstNonEmpty(opts.CACert, os.Getenv("VAULT_CACERT"))
	mount := firstNonEmpty(strings.Trim(opts.Mount, "/"), "secret")
	appRoleMount := firstNonEmpty(strings.Trim(opts.AppRoleMount, "/"), "approle")
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = defaultVaultTimeout
	}
	for name, ref := range opts.Paths {
		if err := ref.validate(); err != nil {
			return nil, fmt.Errorf("vault: secret %q: %w", name, err)
		}
	}

	var token string
	switch {
	case opts.RoleID == "" && (opts.SecretID != "" || opts.SecretIDFile != ""):
		return nil, errors.New("vault: an AppRole secret ID is set without a role ID")
	case opts.RoleID != "" && opts.Token != "":
		return nil, errors.New("vault: set either a token or an AppRole role ID, not both")
	case opts.RoleID != "" && opts.SecretID != "" && opts.SecretIDFile != "":
		return nil, errors.New("vault: set either the AppRole secret ID or its file, not both")
	case opts.RoleID != "" && opts.SecretID == "" && opts.SecretIDFile == "":
		return nil, errors.New("vault: AppRole auth needs a secret ID file (or secret ID)")
	case opts.RoleID == "":
		token = firstNonEmpty(opts.Token, os.Getenv("VAULT_TOKEN"))
		if token == "" {
			return nil, errors.New("vault: no credentials: set VAULT_TOKEN, or an AppRole role ID and secret ID file")
		}
	}

	hc := opts.HTTPClient
	switch {
	case hc != nil && opts.CACert != "":
		return nil, errors.New("vault: a CA certificate cannot be combined with a custom HTTP client")
	case hc == nil:
		if hc, err = newVaultHTTPClient(caCert); err != nil {
			return nil, err
		}
	}
	newClient := func() (*vault.Client, error) {
		c, err := vault.NewClient(&vault.Config{
			Address:      addr,
			HttpClient:   hc,
			Timeout:      timeout,
			MaxRetries:   2,
			MinRetryWait: opts.retryWait,
			MaxRetryWait: opts.retryWait,
		})
		if err != nil {
			return nil, fmt.Errorf("vault: %w", err)
		}
		// NewClient picks these up from the environment itself; set them
		// from the resolved options instead.
		c.ClearToken()
		if namespace != "" {
			c.SetNamespace(namespace)
		} else {
			c.ClearNamespace()
		}
		return c, nil
	}

	client, err := newClient()
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	v := &Vault{
		client:  client,
		addr:    shownAddr,
		mount:   mount,
		paths:   maps.Clone(opts.Paths),
		timeout: timeout,
		log:     log.With(slog.String("vault", shownAddr)),
		done:    make(chan struct{}),
	}

	var auth *vault.SecretAuth
	if opts.RoleID != "" {
		lc, err := newClient()
		if err != nil {
			return nil, err
		}
		v.login = &appRoleLogin{client: lc, mount: appRoleMount, roleID: opts.RoleID, secretID: opts.SecretID, secretIDFile: opts.SecretIDFile}
		if auth, err = v.doLogin(ctx); err != nil {
			return nil, fmt.Errorf("vault at %s: %w", shownAddr, err)
		}
		v.owned = true
	} else {
		client.SetToken(token)
		if auth, err = v.lookupSelf(ctx, token); err != nil {
			return nil, fmt.Errorf("vault at %s: checking the token (auth/token/lookup-self): %w", shownAddr, err)
		}
	}
	client.SetToken(auth.ClientToken)

	v.ctx, v.cancel = context.WithCancel(context.Background())
	go v.keepAlive(auth)
	return v, nil
}

// Get reads the secret's key from Vault now.
func (v *Vault) Get(ctx context.Context, name string) ([]byte, error) {
	ref, ok := v.paths[name]
	if !ok {
		return nil, notConfigured(name)
	}
	where := v.mount + "/" + strings.Trim(ref.Path, "/")
	var params map[string][]string
	if ref.Version > 0 {
		where += " version " + strconv.Itoa(ref.Version)
		params = map[string][]string{"version": {strconv.Itoa(ref.Version)}}
	}

	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	resp, err := v.client.Logical().ReadRawWithDataWithContext(ctx, v.mount+"/data/"+strings.Trim(ref.Path, "/"), params)
	if resp != nil {
		defer resp.Body.Close()
	}
	var respErr *vault.ResponseError
	switch {
	case errors.As(err, &respErr) && respErr.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("secret %q: vault %s does not exist or is deleted: %w", name, where, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("secret %q: vault read %s: %w", name, where, describeVaultError(err))
	}

	var body struct {
		Data *struct {
			Data map[string]any `json:"data"`
		} `json:"data"`
	}
	if err := decodeVaultResponse(resp, &body); err != nil {
		return nil, fmt.Errorf("secret %q: vault read %s: %w", name, where, err)
	}
	if body.Data == nil || body.Data.Data == nil {
		return nil, fmt.Errorf("secret %q: vault %s has no data (deleted or destroyed): %w", name, where, ErrNotFound)
	}
	raw, ok := body.Data.Data[ref.Key]
	if !ok {
		return nil, fmt.Errorf("secret %q: vault %s has no key %q: %w", name, where, ref.Key, ErrNotFound)
	}
	s, ok := raw.(string)
	if !ok {
		return nil, fmt.Errorf("secret %q: vault %s key %q holds %s, not a string", name, where, ref.Key, jsonKind(raw))
	}
	if s == "" {
		return nil, fmt.Errorf("secret %q: vault %s key %q is empty: %w", name, where, ref.Key, ErrNotFound)
	}
	return []byte(s), nil
}

// Close stops renewal, waiting for a renewal in flight, and revokes the
// token if it came from an AppRole login (a token given to NewVault is
// left alone).
func (v *Vault) Close() error {
	var err error
	v.once.Do(func() {
		v.cancel()
		<-v.done
		if !v.owned {
			return
		}
		// Shutdown should not wait long on a Vault that is down; the token
		// expires on its own anyway.
		ctx, cancel := context.WithTimeout(context.Background(), min(v.timeout, 5*time.Second))
		defer cancel()
		resp, rerr := v.client.Logical().WriteRawWithContext(ctx, "auth/token/revoke-self", nil)
		if resp != nil {
			resp.Body.Close()
		}
		if rerr != nil {
			err = fmt.Errorf("vault at %s: revoking the token: %w", v.addr, describeVaultError(rerr))
		}
		v.client.ClearToken()
	})
	return err
}

// keepAlive renews the token until it can be renewed no more, then logs in
// again (AppRole) or warns that reads will start failing (token auth). It
// returns when Close is called.
func (v *Vault) keepAlive(auth *vault.SecretAuth) {
	defer close(v.done)
	for {
		if auth.LeaseDuration <= 0 {
			return // the token does not expire
		}
		w, err := v.client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{
			Secret: &vault.Secret{Auth: auth},
		})
		if err != nil {
			v.log.Error("vault token renewal could not start", slog.Any("error", err))
			return
		}
		go w.Start()
		if closed := v.watch(w); closed {
			return
		}
		if v.login == nil {
			v.log.Warn("vault token can no longer be renewed; reads from Vault will fail once it expires")
			return
		}
		if auth = v.loginAgain(); auth == nil {
			return
		}
		v.client.SetToken(auth.ClientToken)
	}
}

// watch follows a LifetimeWatcher until it ends (true if Close ended it).
// It returns only once the watcher's goroutine has.
func (v *Vault) watch(w *vault.LifetimeWatcher) (closed bool) {
	for {
		select {
		case <-v.ctx.Done():
			w.Stop()
			<-w.DoneCh()
			return true
		case err := <-w.DoneCh():
			if err != nil {
				v.log.Warn("vault token renewal failed", slog.Any("error", describeVaultError(err)))
			} else {
				v.log.Info("vault token is at the end of its renewable life")
			}
			return false
		case r := <-w.RenewCh():
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				v.log.Debug("vault token renewed", slog.Duration("ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second))
			}
		}
	}
}

// loginAgain logs in until it succeeds, backing off between failures; nil
// means Close was called.
func (v *Vault) loginAgain() *vault.SecretAuth {
	wait := time.Second
	for {
		auth, err := v.doLogin(v.ctx)
		if err == nil {
			v.log.Info("logged in to vault again with the AppRole")
			return auth
		}
		if v.ctx.Err() != nil {
			return nil
		}
		v.log.Warn("vault AppRole login failed; retrying", slog.Any("error", err), slog.Duration("retry_in", wait))
		t := time.NewTimer(wait)
		select {
		case <-v.ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, time.Minute)
	}
}

func (v *Vault) doLogin(ctx context.Context) (*vault.SecretAuth, error) {
	l := v.login
	where := "auth/" + l.mount + "/login"
	secretID := []byte(l.secretID)
	if l.secretIDFile != "" {
		b, err := readSecretFile(l.secretIDFile)
		if err != nil {
			return nil, fmt.Errorf("AppRole secret ID: %w", err)
		}
		secretID = b
	}
	body, err := json.Marshal(map[string]string{"role_id": l.roleID, "secret_id": string(secretID)})
	clear(secretID)
	if err != nil {
		return nil, fmt.Errorf("AppRole login (%s): %w", where, err)
	}
	defer clear(body)

	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	resp, err := l.client.Logical().WriteRawWithContext(ctx, where, body)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("AppRole login (%s): %w", where, describeVaultError(err))
	}
	var out struct {
		Auth *vault.SecretAuth `json:"auth"`
	}
	if err := decodeVaultResponse(resp, &out); err != nil {
		return nil, fmt.Errorf("AppRole login (%s): %w", where, err)
	}
	if out.Auth == nil || out.Auth.ClientToken == "" {
		return nil, fmt.Errorf("AppRole login (%s): the response holds no token (is MFA required for this role?)", where)
	}
	return out.Auth, nil
}

func (v *Vault) lookupSelf(ctx context.Context, token string) (*vault.SecretAuth, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	resp, err := v.client.Logical().ReadRawWithContext(ctx, "auth/token/lookup-self")
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		return nil, describeVaultError(err)
	}
	var out struct {
		Data *struct {
			TTL       int64 `json:"ttl"`
			Renewable bool  `json:"renewable"`
		} `json:"data"`
	}
	if err := decodeVaultResponse(resp, &out); err != nil {
		return nil, err
	}
	if out.Data == nil {
		return nil, errors.New("the response holds no token data")
	}
	return &vault.SecretAuth{ClientToken: token, LeaseDuration: int(out.Data.TTL), Renewable: out.Data.Renewable}, nil
}

func (r VaultRef) validate() error {
	switch {
	case strings.Trim(r.Path, "/") == "":
		return errors.New("a Vault reference needs a path")
	case r.Key == "":
		return errors.New("a Vault reference needs a key")
	case r.Version < 0:
		return fmt.Errorf("version %d is negative (0 means the latest)", r.Version)
	}
	return nil
}

// checkVaultAddress accepts https, and plain http only to a loopback
// address. It returns the address as it may be shown.
func checkVaultAddress(addr string) (string, error) {
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return "", errors.New("vault: the address is not a URL like https://vault.example.com:8200")
	}
	shown := u.Redacted()
	switch u.Scheme {
	case "https":
	case "http":
		host := u.Hostname()
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return "", fmt.Errorf("vault: address %s is plain http, which would send the token in clear text; use https (http is allowed only to a loopback address)", shown)
		}
	default:
		return "", fmt.Errorf("vault: address %s: the scheme must be https", shown)
	}
	return shown, nil
}

func newVaultHTTPClient(caCert string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			return nil, fmt.Errorf("vault: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault: CA certificate %s holds no PEM certificate", caCert)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{
		Transport: tr,
		// The Vault client follows redirects itself (once, never from
		// https to http).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// vaultError is a failed Vault request described by its status and Vault's
// own messages; a body that is not Vault's JSON error is left out, since
// nothing says what it holds.
type vaultError struct {
	status   int
	messages []string
}

func (e *vaultError) Error() string {
	if len(e.messages) == 0 {
		return fmt.Sprintf("HTTP %d from Vault", e.status)
	}
	return fmt.Sprintf("%s (HTTP %d)", strings.Join(e.messages, "; "), e.status)
}

var errMalformedResponse = errors.New("the response from Vault is not the JSON expected")

// describeVaultError turns an error from the Vault client into one whose
// text is safe to show: Vault's status and messages, or the transport
// error. Context errors stay visible to errors.Is.
func describeVaultError(err error) error {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		e := &vaultError{status: re.StatusCode}
		if !re.RawError {
			for _, m := range re.Errors {
				// Vault wraps messages as "1 error occurred:\n\t* ...\n\n".
				m = strings.Join(strings.Fields(m), " ")
				m = strings.TrimPrefix(m, "1 error occurred: * ")
				if m != "" {
					e.messages = append(e.messages, m)
				}
			}
		}
		return e
	}
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &syntaxErr) || errors.As(err, &typeErr) {
		return errMalformedResponse
	}
	return err
}

// decodeVaultResponse decodes a successful response; its errors never
// quote the body.
func decodeVaultResponse(resp *vault.Response, out any) error {
	if resp == nil || resp.Body == nil {
		return errMalformedResponse
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxVaultResponse)).Decode(out); err != nil {
		return errMalformedResponse
	}
	return nil
}

// jsonKind names the JSON type of a decoded value without showing it.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64, json.Number:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
