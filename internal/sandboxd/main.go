package sandboxd

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// MainOptions configures [Main].
type MainOptions struct {
	// Workdir: empty means /workspace if it exists, else the current
	// directory.
	Workdir      string
	MaxFileBytes int64
	// EgressSocket, when set, is the session's egress proxy socket, which
	// sandboxd bridges to EgressListen inside the sandbox (see [Bridge]).
	EgressSocket string
	EgressListen string
}

// DefaultEgressListen is where the egress bridge listens in the sandbox.
const DefaultEgressListen = sandbox.EgressListen

// Main is the sandboxd process: it serves the RPC on the process's stdio
// with the process's own environment (which the worker built from an
// allow-list) as the tools' environment.
func Main(ctx context.Context, o MainOptions) error {
	workdir := o.Workdir
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
	if o.EgressSocket != "" {
		listen := o.EgressListen
		if listen == "" {
			listen = DefaultEgressListen
		}
		if _, err := Bridge(ctx, listen, o.EgressSocket); err != nil {
			return err
		}
	}
	err := Serve(ctx, os.Stdin, os.Stdout, Options{Workdir: workdir, MaxFileBytes: o.MaxFileBytes, Env: env})
	if ctx.Err() != nil {
		return nil
	}
	return err
}
