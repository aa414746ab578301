// Command perimeter-sandboxd is `perimeter sandboxd` alone: the in-sandbox
// agent without the worker, control plane and exporters linked in, so it
// starts in a third of the time. `make build` builds it and embeds it in
// the perimeter binary, which installs it under the worker's state
// directory and starts it in every sandbox (see internal/sandboxbin); it is
// not shipped on its own.
//
// It takes the same command line as `perimeter sandboxd`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/perimeterhq/perimeter/internal/sandboxd"
	// Starts the persistent shell while the rest initialises; sandboxd
	// adopts it (see internal/shell).
	_ "github.com/perimeterhq/perimeter/internal/shell/prestart"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "sandboxd" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("perimeter sandboxd", flag.ContinueOnError)
	fs.SetOutput(os.Stderr) // standard output is the RPC channel
	var o sandboxd.MainOptions
	fs.StringVar(&o.EgressSocket, "egress-socket", "", "the session's egress proxy socket, bridged to --egress-listen inside the sandbox")
	fs.StringVar(&o.EgressListen, "egress-listen", sandboxd.DefaultEgressListen, "where the egress bridge listens inside the sandbox")
	workdir := fs.String("workdir", "", "directory the tools work in and the file tools are confined to (default /workspace if it exists, else the current directory)")
	maxFileBytes := fs.Int64("max-file-bytes", 0, "largest file read and edit load whole; 0 means 256 KiB, negative means no limit")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "perimeter sandboxd: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Workdir, o.MaxFileBytes = *workdir, *maxFileBytes
	if err := sandboxd.Main(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "perimeter sandboxd:", err)
		os.Exit(1)
	}
}
