package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/perimeterhq/perimeter/internal/image/imagetest"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// Doctor's "works" holds for the worker only if its sandboxes start what
// the worker's do: the slim sandboxd the worker installs in its state
// directory, not the perimeter binary doctor runs as.
func TestDoctorProvesEachRuntimeWithTheSandboxdTheWorkerRuns(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (bwrap then runs sandboxes as an unprivileged uid)")
	bin := testenv.Binary(t)
	cli := imagetest.Engine(t)
	img := imagetest.Image(t)

	// A state directory the unprivileged uid bwrap runs as cannot reach
	// (t.TempDir's parents are 0700): a worker there cannot start bwrap
	// sandboxes, and doctor must say so. The engine mounts the binary
	// into docker sandboxes whatever the directories above it.
	state := filepath.Join(t.TempDir(), "state")
	worker := "test-doctor-" + randomHex(4)
	config := filepath.Join(t.TempDir(), "perimeter.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, "version: 1\nworker:\n  id: %s\nsandbox:\n  image: %s\n", worker, img), 0o600); err != nil {
		t.Fatal(err)
	}

	// The host path each docker sandbox of this worker runs as sandboxd.
	ctx, cancel := context.WithCancel(context.Background())
	msgs, errs := cli.Events(ctx, events.ListOptions{
		Since: fmt.Sprint(time.Now().Unix() - 1),
		Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("event", string(events.ActionCreate)),
			filters.Arg("label", sandbox.LabelWorker+"="+worker),
		),
	})
	var (
		mu      sync.Mutex // guards mounted
		mounted []string
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case m := <-msgs:
				ins, err := cli.ContainerInspect(ctx, m.Actor.ID)
				if err != nil {
					t.Errorf("inspect the sandbox container %s: %v", m.Actor.ID, err)
					continue
				}
				for _, mt := range ins.Mounts {
					if mt.Destination == "/opt/perimeter/perimeter" {
						mu.Lock()
						mounted = append(mounted, ins.HostConfig.Runtime+": "+mt.Source)
						mu.Unlock()
					}
				}
			case <-errs:
				return
			}
		}
	}()

	var out bytes.Buffer
	cmd := exec.Command(bin, "doctor", "--config", config, "--state-dir", state)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	// Let the engine's last create event arrive.
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	t.Logf("perimeter doctor: %v\n%s", err, out.String())

	installed, _ := filepath.Glob(filepath.Join(state, "bin", "perimeter-sandboxd-*"))
	if len(installed) != 1 {
		t.Fatalf("installed sandboxd binaries: %q, want the one slim build", installed)
	}
	if !strings.Contains(out.String(), installed[0]) {
		t.Errorf("doctor does not name the sandboxd it starts, %s", installed[0])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(mounted) != 2 {
		t.Errorf("docker sandboxes started by doctor: %q, want one under runsc and one under runc", mounted)
	}
	for _, m := range mounted {
		if _, src, _ := strings.Cut(m, ": "); src != installed[0] {
			t.Errorf("a docker sandbox ran %s as sandboxd, want the worker's %s", m, installed[0])
		}
	}
	_, bwrap, _ := strings.Cut(out.String(), "\nbwrap\n")
	bwrap, _, _ = strings.Cut(bwrap, "\ncheckpoints\n")
	if strings.Contains(bwrap, "\u2713") && strings.Contains(bwrap, "works") && !strings.Contains(bwrap, "\u2717") {
		t.Errorf("doctor says bwrap works, but its sandbox user cannot reach the worker's sandboxd in %s:\n%s", state, bwrap)
	}
}

// Under a hardened umask (027) doctor makes the state directory as the
// worker does, so it finds bwrap working where the worker will.
func TestDoctorMakesTheStateDirectoryAsTheWorkerDoes(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root (bwrap then runs sandboxes as an unprivileged uid)")
	_, err := exec.LookPath("bwrap")
	testenv.Need(t, err == nil, "bubblewrap (apt-get install bubblewrap)")
	// Made 0700, as a state directory created under umask 077 would be.
	state := testenv.ShortDir(t)
	config := filepath.Join(t.TempDir(), "perimeter.yaml")
	if err := os.WriteFile(config, []byte("version: 1\nsandbox:\n  image: "+imagetest.Image(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.Binary(t), "doctor", "--config", config, "--state-dir", state)
	old := syscall.Umask(0o027)
	out, err := cmd.CombinedOutput()
	syscall.Umask(old)
	_, bwrap, _ := strings.Cut(string(out), "\nbwrap\n")
	bwrap, _, _ = strings.Cut(bwrap, "\ncheckpoints\n")
	if !regexp.MustCompile("\u2713 +works").MatchString(bwrap) {
		t.Errorf("doctor (%v) finds bwrap not working under umask 027:\n%s", err, out)
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("state directory: %v, %v; want mode 0711", fi.Mode(), err)
	}
}
