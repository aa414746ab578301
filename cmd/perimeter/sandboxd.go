package main

import (
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/sandboxd"
)

func newSandboxdCmd() *cobra.Command {
	var (
		workdir      string
		maxFileBytes int64
	)
	cmd := &cobra.Command{
		Use:   "sandboxd",
		Short: "The in-sandbox agent, started by the worker inside each sandbox (not run by hand)",
		Long: `sandboxd runs inside a sandbox and executes the tool calls the worker sends
it: newline-delimited JSON on its standard input, answers on its standard
output. The worker starts it; there is no reason to run it by hand.

Its tools get exactly the environment sandboxd was started with, which the
worker builds from an allow-list. Diagnostics go to standard error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workdir == "" {
				workdir = defaultSandboxdWorkdir()
			}
			// Standard output is the RPC channel: when the worker goes away,
			// a write to it must fail with EPIPE rather than kill sandboxd
			// before it has closed its tools. A handled signal (unlike an
			// ignored one) is reset to the default in the processes the
			// tools start, so pipelines in the shell behave normally.
			signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
			return ignoreCanceled(sandboxd.Serve(cmd.Context(), os.Stdin, os.Stdout, sandboxd.Options{
				Workdir:      workdir,
				MaxFileBytes: maxFileBytes,
				Env:          sandboxdEnviron(),
			}))
		},
	}
	// Help and usage must never reach standard output, the RPC channel.
	cmd.SetOut(os.Stderr)
	cmd.Flags().StringVar(&workdir, "workdir", "", "directory the tools work in and the file tools are confined to (default /workspace if it exists, else the current directory)")
	cmd.Flags().Int64Var(&maxFileBytes, "max-file-bytes", 0, "largest file read and edit load whole; 0 means 256 KiB, negative means no limit")
	return cmd
}

// defaultSandboxdWorkdir is /workspace, where isolating runtimes mount the
// session's files, or the current directory.
func defaultSandboxdWorkdir() string {
	if fi, err := os.Stat("/workspace"); err == nil && fi.IsDir() {
		return "/workspace"
	}
	return "."
}

// sandboxdEnviron is sandboxd's own environment, which the worker already built from
// an allow-list; the tools get exactly this.
func sandboxdEnviron() map[string]string {
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	return env
}
