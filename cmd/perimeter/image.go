package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/image"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and pin the sandbox image of the docker runtimes",
		Long: `The docker runtimes start every sandbox from one image, configured pinned:
an image ID (sha256:…) or name@sha256:…, never a mutable tag.

  perimeter image build            build it (root, debootstrap) and print its ID
  perimeter image resolve TAG      print the pinned form of an image the engine has`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newImageBuildCmd(g), newImageResolveCmd())
	return cmd
}

func newImageBuildCmd(g *globals) *cobra.Command {
	var opts image.Options
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the sandbox image with debootstrap and print its pinned ID",
		Long: `build makes a Debian root file system with debootstrap (minbase, plus bash,
coreutils, git, python3, ripgrep and the other base packages, plus
--packages), adds the sandbox user (uid 1000, home /home/sandbox) and the
/workspace and /opt/perimeter mount points, imports it into the Docker engine
and tags it. It prints the image ID, sha256:…, which is the value to
configure as the sandbox image: an image that never came from a registry has
no repository digest, so its ID is its pinned reference.

An image of the same recipe (suite and packages) is reused unless --rebuild.
Building needs root, debootstrap (apt-get install debootstrap) and access to
the Debian mirror; the result needs neither.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			opts.Logger = log
			id, err := image.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Tag, "tag", "", "tag for the image (default "+image.DefaultRepository+":<suite>)")
	f.StringVar(&opts.Suite, "suite", image.DefaultSuite, "Debian release to build from")
	f.StringVar(&opts.Mirror, "mirror", image.DefaultMirror, "Debian mirror debootstrap downloads from")
	f.StringSliceVar(&opts.Packages, "packages", nil, "Debian packages to install in addition to the base set (comma-separated)")
	f.BoolVar(&opts.Rebuild, "rebuild", false, "build even if an image of the same recipe exists")
	f.StringVar(&opts.WorkDir, "work-dir", "", "directory to assemble the root file system in (default the system temporary directory)")
	return cmd
}

func newImageResolveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resolve REF",
		Short: "Print the pinned form (sha256:… or name@sha256:…) of an image the engine has",
		Long: `resolve prints the reference to configure for REF: its repository digest
(name@sha256:…) when it came from a registry, else its image ID (sha256:…).
An already pinned REF is printed as it is, once the engine is known to have it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pinned, err := image.Resolve(cmd.Context(), nil, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), pinned)
			return nil
		},
	}
}
