package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
)

// Test credentials. The secret is a canary: no error or description may
// contain it.
const (
	testKeyID  = "AKIAPERIMETERTEST"
	testSecret = "canary-secret-9f8e7d6c5b4a"
)

// server is an S3 service on 127.0.0.1: gofakes3 with its memory backend,
// behind a check that each request is signed with the expected key.
type server struct {
	url     string
	backend *s3mem.Backend
}

func newServer(t *testing.T, keyID string, buckets ...string) *server {
	t.Helper()
	backend := s3mem.New()
	for _, b := range buckets {
		if err := backend.CreateBucket(b); err != nil {
			t.Fatal(err)
		}
	}
	fake := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	ts := httptest.NewServer(requireKey(keyID, fake.Server()))
	t.Cleanup(ts.Close)
	return &server{url: ts.URL, backend: backend}
}

// requireKey answers 403 to a request not signed with keyID: gofakes3
// checks no signature, and the tests must know which key was used.
func requireKey(keyID string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Authorization"), "Credential="+keyID+"/") {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *server) config(bucket string) Config {
	return Config{
		Endpoint:        s.url,
		Bucket:          bucket,
		DisableTLS:      true,
		AccessKeyID:     testKeyID,
		SecretAccessKey: testSecret,
	}
}

func mustNew(t *testing.T, cfg Config) *Bucket {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noSecret fails if err's text holds the test secret.
func noSecret(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testSecret) {
		t.Fatalf("error holds the secret key: %v", err)
	}
}

func TestBucketStoresObjects(t *testing.T) {
	srv := newServer(t, testKeyID, "ckpt")
	cfg := srv.config("ckpt")
	cfg.Prefix = "/team-a/prod/"
	b := mustNew(t, cfg)
	ctx := context.Background()
	if err := b.Check(ctx); err != nil {
		t.Fatal(err)
	}

	// 20 MiB goes up in parts.
	big := bytes.Repeat([]byte("0123456789abcdef"), 20<<20/16)
	for name, data := range map[string][]byte{
		"objects/small": []byte("hello"),
		"objects/empty": {},
		"objects/big":   big,
	} {
		there, err := b.Exists(ctx, name)
		if err != nil || there {
			t.Fatalf("Exists(%s) before Put: %v, %v", name, there, err)
		}
		if err := b.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
		there, err = b.Exists(ctx, name)
		if err != nil || !there {
			t.Fatalf("Exists(%s) after Put: %v, %v", name, there, err)
		}
		rc, err := b.Get(ctx, name)
		if err != nil {
			t.Fatalf("Get(%s): %v", name, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get(%s): %d bytes, %v; want the %d put", name, len(got), err, len(data))
		}
		// The prefix is where the service keeps it.
		if _, err := srv.backend.HeadObject("ckpt", "team-a/prod/"+name); err != nil {
			t.Fatalf("%s is not stored under the prefix: %v", name, err)
		}
	}

	_, err := b.Get(ctx, "objects/absent")
	if !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("Get of a missing object: %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "team-a/prod/objects/absent") {
		t.Errorf("error does not name the object: %v", err)
	}
}

func TestCheckNamesWhatIsWrong(t *testing.T) {
	srv := newServer(t, testKeyID, "ckpt")
	ctx := context.Background()
	host := strings.TrimPrefix(srv.url, "http://")

	t.Run("missing bucket", func(t *testing.T) {
		err := mustNew(t, srv.config("absent")).Check(ctx)
		if err == nil {
			t.Fatal("Check of a missing bucket passed")
		}
		for _, want := range []string{`"absent"`, host, "does not exist"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Check: %v; want it to say %q", err, want)
			}
		}
		noSecret(t, err)
	})

	t.Run("wrong key", func(t *testing.T) {
		cfg := srv.config("ckpt")
		cfg.AccessKeyID = "AKIAWRONG"
		b := mustNew(t, cfg)
		err := b.Check(ctx)
		if err == nil || !strings.Contains(err.Error(), "AccessDenied") || !strings.Contains(err.Error(), host) {
			t.Fatalf("Check with a wrong key: %v; want AccessDenied at %s", err, host)
		}
		noSecret(t, err)
		err = b.Put(ctx, "objects/x", strings.NewReader("x"), 1)
		if err == nil || !strings.Contains(err.Error(), "objects/x") {
			t.Fatalf("Put with a wrong key: %v", err)
		}
		noSecret(t, err)
		_, err = b.Get(ctx, "objects/x")
		if err == nil || errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Get with a wrong key: %v; want a denial, not ErrNotFound", err)
		}
		noSecret(t, err)
	})

	t.Run("nothing listening", func(t *testing.T) {
		cfg := srv.config("ckpt")
		cfg.Endpoint = "http://127.0.0.1:1"
		ctx, cancel := context.WithTimeout(ctx, 3e9)
		defer cancel()
		err := mustNew(t, cfg).Check(ctx)
		if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Fatalf("Check with nothing listening: %v", err)
		}
		noSecret(t, err)
	})
}

