package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/s3"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// The checkpoints API answers nothing without the admin token.
func TestTheCheckpointsAPINeedsTheAdminToken(t *testing.T) {
	h := checkpointsAPI(nil, nil, "pat_secret")
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer pat_wrong", http.StatusUnauthorized},
		{"Bearer pat_secret", http.StatusNotFound}, // past the check: this worker keeps no store
	} {
		req := httptest.NewRequest("POST", "/v1/checkpoints/restore", strings.NewReader(`{}`))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("Authorization %q: %d %s, want %d", tc.auth, rec.Code, rec.Body, tc.want)
		}
	}
}

// A restore request with a body it cannot use is refused before anything
// is restored, with the reason and the shape it wants.
func TestRestoreRefusesABadBody(t *testing.T) {
	store, err := checkpoint.Open(t.TempDir(), checkpoint.Options{NoSync: true, FullScan: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	h := checkpointsAPI(nil, store, "pat_secret") // a nil worker: nothing may reach it
	for body, want := range map[string]string{
		`{"session": "s", "before": "t"}`:                                 `"by": WHO`,
		`{"session": "s", "before": "t", "checkpoint": "c", "by": "ann"}`: `"by": WHO`,
		`{"session": "s", "before": "t", "by": "ann", "force": true}`:     `unknown field "force"`,
		`{"session": "s", "before": "t", "by": "ann"} {"session": "x"}`:   "more after its JSON value",
	} {
		req := httptest.NewRequest("POST", "/v1/checkpoints/restore", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer pat_secret")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var answer struct {
			Error struct{ Message string }
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &answer)
		if msg := answer.Error.Message; rec.Code != http.StatusBadRequest || !strings.Contains(msg, want) || !strings.Contains(msg, `"session": ID`) {
			t.Errorf("body %s: %d %s, want 400 naming %s and the wanted shape", body, rec.Code, rec.Body, want)
		}
	}
}

// Listing needs a session, and says so; a session without checkpoints is
// an empty list.
func TestListingCheckpointsNamesTheSession(t *testing.T) {
	store, err := checkpoint.Open(t.TempDir(), checkpoint.Options{NoSync: true, FullScan: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	h := checkpointsAPI(nil, store, "pat_secret")
	for _, tc := range []struct {
		query string
		code  int
		want  string
	}{
		{"", http.StatusBadRequest, "session=ID"},
		{"?session=sesn_none", http.StatusOK, `{"data":[]}`},
	} {
		req := httptest.NewRequest("GET", "/v1/checkpoints"+tc.query, nil)
		req.Header.Set("Authorization", "Bearer pat_secret")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET /v1/checkpoints%s: %d %s, want %d with %s", tc.query, rec.Code, rec.Body, tc.code, tc.want)
		}
	}
}

// The offline commands read a worker's store; pointed at a directory that
// holds none (a mistyped --state-dir), they say so and make nothing there.
func TestOfflineCheckpointCommandsRefuseADirectoryWithoutAStore(t *testing.T) {
	state := filepath.Join(t.TempDir(), "typo")
	for _, args := range [][]string{
		{"list"},
		{"diff", "--before", "sevt_1"},
		{"restore", "--before", "sevt_1"},
	} {
		root := newRootCmd()
		root.SetOut(&bytes.Buffer{})
		root.SetArgs(append([]string{"checkpoints", "--session", "sesn_1", "--state-dir", state}, args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), "no checkpoint store in "+filepath.Join(state, "checkpoints")) {
			t.Errorf("checkpoints %s: err = %v, want it to say there is no store", args[0], err)
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Fatalf("checkpoints %s made %s (%v)", args[0], state, err)
		}
	}
}

// A worker whose object store cannot be used refuses to start, and says
// what is wrong; one without persistence ignores the store.
func TestOpenRemoteChecksTheBucket(t *testing.T) {
	backend := s3mem.New()
	if err := backend.CreateBucket("present"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog())).Server())
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIATEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
	cfg := func(bucket, key string) *config.Config {
		var c config.Config
		c.Checkpoints.PersistKey = key
		c.Checkpoints.Remote = s3.Config{Endpoint: srv.URL, Bucket: bucket, DisableTLS: true}
		return &c
	}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	if r, err := openRemote(ctx, cfg("present", "workspace"), log); err != nil || r == nil {
		t.Fatalf("an existing bucket: %v, %v", r, err)
	}
	_, err := openRemote(ctx, cfg("missing", "workspace"), log)
	if err == nil || !strings.Contains(err.Error(), "checkpoints.remote") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing bucket: %v, want an error naming the setting and the bucket", err)
	}
	if r, err := openRemote(ctx, cfg("missing", ""), log); err != nil || r != nil {
		t.Fatalf("no persist_key: %v, %v; want no store and no error", r, err)
	}
}

