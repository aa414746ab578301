package bwrap_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/bwrap"
)

// BenchmarkCreateExecClose measures a sandbox's life: start to sandboxd's
// hello, the first bash call (the persistent shell's start included), stop
// and removal. It reports the first two phases separately, with the slim
// sandboxd the worker runs and with the whole perimeter binary as sandboxd.
//
//	go test -run '^$' -bench CreateExecClose -benchtime 20x ./internal/sandbox/bwrap/
func BenchmarkCreateExecClose(b *testing.B) {
	b.Run("slim", func(b *testing.B) { benchCreateExecClose(b, slimBinary(b)) })
	b.Run("perimeter", func(b *testing.B) { benchCreateExecClose(b, binary(b)) })
}

func benchCreateExecClose(b *testing.B, bin string) {
	rt := searchable{newRuntime(b, bwrap.Options{Binary: bin})}
	ctx := context.Background()
	var create, first time.Duration
	for b.Loop() {
		ws, err := os.MkdirTemp(sharedDir, "ws-")
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		sb, err := rt.Create(ctx, sandbox.Spec{Workspace: ws, Env: map[string]string{"PATH": "/usr/bin:/bin"}})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		res, err := sb.Exec(ctx, sandbox.Call{Tool: "bash", Input: []byte(`{"command":"true"}`)})
		if err != nil || res.IsError {
			b.Fatalf("exec: %+v, %v", res, err)
		}
		create += t1.Sub(t0)
		first += time.Since(t1)
		if err := sb.Close(ctx); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(ws)
	}
	b.ReportMetric(float64(create.Microseconds())/float64(b.N)/1000, "ms-to-hello/op")
	b.ReportMetric(float64(first.Microseconds())/float64(b.N)/1000, "ms-first-call/op")
}
