package sqlitedb

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The database and the files SQLite keeps beside it are readable by their
// owner alone, under a permissive umask and when an earlier version left
// them world-readable; and they are the files at the path given, whatever
// characters a file: URI reads otherwise.
func TestDatabaseFilesAreTheOwnersAlone(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o022))
	dir := filepath.Join(t.TempDir(), "st%41te?#x")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "x.db")
	files := []string{path, path + "-wal", path + "-shm"}
	first, err := Open(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Exec(`CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('secret output')`); err != nil {
		t.Fatal(err)
	}
	wantPrivate := func(when string) {
		t.Helper()
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %s has mode %v, want 0600", when, filepath.Base(f), fi.Mode().Perm())
			}
		}
	}
	wantPrivate("first open")
	// As an earlier version left them, while the first connection keeps
	// the -wal and -shm files in place.
	for _, f := range files {
		if err := os.Chmod(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	second, err := Open(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var v string
	if err := second.QueryRow(`SELECT v FROM t`).Scan(&v); err != nil || v != "secret output" {
		t.Fatalf("second open reads %q, %v: not the first's database", v, err)
	}
	wantPrivate("second open")
	if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 1 {
		t.Errorf("%d entries beside the state directory, want 1: SQLite opened another path", len(entries))
	}
}
