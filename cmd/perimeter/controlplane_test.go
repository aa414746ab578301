package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A negative lease TTL is refused, not quietly replaced by the default.
func TestControlPlaneRefusesANegativeTTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	root := newRootCmd()
	root.SetArgs([]string{"controlplane", "--ttl=-5s", "--listen", "127.0.0.1:0", "--database", ":memory:", "--log-level", "error"})
	if err := root.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "--ttl -5s is negative") {
		t.Fatalf("err = %v, want the negative --ttl refused", err)
	}
}
