package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres returns the URL of a fresh PostgreSQL database, dropped when
// the test ends. The server is $PERIMETER_TEST_POSTGRES_URL (a URL of any
// database the user may create databases from), by default the local
// server's socket as the current user (scripts/test-deps.sh sets one up).
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("PERIMETER_TEST_POSTGRES_URL")
	if admin == "" {
		admin = "postgres:///postgres?host=/var/run/postgresql"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	Need(t, err == nil, fmt.Sprintf("a PostgreSQL server at %s (run scripts/test-deps.sh as root, or set PERIMETER_TEST_POSTGRES_URL): %v", admin, err))
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "perimeter_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, admin); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
