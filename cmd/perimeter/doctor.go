package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/worker"
)

func newDoctorCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Report which sandbox runtimes this host supports, and why not",
		Long: `Checks every sandbox runtime on this host: whether its prerequisites are
there (the Docker engine and its OCI runtimes, bubblewrap, cgroup controllers
for memory and process limits, the sandbox image) and whether a sandbox really
starts and runs a command. Sandboxes start the sandboxd a worker with the same
state directory starts (the slim build it installs there), so a runtime that
works here works for that worker. Prints which runtime a worker with no
runtime configured would pick. Exits non-zero when no isolating runtime works.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The worker's settings as a worker with these flags has them.
			cfg, err := resolveConfig(cmd, stateDir)
			if err != nil {
				return err
			}
			return runDoctor(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "the worker's state directory, where it installs the sandboxd its sandboxes start (default ./perimeter-state)")
	return cmd
}

func runDoctor(ctx context.Context, cfg *config.Config, out io.Writer) error {
	log := slog.New(slog.DiscardHandler)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	pick := ""
	// The sandboxd the worker starts: a runtime that works only with
	// another binary (say one its sandbox user cannot reach) does not work.
	fmt.Fprintf(tw, "sandboxd\n")
	// The state directory as the worker makes it: sandboxes reach their
	// sandboxd and the probes' workspaces through it.
	binErr := worker.PrepareStateDir(cfg.Worker.StateDir)
	var bin string
	if binErr == nil {
		bin, binErr = sandboxdBinary(cfg.Worker.StateDir)
	}
	switch {
	case binErr != nil:
		fmt.Fprintf(tw, "  \u2717\tinstalled\t%v\n", binErr)
	case bin == "":
		fmt.Fprintf(tw, "  \u2713\tbinary\tthis executable (built without the slim sandboxd; make build embeds it)\n")
	default:
		fmt.Fprintf(tw, "  \u2713\tbinary\t%s\n", bin)
	}
	for _, name := range strongestFirst {
		fmt.Fprintf(tw, "%s\n", name)
		if binErr != nil {
			fmt.Fprintf(tw, "  \u2717\tavailable\tno sandboxd to start: %v\n", binErr)
			continue
		}
		rt, err := newRuntime(ctx, name, bin, cfg, log)
		if err != nil {
			fmt.Fprintf(tw, "  \u2717\tavailable\t%v\n", err)
			continue
		}
		if d, ok := rt.(interface {
			Doctor(context.Context) []sandbox.Check
		}); ok {
			for _, c := range d.Doctor(ctx) {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark(c.OK), c.Name, c.Detail)
			}
		}
		perr := probe(ctx, rt, cfg)
		detail := "started a sandbox and ran a command in it"
		if perr != nil {
			detail = perr.Error()
		} else if pick == "" {
			pick = name
		}
		fmt.Fprintf(tw, "  %s\tworks\t%s\n", mark(perr == nil), detail)
		if c, ok := rt.(io.Closer); ok {
			c.Close()
		}
	}
	fmt.Fprintf(tw, "checkpoints\n")
	ok, detail := checkpoint.ChangeTracking()
	fmt.Fprintf(tw, "  %s\tchange tracking\t%s\n", mark(ok), detail)
	tw.Flush()
	if pick == "" {
		fmt.Fprintln(out, "\nNo isolating runtime works on this host. Install Docker (with gVisor's runsc for the strongest isolation) or bubblewrap; see scripts/test-deps.sh.")
		return fmt.Errorf("no isolating sandbox runtime works on this host")
	}
	fmt.Fprintf(out, "\nA worker with no sandbox.runtime configured would use: %s\n", pick)
	return nil
}

func mark(ok bool) string {
	if ok {
		return "\u2713"
	}
	return "\u2717"
}
