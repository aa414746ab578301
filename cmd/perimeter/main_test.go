package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// A first SIGTERM asks for a graceful stop; a second one, sent while the
// stop is still under way, ends the process at once.
func TestASecondSignalEndsTheProcess(t *testing.T) {
	if os.Getenv("PERIMETER_TEST_STOPPING") == "1" {
		ctx, stop := stopContext()
		defer stop()
		os.Stdout.WriteString("ready\n")
		<-ctx.Done()
		os.Stdout.WriteString("stopping\n")
		time.Sleep(time.Minute) // a drain that does not end
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestASecondSignalEndsTheProcess$")
	cmd.Env = append(os.Environ(), "PERIMETER_TEST_STOPPING=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	expect := func(line string) {
		t.Helper()
		buf := make([]byte, len(line)+1)
		if _, err := io.ReadFull(out, buf); err != nil || string(buf) != line+"\n" {
			t.Fatalf("child said %q, %v; want %q", buf, err, line)
		}
	}
	expect("ready")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expect("stopping")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The handler may not be released yet the instant "stopping" is
	// printed; signal until the process ends, or give up.
	deadline := time.After(20 * time.Second)
	for {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
				t.Fatalf("child ended with %v, want killed by SIGTERM", err)
			}
			return
		case <-deadline:
			t.Fatal("a second SIGTERM did not end the process")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pflag takes a `quoted` word in a flag's usage as the name of its value:
// every flag's help must show a one-word value name, not half a sentence.
func TestEveryFlagsHelpNamesItsValueInOneWord(t *testing.T) {
	var visit func(*cobra.Command)
	visit = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if name, _ := pflag.UnquoteUsage(f); strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s: help shows its value as %q", c.CommandPath(), f.Name, name)
			}
		})
		for _, sub := range c.Commands() {
			visit(sub)
		}
	}
	visit(newRootCmd())
}

// PERIMETER_CONFIG names the config file of every command run without
// --config (the worker image sets it); --config wins over it.
func TestThePerimeterConfigVariableNamesTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	fromEnv, fromFlag := filepath.Join(dir, "env-state"), filepath.Join(dir, "flag-state")
	for name, state := range map[string]string{"env.yaml": fromEnv, "flag.yaml": fromFlag} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("version: 1\nworker:\n  state_dir: "+state+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) string {
		cmd := exec.Command(testenv.Binary(t), append([]string{"audit", "verify"}, args...)...)
		cmd.Env = append(os.Environ(), "PERIMETER_CONFIG="+filepath.Join(dir, "env.yaml"))
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := run(); !strings.Contains(out, filepath.Join(fromEnv, "audit")) {
		t.Errorf("without --config, audit verify did not read $PERIMETER_CONFIG's state_dir %s:\n%s", fromEnv, out)
	}
	if out := run("--config", filepath.Join(dir, "flag.yaml")); !strings.Contains(out, filepath.Join(fromFlag, "audit")) {
		t.Errorf("--config did not win over $PERIMETER_CONFIG:\n%s", out)
	}
}
