package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestShippedScenariosPassOnEveryIsolatingRuntime runs scenarios through
// the real worker on each isolating backend.
func TestShippedScenariosPassOnEveryIsolatingRuntime(t *testing.T) {
	for _, tc := range []struct {
		runtime   string
		scenarios []string
		needs     func() (bool, string)
	}{
		{"docker", []string{"quickstart", "errors", "custom-tools"}, dockerReady},
		// Debian's gVisor (2022) rejects bookworm coreutils' statx, so `ls`
		// and `stat` fail under it; this scenario avoids them.
		{"docker-runsc", []string{"e2e-slow"}, dockerReady},
		{"bwrap", []string{"quickstart", "errors", "custom-tools"}, bwrapReady},
	} {
		t.Run(tc.runtime, func(t *testing.T) {
			ok, what := tc.needs()
			testenv.Need(t, ok, what)
			cp := startControlPlane(t, t.TempDir(), "")
			op := operator(cp.url)
			state := stateDir(t)
			workerID := "e2e-" + tc.runtime + "-" + filepathBase(state)
			w := startWorkerEnv(t, cp.url, state, nil, "--runtime", tc.runtime, "--worker-id", workerID)
			ids := map[string]string{}
			for _, name := range tc.scenarios {
				ids[name] = newSession(t, op, name)
			}
			for name, id := range ids {
				t.Run(name, func(t *testing.T) { waitPassed(t, op, id) })
			}
			w.stop(t)
			checkSlimSandboxd(t, state, w.out.String())
			noContainersOf(t, workerID)
		})
	}
}

// checkSlimSandboxd checks that the worker installed the slim sandboxd the
// binary embeds (as `make build` and testenv.Binary build it) in its state
// directory and started its sandboxes with it.
func checkSlimSandboxd(t *testing.T, state, log string) {
	t.Helper()
	want, err := os.ReadFile(testenv.Sandboxd(t))
	if err != nil {
		t.Fatal(err)
	}
	installed, _ := filepath.Glob(filepath.Join(state, "bin", "perimeter-sandboxd-*"))
	if len(installed) != 1 {
		t.Fatalf("installed sandboxd binaries: %v, want one", installed)
	}
	if got, err := os.ReadFile(installed[0]); err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s is not the slim build (%v)", installed[0], err)
	}
	if !strings.Contains(log, "sandboxes run the slim sandboxd") || !strings.Contains(log, installed[0]) {
		t.Errorf("worker log does not name the slim sandboxd %s", installed[0])
	}
}

func dockerReady() (bool, string) {
	if exec.Command("docker", "image", "inspect", "perimeter-sandbox:bookworm").Run() != nil {
		return false, "a Docker engine with the sandbox image (run scripts/test-deps.sh and perimeter image build as root)"
	}
	return true, ""
}

// onIsolatingRuntimes runs test once per isolating runtime, bwrap and
// docker, as a subtest that needs the runtime.
func onIsolatingRuntimes(t *testing.T, test func(t *testing.T, runtime string)) {
	for _, rt := range []struct {
		name  string
		ready func() (bool, string)
	}{{"bwrap", bwrapReady}, {"docker", dockerReady}} {
		t.Run(rt.name, func(t *testing.T) {
			ok, what := rt.ready()
			testenv.Need(t, ok, what)
			test(t, rt.name)
		})
	}
}

// stateDir is a worker state directory under $TMPDIR, removed at the end.
// Not t.TempDir: its parents are 0700, and a bwrap sandbox under a root
// worker runs as an unprivileged uid that must reach its workspace.
func stateDir(t *testing.T) string {
	t.Helper()
	return testenv.ShortDir(t)
}

func bwrapReady() (bool, string) {
	if exec.Command("bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true").Run() != nil {
		return false, "bubblewrap able to create namespaces (apt-get install bubblewrap)"
	}
	return true, ""
}

func filepathBase(p string) string { return p[strings.LastIndex(p, "/")+1:] }

// stop stops the worker as an operator does, with SIGTERM, and wants it
// to exit 0 within a minute: it closes its sandboxes on the way out, where
// the SIGKILL of the test's cleanup would leave them behind.
func (w *worker) stop(t *testing.T) {
	t.Helper()
	w.signal(sigterm)
	if code := w.wait(60 * time.Second); code != 0 {
		t.Errorf("worker exited %d", code)
	}
}

// noContainersOf wants no container of workerID left in the Docker engine
// (none is expected where Docker is absent), and removes any it finds.
func noContainersOf(t *testing.T, workerID string) {
	t.Helper()
	if ids := containersOf(workerID); len(ids) > 0 {
		t.Errorf("containers of worker %s left behind: %v", workerID, ids)
		removeContainers(ids)
	}
}

// containersOf lists the Docker containers labelled with workerID, none
// where Docker is absent.
func containersOf(workerID string) []string {
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=dev.perimeter.worker="+workerID).Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

func removeContainers(ids []string) {
	if len(ids) > 0 {
		_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
	}
}

// TestAWarmPoolSandboxServesASessionOnDocker hands a session a sandbox the
// pool started before the session existed, and the session runs in it.
func TestAWarmPoolSandboxServesASessionOnDocker(t *testing.T) {
	ok, what := dockerReady()
	testenv.Need(t, ok, what)
	cfg := filepath.Join(t.TempDir(), "pool.yaml")
	if err := os.WriteFile(cfg, []byte("version: 1\nsandbox:\n  warm_pool: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := stateDir(t)
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	w := startWorkerEnv(t, cp.url, state, nil, "--config", cfg, "--runtime", "docker", "--worker-id", "e2e-pool-"+filepathBase(state))
	w.waitLog(regexp.MustCompile(`warm sandbox ready`))
	waitPassed(t, op, newSession(t, op, "quickstart"))
	w.waitLog(regexp.MustCompile(`handed out a warm sandbox`))
	w.stop(t)
	noContainersOf(t, "e2e-pool-"+filepathBase(state))
}