// TestCredentialsFromTheStandardChain: without static keys, a Bucket
// signs with the keys the AWS tools would find.
func TestCredentialsFromTheStandardChain(t *testing.T) {
	srv := newServer(t, testKeyID, "ckpt")
	// No instance metadata here: a loopback credentials endpoint that
	// has none answers for it, quickly.
	none := httptest.NewServer(http.NotFoundHandler())
	defer none.Close()
	clean := func(t *testing.T) {
		for _, v := range []string{
			"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY", "AWS_SECRET_KEY",
			"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
			"AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
			"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
		} {
			t.Setenv(v, "")
			os.Unsetenv(v)
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
		t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", none.URL+"/creds")
	}
	chain := func() Config {
		cfg := srv.config("ckpt")
		cfg.AccessKeyID, cfg.SecretAccessKey = "", ""
		return cfg
	}
	for _, tc := range []struct {
		name string
		set  func(t *testing.T)
	}{
		{"AWS variables", func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", testKeyID)
			t.Setenv("AWS_SECRET_ACCESS_KEY", testSecret)
		}},
		{"MinIO variables", func(t *testing.T) {
			t.Setenv("MINIO_ROOT_USER", testKeyID)
			t.Setenv("MINIO_ROOT_PASSWORD", testSecret)
		}},
		{"shared credentials file", func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "credentials")
			os.WriteFile(file, fmt.Appendf(nil, "[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = x\n\n[ci]\naws_access_key_id = %s\naws_secret_access_key = %s\n", testKeyID, testSecret), 0o600)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
			t.Setenv("AWS_PROFILE", "ci")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clean(t)
			tc.set(t)
			b := mustNew(t, chain())
			if err := b.Check(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(context.Background(), "refs/x", strings.NewReader("x"), 1); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("none found", func(t *testing.T) {
		clean(t)
		err := mustNew(t, chain()).Check(context.Background())
		if err == nil || !strings.Contains(err.Error(), "no credentials found") || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
			t.Fatalf("Check without credentials: %v", err)
		}
	})
}

func TestPrivateCertificateAuthority(t *testing.T) {
	backend := s3mem.New()
	backend.CreateBucket("ckpt")
	fake := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	ts := httptest.NewUnstartedServer(requireKey(testKeyID, fake.Server()))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake that fails on purpose
	ts.StartTLS()
	defer ts.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600)
	cfg := Config{Endpoint: ts.URL, Bucket: "ckpt", AccessKeyID: testKeyID, SecretAccessKey: testSecret}

	err := mustNew(t, cfg).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Check of a private certificate without its CA: %v", err)
	}
	cfg.CAFile = caFile
	b := mustNew(t, cfg)
	if err := b.Check(context.Background()); err != nil {
		t.Fatalf("Check with the CA file: %v", err)
	}
	if err := b.Put(context.Background(), "objects/x", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	good := Config{Endpoint: "minio.internal:9000", Bucket: "ckpt"}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // in the error: what to do
	}{
		{"no bucket", func(c *Config) { c.Bucket = "" }, "set the bucket"},
		{"bucket as a URL", func(c *Config) { c.Bucket = "s3://ckpt/x" }, "not a URL"},
		{"plain HTTP URL without disabling TLS", func(c *Config) { c.Endpoint = "http://minio.internal:9000" }, "disable TLS explicitly"},
		{"https URL with TLS disabled", func(c *Config) { c.Endpoint = "https://minio.internal"; c.DisableTLS = true }, "remove one"},
		{"endpoint with a path", func(c *Config) { c.Endpoint = "https://minio.internal/ckpt" }, "no path"},
		{"host with a path", func(c *Config) { c.Endpoint = "minio.internal/ckpt" }, "host[:port]"},
		{"endpoint with a bad port", func(c *Config) { c.Endpoint = "minio.internal:port" }, "host[:port]"},
		{"endpoint of another scheme", func(c *Config) { c.Endpoint = "ftp://minio.internal" }, "https or http"},
		{"credentials in the endpoint", func(c *Config) { c.Endpoint = "https://AKIA:" + testSecret + "@minio.internal" }, "remove them"},
		{"credentials in a host", func(c *Config) { c.Endpoint = "AKIA:" + testSecret + "@minio.internal" }, "host[:port]"},
		{"unknown lookup", func(c *Config) { c.Lookup = "dns" }, "path, virtual-host"},
		{"CA file without TLS", func(c *Config) { c.CAFile = notPEM; c.DisableTLS = true }, "remove one"},
		{"CA file missing", func(c *Config) { c.CAFile = notPEM + ".missing" }, "CA file"},
		{"CA file without a certificate", func(c *Config) { c.CAFile = notPEM }, "no PEM certificate"},
		{"secret without key id", func(c *Config) { c.SecretAccessKey = testSecret }, "give both"},
		{"key id without secret", func(c *Config) { c.AccessKeyID = testKeyID }, "give both"},
		{"session token alone", func(c *Config) { c.SessionToken = testSecret }, "give both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want an error saying %q", err, tc.want)
			}
			noSecret(t, err)
		})
	}
	for _, ep := range []string{"", "s3.eu-west-1.amazonaws.com", "https://storage.googleapis.com", "127.0.0.1:9000", "[::1]:9000"} {
		cfg := good
		cfg.Endpoint = ep
		if _, err := New(cfg); err != nil {
			t.Errorf("New with endpoint %q: %v", ep, err)
		}
	}
	b := mustNew(t, Config{Endpoint: "minio.internal:9000", Bucket: "ckpt", Prefix: "a/b", AccessKeyID: testKeyID, SecretAccessKey: testSecret})
	if s := b.String(); s != "s3://ckpt/a/b/ (minio.internal:9000)" {
		t.Errorf("String: %q", s)
	}
}

