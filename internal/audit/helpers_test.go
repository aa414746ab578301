package audit_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/audit"
)

// clock is a fake time source that moves one second per reading.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

func open(t testing.TB, dir string, opts audit.Options) *audit.Writer {
	t.Helper()
	if opts.Now == nil {
		opts.Now = newClock().Now
	}
	w, err := audit.Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return w
}

func mustAppend(t testing.TB, w *audit.Writer, r audit.Record) {
	t.Helper()
	if err := w.Append(context.Background(), r); err != nil {
		t.Fatalf("Append %+v: %v", r, err)
	}
}

// writeLog writes n tool_decision records and closes the log.
func writeLog(t testing.TB, dir string, n int, opts audit.Options) {
	t.Helper()
	w := open(t, dir, opts)
	for i := range n {
		mustAppend(t, w, audit.Record{SessionID: "sesn_1", ToolUseID: fmt.Sprintf("sevt_%02d", i+1),
			Data: audit.ToolDecision{Tool: "bash", InputSHA256: sha("input"), Decision: "allow", DecidedBy: "rule:r", Rule: "r"}})
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func file(dir string, n int) string { return filepath.Join(dir, fmt.Sprintf("audit-%06d.jsonl", n)) }

// lines reads a file as lines without their newlines.
func lines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) == 0 {
		return nil
	}
	return bytes.Split(b, []byte("\n"))
}

func writeLines(t testing.TB, path string, ls [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range ls {
		b = append(append(b, l...), '\n')
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rehash recomputes a line's hash the way doc.go says a verifier computes
// it: SHA-256 of the line with its last 75 bytes replaced by "}".
func rehash(line []byte) []byte {
	body := append(bytes.Clone(line[:len(line)-75]), '}')
	sum := sha256.Sum256(body)
	return append(body[:len(body)-1], []byte(`,"hash":"`+hex.EncodeToString(sum[:])+`"}`)...)
}

// field reads one top-level member of a line.
func field(t testing.TB, line []byte, name string) any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return m[name]
}

// setField replaces a top-level member of a line and re-encodes it in the
// writer's member order, keeping the old hash (an edit).
func setField(t testing.TB, line []byte, name string, v any) []byte {
	t.Helper()
	old, err := json.Marshal(field(t, line, name))
	if err != nil {
		t.Fatal(err)
	}
	repl, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	key := []byte(`"` + name + `":`)
	i := bytes.Index(line, append(key, old...))
	if i < 0 {
		t.Fatalf("%s: no %s%s", line, key, old)
	}
	return append(append(bytes.Clone(line[:i+len(key)]), repl...), line[i+len(key)+len(old):]...)
}
