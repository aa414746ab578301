// Package sqlitedb opens the SQLite databases Perimeter keeps on disk: the
// worker's call journal, the approvals store and the control plane's
// store. They hold tool outputs, decisions and session events, and the
// state directory they live in is searchable by any uid (sandboxes reach
// their workspaces through it), so only their owner may read them.
package sqlitedb

import (
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Open opens, creating it if needed, the database at path: in WAL mode,
// synchronous=NORMAL, waiting up to busyMillis for a lock, with the extra
// pragmas (say "foreign_keys(ON)"), on one connection, so that SQLite's
// single writer never meets SQLITE_BUSY from this process. Before SQLite
// opens it, the file is made 0600, whatever the umask or an earlier
// version left; SQLite gives its -wal and -shm files the database's mode.
func Open(path string, busyMillis int, pragmas ...string) (*sql.DB, error) {
	if err := private(path); err != nil {
		return nil, err
	}
	dsn := fmt.Sprintf("file:%s?_pragma=journal_mode(WAL)&_pragma=busy_timeout(%d)&_pragma=synchronous(NORMAL)", uriPath.Replace(path), busyMillis)
	for _, p := range pragmas {
		dsn += "&_pragma=" + p
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// uriPath escapes what SQLite's file: URIs would read as other than the
// path: SQLite opens the file private made, whatever its name.
var uriPath = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// private creates path empty with mode 0600, or sets that mode on the
// file and on the -wal and -shm files beside it.
func private(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	for _, side := range []string{path + "-wal", path + "-shm"} {
		if err == nil {
			if err = os.Chmod(side, 0o600); errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		}
	}
	return err
}
