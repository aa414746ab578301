package approval

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkBeforeCallAllowed is what the gate adds to every call a rule
// allows: evaluating the policy and recording the decision in SQLite
// before the call runs.
//
//	go test -run '^$' -bench BeforeCallAllowed ./internal/approval/
func BenchmarkBeforeCallAllowed(b *testing.B) {
	g := newGate(b, b.TempDir(), "1h", newReceiver(b))
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		if err := g.BeforeCall(ctx, call(fmt.Sprintf("sevt_%d", i), "read", `{"file_path":"a.txt"}`)); err != nil {
			b.Fatal(err)
		}
	}
}
