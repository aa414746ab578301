package secrets

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestErrorsNeverContainValues plants a canary value behind every failure
// mode it can reach and checks that no error, and no log line, repeats it.
func TestErrorsNeverContainValues(t *testing.T) {
	const canary = "canary-3f9c1e7a5b"
	dir := t.TempDir()
	exposed := filepath.Join(dir, "exposed")
	writePrivate(t, exposed, canary)
	if err := os.Chmod(exposed, 0o644); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge")
	writePrivate(t, huge, strings.Repeat(canary, maxFileSize/len(canary)+1))
	t.Setenv("PERIMETER_TEST_CANARY", canary)
	t.Setenv("PERIMETER_TEST_EMPTY", "")

	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "right-secret-id"
	f.addToken("hvs.static", 0, false)
	f.put("other-key", map[string]any{"unrelated": canary})
	f.put("object", map[string]any{"k": map[string]any{"nested": canary}})
	f.put("array", map[string]any{"k": []any{canary}})
	f.put("deleted", map[string]any{"k": canary})
	f.put("deleted", nil)
	raw := func(status int, body string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	f.cannedResponse("proxy-error", raw(http.StatusBadGateway, "<html>upstream sent "+canary+"</html>"))
	f.cannedResponse("truncated", raw(http.StatusOK, `{"data":{"data":{"k":"`+canary))
	f.cannedResponse("wrong-shape", raw(http.StatusOK, `{"data":"`+canary+`"}`))
	f.cannedResponse("junk", raw(http.StatusOK, canary))
	f.cannedResponse("forbidden", raw(http.StatusForbidden, `{"errors":["permission denied"]}`))

	logs := &logBuffer{}
	opts := testVaultOptions(f, logs)
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{}
	for _, p := range []string{"other-key", "object", "array", "deleted", "proxy-error", "truncated", "wrong-shape", "junk", "forbidden"} {
		opts.Paths["vault-"+p] = VaultRef{Path: p, Key: "k"}
	}
	v, err := NewVault(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	multi := Multi{
		"env-unset":        NewEnv(map[string]string{"env-unset": "PERIMETER_TEST_UNSET_8e2f"}),
		"env-empty":        NewEnv(map[string]string{"env-empty": "PERIMETER_TEST_EMPTY"}),
		"env-unconfigured": NewEnv(map[string]string{"other": "PERIMETER_TEST_CANARY"}),
		"file-exposed":     NewFile(map[string]string{"file-exposed": exposed}),
		"file-huge":        NewFile(map[string]string{"file-huge": huge}),
		"file-missing":     NewFile(map[string]string{"file-missing": filepath.Join(dir, "missing")}),
	}
	for name := range opts.Paths {
		multi[name] = v
	}
	cache := NewCache(multi, time.Minute)

	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
			return
		}
		t.Logf("%s: %v", what, err)
		for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
			if strings.Contains(text, canary) {
				t.Errorf("%s: the error shows the value: %s", what, text)
			}
		}
	}
	names := []string{"unrouted"}
	for name := range multi {
		names = append(names, name)
	}
	for _, name := range names {
		_, err := cache.Get(t.Context(), name)
		check(name, err)
	}

	// Credentials are values too: a rejected token or AppRole secret ID
	// must not show up in the error either.
	ctx := t.Context()
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, Token: canary, retryWait: time.Millisecond})
	check("rejected token", err)
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, RoleID: "role-1", SecretID: canary, retryWait: time.Millisecond})
	check("rejected secret ID", err)
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, RoleID: "role-1", SecretIDFile: exposed, retryWait: time.Millisecond})
	check("exposed secret ID file", err)
	_, err = NewVault(ctx, VaultOptions{Address: "http://vault.example.com", Token: canary})
	check("refused address", err)
	_, err = cache.Get(canceled(ctx), "vault-other-key")
	check("cancelled", err)

	if strings.Contains(logs.String(), canary) || strings.Contains(logs.String(), "hvs.static") {
		t.Errorf("the logs show a value:\n%s", logs)
	}
}

func canceled(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	return ctx
}
