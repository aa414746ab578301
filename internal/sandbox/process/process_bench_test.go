package process_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
)

// benchCalls are the calls both benchmarks make: "read" of a small file,
// whose cost is mostly the path to the tool, and "bash" `true` in the
// session's persistent shell.
var benchCalls = []struct{ name, tool, input string }{
	{"read", "read", `{"file_path":"small.txt"}`},
	{"bash", "bash", `{"command":"true"}`},
}

// BenchmarkProcessSandboxExec is one tool call through a real sandboxd (the
// binary TestMain built): the worker-side Conn, the pipes, sandboxd's
// dispatch and the SDK tool inside it. Compare BenchmarkSDKToolInProcess.
func BenchmarkProcessSandboxExec(b *testing.B) {
	for _, bc := range benchCalls {
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

// BenchmarkSDKToolInProcess is the same calls on the SDK's tools called
// directly, as the SDK's own EnvironmentWorker runs them: the baseline that
// BenchmarkProcessSandboxExec adds the sandbox hop to.
func BenchmarkSDKToolInProcess(b *testing.B) {
	ws := benchWorkspace(b)
	tools := agenttoolset.BetaAgentToolset20260401(&agenttoolset.AgentToolContext{
		Workdir: ws, Env: map[string]string{"PATH": "/usr/bin:/bin"},
	})
	b.Cleanup(func() { agenttoolset.CloseAll(tools) })
	for _, bc := range benchCalls {
		b.Run(bc.name, func(b *testing.B) {
			i := slices.IndexFunc(tools, func(t anthropic.BetaTool) bool { return t.Name() == bc.tool })
			if i < 0 {
				b.Fatalf("no %s tool", bc.tool)
			}
			tool, ctx := tools[i], context.Background()
			if _, err := tool.Execute(ctx, []byte(bc.input)); err != nil { // starts the shell
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tool.Execute(ctx, []byte(bc.input)); err != nil {
					b.Fatalf("%s: %v", bc.tool, err)
				}
			}
		})
	}
}

// benchWorkspace is a workspace holding small.txt.
func benchWorkspace(b *testing.B) string {
	b.Helper()
	ws := b.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "small.txt"), []byte("hello\nfrom\nperimeter\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return ws
}

// benchSandbox starts a sandboxd on a workspace holding small.txt.
func benchSandbox(b *testing.B) sandbox.Sandbox {
	b.Helper()
	ws := benchWorkspace(b)
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
