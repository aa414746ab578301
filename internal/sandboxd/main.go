package sandboxd

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Main is the sandboxd process: it serves the RPC on the process's stdio
// with the process's own environment (which the worker built from an
// allow-list) as the tools' environment. An empty workdir means
// /workspace if it exists, else the current directory.
func Main(ctx context.Context, workdir string, maxFileBytes int64) error {
	if workdir == "" {
		workdir = "."
		if fi, err := os.Stat("/workspace"); err == nil && fi.IsDir() {
			workdir = "/workspace"
		}
	}
	// Standard output is the RPC channel: when the worker goes away, a
	// write to it must fail with EPIPE rather than kill sandboxd before it
	// has closed its tools. A handled signal (unlike an ignored one) is
	// reset to the default in the processes the tools start, so pipelines
	// in the shell behave normally.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	err := Serve(ctx, os.Stdin, os.Stdout, Options{Workdir: workdir, MaxFileBytes: maxFileBytes, Env: env})
	if ctx.Err() != nil {
		return nil
	}
	return err
}
