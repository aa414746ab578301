package sqlitedb

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The database and the files SQLite keeps beside it are readable by their
// owner alone, under a permissive umask and when an earlier version left
// them world-readable.
func TestDatabaseFilesAreTheOwnersAlone(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o022))
	dir := t.TempDir()
	path := filepath.Join(dir, "x.db")
	use := func() {
		db, err := Open(path, 1000)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (v TEXT); INSERT INTO t VALUES ('secret output')`); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"x.db", "x.db-wal", "x.db-shm"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", name, fi.Mode().Perm())
			}
		}
	}
	use()
	// As an earlier version left them.
	for _, name := range []string{"x.db", "x.db-wal", "x.db-shm"} {
		if err := os.Chmod(filepath.Join(dir, name), 0o644); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	use()
}

func TestOpenRefusesAPathSQLiteWouldMisread(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "a?mode=ro"), 1000); err == nil {
		t.Fatal("a path with ? was opened")
	}
}