// TestCheckpointsTravelThroughS3: a workspace saved on one host, as a
// named reference, is restored on another that shares only the bucket.
func TestCheckpointsTravelThroughS3(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("checkpoints are taken and restored on Linux only")
	}
	srv := newServer(t, testKeyID, "ckpt")
	cfg := srv.config("ckpt")
	cfg.Prefix = "perimeter"
	ctx := context.Background()

	open := func() *checkpoint.Store {
		s, err := checkpoint.Open(t.TempDir(), checkpoint.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	hostA, hostB := open(), open()
	ws := t.TempDir()
	write := func(p, content string, mode fs.FileMode) {
		t.Helper()
		os.MkdirAll(filepath.Join(ws, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(ws, p), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		write(fmt.Sprintf("src/pkg%d/file%d.go", i%7, i), fmt.Sprintf("package p%d // %d", i%7, i), 0o644)
	}
	write("bin/run.sh", "#!/bin/sh\necho hi\n", 0o755)
	write("data/big.bin", strings.Repeat("large file, streamed through S3 ", 40000), 0o600)
	os.MkdirAll(filepath.Join(ws, "empty"), 0o700)
	os.Symlink("../src/pkg1", filepath.Join(ws, "bin/link"))

	c1, err := hostA.Checkpoint(ctx, ws, checkpoint.Key{Session: "persist:repo", ToolUseID: "session a"})
	if err != nil {
		t.Fatal(err)
	}
	remote := mustNew(t, cfg)
	tr, err := hostA.PushRef(ctx, remote, checkpoint.Ref{Name: "repo", ID: c1.ID, SavedBy: "session a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first push: %+v", tr)

	// One file changes: the second push sends it and the manifests above
	// it (root, src, src/pkg3).
	write("src/pkg3/file3.go", "package p3 // changed", 0o644)
	c2, err := hostA.Checkpoint(ctx, ws, checkpoint.Key{Session: "persist:repo", ToolUseID: "session b"})
	if err != nil {
		t.Fatal(err)
	}
	tr, err = hostA.PushRef(ctx, remote, checkpoint.Ref{Name: "repo", ID: c2.ID, SavedBy: "session b"})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Copied != 4 {
		t.Errorf("second push: %+v, want 4 objects copied", tr)
	}

	pulled, tr, ok, err := hostB.PullRef(ctx, mustNew(t, cfg), "repo", checkpoint.Key{Session: "persist:repo", ToolUseID: "loaded"})
	if err != nil || !ok {
		t.Fatalf("PullRef: %v, %v", ok, err)
	}
	t.Logf("pull: %+v", tr)
	if pulled.ID != c2.ID || pulled.Files != c2.Files || pulled.Bytes != c2.Bytes {
		t.Fatalf("pulled %+v, want %+v", pulled, c2)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	if _, err := hostB.Restore(ctx, restored, pulled.ID); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tree(t, ws), tree(t, restored)); diff != "" {
		t.Fatalf("restored on host B (-saved +restored):\n%s", diff)
	}

	// A damaged object in the bucket is refused.
	sum := sha256.Sum256([]byte("package p3 // changed"))
	key := fmt.Sprintf("perimeter/objects/%x", sum)
	if _, err := srv.backend.PutObject("ckpt", key, map[string]string{}, bytes.NewReader([]byte("package p3 // CHANGED")), 21, nil); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = open().PullRef(ctx, remote, "repo", checkpoint.Key{Session: "s"})
	if !errors.Is(err, checkpoint.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("%x", sum)) {
		t.Fatalf("PullRef of a damaged object: %v, want ErrCorrupt naming it", err)
	}

	if _, _, ok, err := hostB.PullRef(ctx, remote, "no such key", checkpoint.Key{Session: "s"}); ok || err != nil {
		t.Fatalf("PullRef of a missing ref: %v, %v", ok, err)
	}
}

// tree describes every entry under root: type, permission bits, content
// or link target.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			out[rel] = "link " + target
			return err
		case d.IsDir():
			out[rel] = fmt.Sprintf("dir %o", info.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			out[rel] = fmt.Sprintf("file %o %x", info.Mode().Perm(), sha256.Sum256(b))
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
