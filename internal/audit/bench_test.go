package audit_test

import (
	"context"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/audit"
)

// BenchmarkAppend measures one record of a typical size: fsynced before
// Append returns (with the head anchor moved each time), and fsynced in the
// background every 100ms. Parallel runs show how appends from many sessions
// share the one lock.
func BenchmarkAppend(b *testing.B) {
	rec := audit.Record{SessionID: "sesn_011CZkZrF1SNWGh7NsGRd9Rb", WorkID: "work_01J8", ToolUseID: "sevt_011CZkZrF1SNWGh7NsGRd9Rb",
		Data: audit.EgressRequest{Method: "GET", Host: "api.github.com", Port: 443, Rule: "github", Status: 200, BytesOut: 512, BytesIn: 18324, DurationMS: 84}}
	for _, bc := range []struct {
		name string
		opts audit.Options
	}{
		{"sync=each", audit.Options{}},
		{"sync=100ms", audit.Options{SyncInterval: 100 * time.Millisecond}},
	} {
		run := func(b *testing.B, parallel bool) {
			w, err := audit.Open(b.TempDir(), bc.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			ctx := context.Background()
			b.ReportAllocs()
			if parallel {
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := w.Append(ctx, rec); err != nil {
							b.Error(err)
							return
						}
					}
				})
				return
			}
			for b.Loop() {
				if err := w.Append(ctx, rec); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.Run(bc.name, func(b *testing.B) { run(b, false) })
		b.Run(bc.name+"/parallel", func(b *testing.B) { run(b, true) })
	}
}
