package docker_test

import (
	"context"
	"testing"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// BenchmarkCreateExecClose measures a sandbox's life: start to sandboxd's
// hello, one bash call, stop and removal.
//
//	go test -run '^$' -bench CreateExecClose -benchtime 5x ./internal/sandbox/docker/
func BenchmarkCreateExecClose(b *testing.B) {
	for _, oci := range ociRuntimes {
		b.Run(oci, func(b *testing.B) {
			rt := newRuntime(b, oci)
			ctx := context.Background()
			for b.Loop() {
				sb, err := rt.Create(ctx, sandbox.Spec{Workspace: b.TempDir(), Env: map[string]string{"PATH": "/usr/bin:/bin"}})
				if err != nil {
					b.Fatal(err)
				}
				res, err := sb.Exec(ctx, sandbox.Call{Tool: "bash", Input: []byte(`{"command":"echo ok"}`)})
				if err != nil || res.IsError {
					b.Fatalf("exec: %+v, %v", res, err)
				}
				if err := sb.Close(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
