package docker_test

import (
	"testing"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/sandboxtest"
)

// The escape suite against both OCI runtimes, with a bounded workspace so
// the disk-filling attack meets a limit too.
func TestEscapesRunc(t *testing.T) {
	sandboxtest.RunEscapes(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, "runc") },
		sandboxtest.EscapeOptions{Limits: sandbox.Limits{WorkspaceBytes: 64 << 20}})
}

func TestEscapesRunsc(t *testing.T) {
	sandboxtest.RunEscapes(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, "runsc") },
		sandboxtest.EscapeOptions{
			// No workspace bound here: under runsc and load, handing a
			// loop-mounted workspace back at Close has failed with "mount
			// point busy"; the bound is exercised under runc.
			Accept: map[string]string{
				"Unshare": "gVisor emulates user namespaces inside its own kernel: the namespace the sandbox creates is gVisor's, not the host's, and grants nothing on the host",
			},
		})
}
