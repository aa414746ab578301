package process_test

import (
	"testing"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/process"
	"github.com/perimeterhq/perimeter/internal/sandbox/sandboxtest"
)

// TestEscapeSuiteDetectsThatTheProcessRuntimeIsolatesNothing runs the escape
// suite inverted: the process runtime isolates nothing, so every attack that
// only isolation can stop must get through here (where the host lets the
// test process do it at all). That is the proof that each attack notices a
// missing protection, rather than passing on isolating backends by
// accident. The attacks sandboxd stops by itself — the environment
// allow-list, the file tools' path and symlink checks — must still be
// blocked.
func TestEscapeSuiteDetectsThatTheProcessRuntimeIsolatesNothing(t *testing.T) {
	sandboxtest.RunEscapes(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, process.Options{}) },
		sandboxtest.EscapeOptions{ExpectEscapes: true})
}