// `perimeter checkpoints` and `perimeter audit` look where the worker
// keeps things: checkpoints.dir and audit.dir when the config sets them.
func TestOfflineCommandsUseTheConfiguredDirectories(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "perimeter.yaml")
	cpDir, auditDirPath := filepath.Join(dir, "elsewhere", "checkpoints"), filepath.Join(dir, "elsewhere", "audit")
	if err := os.WriteFile(cfgPath, []byte("version: 1\nworker:\n  state_dir: "+filepath.Join(dir, "state")+
		"\ncheckpoints:\n  dir: "+cpDir+"\naudit:\n  dir: "+auditDirPath+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.Open(cpDir, checkpoint.Options{NoSync: true, FullScan: true})
	if err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	os.WriteFile(filepath.Join(ws, "f"), []byte("x"), 0o600)
	cp, err := store.Checkpoint(context.Background(), ws, checkpoint.Key{Session: "sesn_1", ToolUseID: "toolu_1"})
	store.Close()
	if err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"--config", cfgPath, "checkpoints", "list", "--session", "sesn_1", "--json"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), cp.ID) {
		t.Errorf("checkpoints list did not read %s: %s", cpDir, out.String())
	}

	cfg, err := resolveConfig(root, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := auditDir(cfg); got != auditDirPath {
		t.Errorf("audit directory %s, want %s", got, auditDirPath)
	}
}

// A running worker prunes its checkpoints by the retention every
// interval, not only at start; stop ends that and leaves the store open.
func TestCheckpointsArePrunedWhileTheWorkerRuns(t *testing.T) {
	store, err := checkpoint.Open(t.TempDir(), checkpoint.Options{NoSync: true, FullScan: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ws := t.TempDir()
	for i, id := range []string{"toolu_1", "toolu_2", "toolu_3"} {
		if err := os.WriteFile(filepath.Join(ws, "f.txt"), bytes.Repeat([]byte{'a' + byte(i)}, 100), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Checkpoint(context.Background(), ws, checkpoint.Key{Session: "sesn_1", ToolUseID: id}); err != nil {
			t.Fatal(err)
		}
	}
	logs := &testenv.Buffer{}
	stop := pruneEvery(store, checkpoint.Retention{MaxCount: 1}, 10*time.Millisecond, slog.New(slog.NewTextHandler(logs, nil)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := store.List("sesn_1")
		if err != nil {
			t.Fatal(err)
		}
		// The log line follows the prune that removed them.
		if len(list) == 1 && list[0].ToolUseID == "toolu_3" && strings.Contains(logs.String(), "checkpoints pruned") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoints left: %+v; want only the newest; log: %s", list, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if !strings.Contains(logs.String(), "removed=2") {
		t.Errorf("log: %s", logs.String())
	}
	if _, err := store.Checkpoint(context.Background(), ws, checkpoint.Key{Session: "sesn_1", ToolUseID: "toolu_4"}); err != nil {
		t.Errorf("the store after stop: %v", err)
	}
}
