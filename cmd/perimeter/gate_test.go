package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Workers on one host may share a state directory and start together;
// every one of them must serve the token the file holds, or the CLI
// cannot reach some of them.
func TestWorkersStartingTogetherAgreeOnTheAdminToken(t *testing.T) {
	t.Setenv("PERIMETER_ADMIN_TOKEN", "")
	for range 20 {
		dir := t.TempDir()
		tokens := make([]string, 8)
		var wg sync.WaitGroup
		for i := range tokens {
			wg.Go(func() {
				tok, err := adminToken(dir)
				if err != nil {
					t.Error(err)
				}
				tokens[i] = tok
			})
		}
		wg.Wait()
		b, err := os.ReadFile(filepath.Join(dir, adminTokenFile))
		if err != nil {
			t.Fatal(err)
		}
		file := strings.TrimSpace(string(b))
		for i, tok := range tokens {
			if tok != file {
				t.Fatalf("worker %d serves token %q, the file holds %q", i, tok, file)
			}
		}
		if fi, err := os.Stat(filepath.Join(dir, adminTokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("token file: %v, %v; want mode 0600", fi.Mode(), err)
		}
	}
}

func TestAnEmptyAdminTokenFileIsReplaced(t *testing.T) {
	t.Setenv("PERIMETER_ADMIN_TOKEN", "")
	dir := t.TempDir()
	path := filepath.Join(dir, adminTokenFile)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := adminToken(dir)
	if err != nil || !strings.HasPrefix(tok, "pat_") {
		t.Fatalf("token: %q, %v", tok, err)
	}
	if again, err := adminToken(dir); err != nil || again != tok {
		t.Errorf("second start: %q, %v; want %q", again, err, tok)
	}
}

// A --token-file given on the command line is the token the operator
// chose: it wins over $PERIMETER_ADMIN_TOKEN, as every flag wins over the
// environment.
func TestAnExplicitTokenFileWinsOverTheEnvironment(t *testing.T) {
	t.Setenv("PERIMETER_ADMIN_TOKEN", "pat_from_env")
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("pat_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := clientAdminToken(file, t.TempDir()); err != nil || tok != "pat_from_file" {
		t.Errorf("with --token-file: %q, %v; want pat_from_file", tok, err)
	}
	if tok, err := clientAdminToken("", t.TempDir()); err != nil || tok != "pat_from_env" {
		t.Errorf("without --token-file: %q, %v; want pat_from_env", tok, err)
	}
}
