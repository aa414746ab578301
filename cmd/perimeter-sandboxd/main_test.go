package main_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestTheShellStartsBeforeTheSDKInitialises: the slim sandboxd's point is
// a short start, and it starts its persistent shell from a package
// initialised before the SDK's (the largest); its bash tool adopts it
// (tested in internal/sandboxd). Go's own trace of package initialisation
// gives the order.
func TestTheShellStartsBeforeTheSDKInitialises(t *testing.T) {
	ws := t.TempDir()
	cmd := exec.Command(testenv.Sandboxd(t), "sandboxd", "--workdir", ws)
	cmd.Dir = ws
	cmd.Env = []string{"PATH=/usr/bin:/bin", "GODEBUG=inittrace=1"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr // stdin: /dev/null, so it ends at once
	if err := cmd.Run(); err != nil {
		t.Fatalf("sandboxd: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), `"hello"`) {
		t.Errorf("no hello on stdout: %q", stdout.String())
	}
	order := map[string]int{}
	sc := bufio.NewScanner(&stderr)
	for i := 0; sc.Scan(); i++ {
		if f := strings.Fields(sc.Text()); len(f) > 1 && f[0] == "init" {
			order[f[1]] = i
		}
	}
	const prestart, sdk = "github.com/perimeterhq/perimeter/internal/shell/prestart", "github.com/anthropics/anthropic-sdk-go/v2"
	p, okP := order[prestart]
	s, okS := order[sdk]
	if !okP || !okS {
		t.Fatalf("init trace lacks %s or %s:\n%s", prestart, sdk, stderr.String())
	}
	if p > s {
		t.Errorf("the shell starts after the SDK initialises (init #%d, SDK #%d)", p, s)
	}
}
