package main

import (
	"context"
	"errors"
	"testing"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/secrets"
)

// A value the egress fetches is one the audit log refuses to hold, from
// the first fetch on; a value too short to tell from other text is not.
func TestFetchedSecretsAreForbiddenInTheAuditLog(t *testing.T) {
	w, err := audit.Open(t.TempDir(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	const token, short = "ghp_canary_0123456789", "abc"
	t.Setenv("PERIMETER_TEST_GITHUB_TOKEN", token)
	t.Setenv("PERIMETER_TEST_PIN", short)
	src := newForbidding(secrets.NewEnv(map[string]string{"github": "PERIMETER_TEST_GITHUB_TOKEN", "pin": "PERIMETER_TEST_PIN"}), w)

	record := func(v string) audit.Record {
		return audit.Record{Kind: "tool_result", Data: map[string]string{"output": "the token is " + v}}
	}
	if err := w.Append(ctx, record(token)); err != nil {
		t.Fatalf("before the value was fetched: %v", err)
	}
	for range 3 {
		if v, err := src.Get(ctx, "github"); err != nil || string(v) != token {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}
	if err := w.Append(ctx, record(token)); !errors.Is(err, audit.ErrSecret) {
		t.Errorf("a record holding a fetched value: %v, want ErrSecret", err)
	}
	if len(src.seen) != 1 {
		t.Errorf("%d values registered after fetching one three times, want 1", len(src.seen))
	}
	if _, err := src.Get(ctx, "pin"); err != nil {
		t.Fatal(err)
	}
	if err := w.Append(ctx, record(short)); err != nil {
		t.Errorf("a record holding a %d-byte value: %v, want it kept", len(short), err)
	}
	if _, err := src.Get(ctx, "missing"); err == nil {
		t.Error("a missing secret was returned")
	}
}
