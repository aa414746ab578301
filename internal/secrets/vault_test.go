package secrets

import (
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

func TestVaultReadsWithToken(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.namespace = "team-a"
	f.addToken("hvs.static", 0, false)
	f.put("ci/github", map[string]any{"token": "ghp_value1", "user": "bot"})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{"github": {Path: "ci/github", Key: "token"}}
	v := mustVault(t, opts)

	wantSecret(t, v, "github", "ghp_value1")
	reqs := f.requests()
	if len(reqs) != 2 || reqs[0].Path != "/v1/auth/token/lookup-self" || reqs[1].Path != "/v1/secret/data/ci/github" {
		t.Fatalf("requests = %v, want lookup-self then the read", reqs)
	}
	for _, r := range reqs {
		if r.Token != "hvs.static" || r.Namespace != "team-a" {
			t.Errorf("%v: token %q, namespace %q; want the configured ones", r, r.Token, r.Namespace)
		}
	}
	if _, err := v.Get(t.Context(), "npm"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unconfigured name: %v, want ErrNotFound", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := v.Get(ctx, "github"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestVaultTakesAddressAndTokenFromEnvironment(t *testing.T) {
	f := newFakeVault(t)
	f.addToken("hvs.from-env", 0, false)
	f.put("db", map[string]any{"password": "pw"})
	t.Setenv("VAULT_ADDR", f.URL)
	t.Setenv("VAULT_TOKEN", "hvs.from-env")
	t.Setenv("VAULT_NAMESPACE", "")

	v, err := NewVault(t.Context(), VaultOptions{Paths: map[string]VaultRef{"db": {Path: "db", Key: "password"}}, retryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if got, err := v.Get(t.Context(), "db"); err != nil || string(got) != "pw" {
		t.Errorf("Get = %q, %v; want pw", got, err)
	}
}

func TestVaultAppRoleLoginThenRead(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "secret-id-1"
	f.put("ci/npm", map[string]any{"token": "npm_value"})

	secretIDFile := filepath.Join(t.TempDir(), "secret-id")
	writePrivate(t, secretIDFile, "secret-id-1\n")
	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.RoleID, opts.SecretIDFile = "role-1", secretIDFile
	opts.Paths = map[string]VaultRef{"npm": {Path: "ci/npm", Key: "token"}}
	v := mustVault(t, opts)

	wantSecret(t, v, "npm", "npm_value")
	reqs := f.requests()
	if reqs[0].Path != "/v1/auth/approle/login" || reqs[0].Token != "" {
		t.Errorf("first request %v with token %q; want a login without a token", reqs[0], reqs[0].Token)
	}
	for _, r := range reqs[1:] {
		if r.Token != "hvs.approle-1" {
			t.Errorf("%v with token %q; want the token from the login", r, r.Token)
		}
	}
	if n := f.count("/v1/secret/data/ci/npm"); n != 1 {
		t.Errorf("%d reads, want 1", n)
	}
}

func TestVaultRenewsTokenBeforeLeaseEnds(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "sid"
	f.lease = 2 * time.Second
	f.put("k", map[string]any{"v": "value"})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.RoleID, opts.SecretID = "role-1", "sid"
	opts.Paths = map[string]VaultRef{"k": {Path: "k", Key: "v"}}
	v := mustVault(t, opts)

	// Past the first lease, the token still works only if it was renewed.
	time.Sleep(3 * time.Second)
	if _, err := v.Get(t.Context(), "k"); err != nil {
		t.Fatalf("Get after the first lease: %v", err)
	}
	if n := f.count("/v1/auth/token/renew-self"); n < 2 {
		t.Errorf("renew-self called %d times in 3s with a 2s lease, want at least 2", n)
	}
	if n := f.count("/v1/auth/approle/login"); n != 1 {
		t.Errorf("%d logins, want 1: renewal should have kept the first token", n)
	}
}

func TestVaultRenewsGivenToken(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken("hvs.periodic", 2*time.Second, true)

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.periodic"
	mustVault(t, opts)
	eventually(t, 3*time.Second, "renew-self was not called", func() bool {
		return f.count("/v1/auth/token/renew-self") > 0
	})
}

func TestVaultLogsInAgainWhenRenewalFails(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "sid-5e1d"
	f.lease = 2 * time.Second
	f.denyRenew = true
	f.put("k", map[string]any{"v": "value"})

	logs := &testenv.Buffer{}
	opts := testVaultOptions(f, logs)
	opts.RoleID, opts.SecretID = "role-1", "sid-5e1d"
	opts.Paths = map[string]VaultRef{"k": {Path: "k", Key: "v"}}
	v := mustVault(t, opts)

	eventually(t, 4*time.Second, "no second login after renewal was refused", func() bool {
		return f.count("/v1/auth/approle/login") >= 2
	})
	time.Sleep(time.Second) // the first token has expired by now
	if _, err := v.Get(t.Context(), "k"); err != nil {
		t.Fatalf("Get after logging in again: %v", err)
	}
	if !strings.Contains(logs.String(), "logged in to vault again") {
		t.Errorf("logs do not mention the new login:\n%s", logs)
	}
	if strings.Contains(logs.String(), "hvs.approle-") || strings.Contains(logs.String(), "sid-5e1d") {
		t.Errorf("the logs show a token or the secret ID:\n%s", logs)
	}
}

func TestVaultForbiddenNamesSecretAndVaultMessage(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken("hvs.static", 0, false)
	f.put("ci/github", map[string]any{"token": "ghp_value1"})
	f.cannedResponse("ci/github", func(w http.ResponseWriter) {
		vaultErrorResponse(w, 403, "1 error occurred:\n\t* permission denied\n\n")
	})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{"github": {Path: "ci/github", Key: "token"}}
	v := mustVault(t, opts)

	_, err := v.Get(t.Context(), "github")
	if err == nil {
		t.Fatal("Get succeeded despite a 403")
	}
	want := `secret "github": vault read secret/ci/github: permission denied (HTTP 403)`
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}
	if errors.Is(err, ErrNotFound) {
		t.Error("a 403 is reported as ErrNotFound; it is a permission problem")
	}
}

func TestVaultMissingKeyOrSecretIsNotFound(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken("hvs.static", 0, false)
	f.put("present", map[string]any{"user": "bot"})
	f.put("deleted", map[string]any{"v": "old"})
	f.put("deleted", nil)

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{
		"missing-key":    {Path: "present", Key: "token"},
		"missing-secret": {Path: "absent", Key: "token"},
		"deleted":        {Path: "deleted", Key: "v"},
		"no-version":     {Path: "present", Key: "user", Version: 7},
	}
	v := mustVault(t, opts)

	for name, want := range map[string]string{
		"missing-key":    `secret "missing-key": vault secret/present has no key "token": secret not found`,
		"missing-secret": `secret "missing-secret": vault secret/absent does not exist or is deleted: secret not found`,
		"deleted":        `secret "deleted": vault secret/deleted does not exist or is deleted: secret not found`,
		"no-version":     `secret "no-version": vault secret/present version 7 does not exist or is deleted: secret not found`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := v.Get(t.Context(), name)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get: %v, want ErrNotFound", err)
			}
			if err.Error() != want {
				t.Errorf("error = %q\nwant    %q", err, want)
			}
		})
	}
}

