package process_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
)

// BenchmarkProcessSandboxExec is one tool call through a real sandboxd (the
// binary TestMain built): the worker-side Conn, the pipes, sandboxd's
// dispatch and the SDK tool inside it. "read" is a small file, so the cost
// is the hop itself; "bash" adds a `true` in sandboxd's persistent shell.
func BenchmarkProcessSandboxExec(b *testing.B) {
	for _, bc := range []struct{ name, tool, input string }{
		{"read", "read", `{"file_path":"small.txt"}`},
		{"bash", "bash", `{"command":"true"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sb := benchSandbox(b)
			call := sandbox.Call{Tool: bc.tool, Input: []byte(bc.input)}
			ctx := context.Background()
			if _, err := sb.Exec(ctx, call); err != nil { // starts the shell
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				res, err := sb.Exec(ctx, call)
				if err != nil || res.IsError {
					b.Fatalf("%s: %+v, %v", bc.tool, res, err)
				}
			}
		})
	}
}

// benchSandbox starts a sandboxd on a workspace holding small.txt.
func benchSandbox(b *testing.B) sandbox.Sandbox {
	b.Helper()
	ws := b.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "small.txt"), []byte("hello\nfrom\nperimeter\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt := process.New(process.Options{Binary: perimeterBin})
	sb, err := rt.Create(ctx, sandbox.Spec{Workspace: ws, Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sb.Close(context.Background()) })
	return sb
}
