package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/sandboxd"
)

func newSandboxdCmd() *cobra.Command {
	var o sandboxd.MainOptions
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
			return sandboxd.Main(cmd.Context(), o)
		},
	}
	// Help and usage must never reach standard output, the RPC channel.
	cmd.SetOut(os.Stderr)
	cmd.Flags().StringVar(&o.EgressSocket, "egress-socket", "", "the session's egress proxy socket, bridged to --egress-listen inside the sandbox")
	cmd.Flags().StringVar(&o.EgressListen, "egress-listen", sandboxd.DefaultEgressListen, "where the egress bridge listens inside the sandbox")
	cmd.Flags().StringVar(&o.Workdir, "workdir", "", "directory the tools work in and the file tools are confined to (default /workspace if it exists, else the current directory)")
	cmd.Flags().Int64Var(&o.MaxFileBytes, "max-file-bytes", 0, "largest file read and edit load whole; 0 means 256 KiB, negative means no limit")
	return cmd
}