func TestVaultRequestsPinnedVersion(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken("hvs.static", 0, false)
	f.put("rotating", map[string]any{"v": "first"})
	f.put("rotating", map[string]any{"v": "second"})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{
		"pinned": {Path: "rotating", Key: "v", Version: 1},
		"latest": {Path: "rotating", Key: "v"},
	}
	v := mustVault(t, opts)

	for name, want := range map[string]string{"pinned": "first", "latest": "second"} {
		got, err := v.Get(t.Context(), name)
		if err != nil || string(got) != want {
			t.Errorf("Get(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	var queries []string
	for _, r := range f.requests() {
		if r.Path == "/v1/secret/data/rotating" {
			queries = append(queries, r.Query)
		}
	}
	if len(queries) != 2 || !slices.Contains(queries, "version=1") || !slices.Contains(queries, "") {
		t.Errorf("read queries = %q, want one with version=1 and one without", queries)
	}
}

func TestVaultUsesConfiguredMounts(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.mount = "kv/team"
	f.addToken("hvs.static", 0, false)
	f.put("x", map[string]any{"k": "val"})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	opts.Mount = "/kv/team/"
	opts.Paths = map[string]VaultRef{"x": {Path: "x", Key: "k"}}
	v := mustVault(t, opts)
	if got, err := v.Get(t.Context(), "x"); err != nil || string(got) != "val" {
		t.Errorf("Get = %q, %v; want val", got, err)
	}
}

func TestNewVaultFailsClearly(t *testing.T) {
	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "right"
	t.Setenv("VAULT_ADDR", "")
	t.Setenv("VAULT_TOKEN", "")
	t.Setenv("VAULT_NAMESPACE", "")
	t.Setenv("VAULT_CACERT", "")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := "http://" + l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name string
		opts VaultOptions
		want []string
	}{
		{"unreachable", VaultOptions{Address: closedAddr, Token: "t"},
			[]string{"vault at " + closedAddr, "lookup-self", "connection refused"}},
		{"rejected token", VaultOptions{Address: f.URL, Token: "hvs.wrong"},
			[]string{"vault at " + f.URL, "checking the token", "permission denied (HTTP 403)"}},
		{"rejected AppRole", VaultOptions{Address: f.URL, RoleID: "role-1", SecretID: "wrong"},
			[]string{"vault at " + f.URL, "AppRole login (auth/approle/login)", "invalid role or secret ID (HTTP 400)"}},
		{"missing secret ID file", VaultOptions{Address: f.URL, RoleID: "role-1", SecretIDFile: "/nonexistent/secret-id"},
			[]string{"AppRole secret ID", "/nonexistent/secret-id does not exist"}},
		{"no address", VaultOptions{Token: "t"}, []string{"no address", "VAULT_ADDR"}},
		{"no credentials", VaultOptions{Address: f.URL}, []string{"no credentials", "VAULT_TOKEN"}},
		{"token and AppRole", VaultOptions{Address: f.URL, Token: "t", RoleID: "r", SecretID: "s"}, []string{"either a token or an AppRole"}},
		{"AppRole without secret ID", VaultOptions{Address: f.URL, RoleID: "r"}, []string{"needs a secret ID"}},
		{"secret ID without role", VaultOptions{Address: f.URL, SecretID: "s"}, []string{"without a role ID"}},
		{"plain http to a remote host", VaultOptions{Address: "http://vault.example.com:8200", Token: "t"},
			[]string{"plain http", "use https"}},
		{"not a URL", VaultOptions{Address: "vault.example.com", Token: "t"}, []string{"not a URL"}},
		{"bad ref", VaultOptions{Address: f.URL, Token: "t", Paths: map[string]VaultRef{"gh": {Path: "p"}}},
			[]string{`secret "gh"`, "needs a key"}},
		{"CA file missing", VaultOptions{Address: f.URL, Token: "t", CACert: "/nonexistent/ca.pem"}, []string{"CA certificate", "/nonexistent/ca.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.retryWait = time.Millisecond
			v, err := NewVault(t.Context(), tc.opts)
			if err == nil {
				v.Close()
				t.Fatal("NewVault succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestVaultVerifiesTLSWithCACert(t *testing.T) {
	t.Setenv("VAULT_CACERT", "")
	f := newFakeVault(t)
	f.addToken("hvs.static", 0, false)
	srv := httptest.NewUnstartedServer(f)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake below is expected
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}

	opts := VaultOptions{Address: srv.URL, Token: "hvs.static", CACert: caFile, retryWait: time.Millisecond}
	v, err := NewVault(t.Context(), opts)
	if err != nil {
		t.Fatalf("NewVault with the server's CA: %v", err)
	}
	v.Close()

	opts.CACert = filepath.Join(t.TempDir(), "empty.pem")
	writePrivate(t, opts.CACert, "no certificate here")
	if _, err := NewVault(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("NewVault with a CA file holding no certificate: %v", err)
	}

	// Without the CA, the system roots do not vouch for the test server.
	opts.CACert = ""
	if _, err := NewVault(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("NewVault without the server's CA: %v, want a certificate error", err)
	}
}

func TestVaultCloseStopsRenewalAndRevokesItsOwnToken(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "sid"
	f.addToken("hvs.given", time.Hour, true)

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.RoleID, opts.SecretID = "role-1", "sid"
	v, err := NewVault(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := f.count("/v1/auth/token/revoke-self"); n != 1 {
		t.Errorf("revoke-self called %d times, want 1 for a token from a login", n)
	}
	before := len(f.requests())
	time.Sleep(100 * time.Millisecond)
	if after := len(f.requests()); after != before {
		t.Errorf("%d requests after Close", after-before)
	}

	opts = testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.given"
	v, err = NewVault(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if n := f.count("/v1/auth/token/revoke-self"); n != 1 {
		t.Errorf("revoke-self called for a token the caller gave")
	}
}

// mustVault connects to Vault with opts and closes it when the test ends.
func mustVault(t *testing.T, opts VaultOptions) *Vault {
	t.Helper()
	v, err := NewVault(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// wantSecret checks that src yields want for name.
func wantSecret(t *testing.T, src Source, name, want string) {
	t.Helper()
	got, err := src.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("Get(%q) = %q, want %q", name, got, want)
	}
}
