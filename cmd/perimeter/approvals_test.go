package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `perimeter approvals --config FILE` reaches the worker that config
// describes: at its worker.admin_listen, with the token it wrote to its
// worker.state_dir.
func TestApprovalsReachTheWorkerTheConfigDescribes(t *testing.T) {
	t.Setenv("PERIMETER_ADMIN_TOKEN", "")
	t.Setenv("PERIMETER_ADMIN_URL", "")
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"data":[],"has_more":false}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, adminTokenFile), []byte("pat_configured\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "perimeter.yaml")
	if err := os.WriteFile(cfgPath, []byte("version: 1\nworker:\n  state_dir: "+state+
		"\n  admin_listen: "+strings.TrimPrefix(srv.URL, "http://")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"--config", cfgPath, "approvals", "list"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer pat_configured" {
		t.Errorf("the worker saw Authorization %q, want the token in %s", auth, state)
	}
}

func TestTheAdminURLOfAListenAddress(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:9464": "http://127.0.0.1:9464",
		":9464":          "http://127.0.0.1:9464",
		"0.0.0.0:9000":   "http://127.0.0.1:9000",
		"[::]:9000":      "http://[::1]:9000",
		"10.0.0.5:9464":  "http://10.0.0.5:9464",
	} {
		if got, err := clientAdminURL(listen); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %s", listen, got, err, want)
		}
	}
	if _, err := clientAdminURL("off"); err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("off: err = %v, want it to say how to decide without the API", err)
	}
}

// A live restore presents the token of the worker whose state directory
// --state-dir names.
func TestLiveRestoreUsesTheTokenInTheStateDirectory(t *testing.T) {
	t.Setenv("PERIMETER_ADMIN_TOKEN", "")
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"checkpoint":{},"report":{}}`))
	}))
	defer srv.Close()
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, adminTokenFile), []byte("pat_here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"checkpoints", "restore", "--session", "sesn_1", "--before", "sevt_1",
		"--admin-url", srv.URL, "--state-dir", state})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer pat_here" {
		t.Errorf("the worker saw Authorization %q, want the token in %s", auth, state)
	}
}

// A --store that is neither a PostgreSQL URL nor a worker state directory
// is refused, saying which it should be, and no store is created there.
func TestApprovalsRefuseAStoreThatIsNeitherURLNorStateDirectory(t *testing.T) {
	empty := t.TempDir()
	for _, tc := range []struct{ name, store string }{
		{"MissingDirectory", filepath.Join(t.TempDir(), "mistyped")},
		{"MisspelledScheme", "postgress://db.internal/perimeter"},
		{"DirectoryWithoutStore", empty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newRootCmd()
			root.SetOut(&bytes.Buffer{})
			root.SetArgs([]string{"approvals", "list", "--store", tc.store})
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), `--store "`+tc.store+`" is neither a postgres:// URL nor a worker state directory`) {
				t.Errorf("err = %v, want it to say what --store should be", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(empty, "approvals.db")); !os.IsNotExist(err) {
		t.Errorf("an approvals store was created in %s (%v)", empty, err)
	}
}
