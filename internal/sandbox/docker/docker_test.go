package docker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/image/imagetest"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandbox/docker"
	"github.com/perimeterhq/perimeter/internal/sandbox/pool"
	"github.com/perimeterhq/perimeter/internal/sandbox/sandboxtest"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// ociRuntimes are the engine runtimes every backend test runs under.
var ociRuntimes = []string{"runc", "runsc"}

// newRuntime returns a docker runtime on the shared sandbox image with a
// worker label of its own. When the test ends, after its sandboxes are
// closed, no container with that label may be left.
func newRuntime(t testing.TB, oci string, edit ...func(*docker.Options)) *docker.Runtime {
	t.Helper()
	cli := imagetest.Engine(t)
	if oci != "runc" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		info, err := cli.Info(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_, ok := info.Runtimes[oci]
		testenv.Need(t, ok, oci+" registered with the Docker engine (run scripts/test-deps.sh as root)")
	}
	var logs testenv.Buffer
	worker := "test-" + randomHex(6)
	opts := docker.Options{
		Client:     cli,
		Image:      imagetest.Image(t),
		OCIRuntime: oci,
		// The slim sandboxd, as the worker runs it (internal/sandboxbin).
		Binary:   testenv.Sandboxd(t),
		WorkerID: worker,
		Logger:   slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, e := range edit {
		e(&opts)
	}
	rt, err := docker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if left := containersOf(t, worker); len(left) > 0 {
			t.Errorf("containers left behind by worker %s: %v", worker, left)
			if _, err := rt.RemoveOrphans(context.Background(), worker); err != nil {
				t.Errorf("RemoveOrphans: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("runtime log:\n%s", logs.String())
		}
	})
	return rt
}

// containersOf lists the containers, running or not, labelled with worker.
func containersOf(t testing.TB, worker string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := imagetest.Engine(t).ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", sandbox.LabelWorker+"="+worker)),
	})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	var names []string
	for _, c := range list {
		names = append(names, strings.Join(c.Names, ",")+" ("+c.State+")")
	}
	return names
}

// create starts a sandbox on a fresh workspace and closes it when the test
// ends.
func create(t *testing.T, rt sandbox.Runtime, limits sandbox.Limits) (*docker.Sandbox, sandbox.Spec) {
	t.Helper()
	spec := sandbox.Spec{
		SessionID: "sesn_test_" + randomHex(4),
		WorkID:    "work_test_" + randomHex(4),
		Workspace: t.TempDir(),
		Env:       map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
		Limits:    limits,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Logf("%s sandbox started in %s", rt.Name(), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		if err := sb.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		t.Logf("%s sandbox closed in %s", rt.Name(), time.Since(start).Round(time.Millisecond))
	})
	return sb.(*docker.Sandbox), spec
}

func bash(t *testing.T, sb sandbox.Sandbox, command string) (sandbox.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	input, _ := json.Marshal(map[string]string{"command": command})
	return sb.Exec(ctx, sandbox.Call{Tool: "bash", Input: input})
}

// ok runs command and fails the test unless it succeeds.
func ok(t *testing.T, sb sandbox.Sandbox, command string) string {
	t.Helper()
	res, err := bash(t, sb, command)
	if err != nil || res.IsError {
		t.Fatalf("%s: %+v, %v", command, res, err)
	}
	return res.Text
}

func TestDockerRuncConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, "runc") })
}

func TestDockerRunscConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandbox.Runtime { return newRuntime(t, "runsc") })
}

func TestDockerRuncEgress(t *testing.T) {
	sandboxtest.RunEgress(t, newRuntime(t, "runc"), sandboxtest.EgressOptions{})
}

func TestDockerRunscEgress(t *testing.T) {
	sandboxtest.RunEgress(t, newRuntime(t, "runsc"), sandboxtest.EgressOptions{})
}

func TestDockerRuncWarmPoolEgress(t *testing.T) {
	sandboxtest.RunEgressWarm(t, newRuntime(t, "runc"), sandboxtest.EgressOptions{})
}

func TestDockerRunscWarmPoolEgress(t *testing.T) {
	sandboxtest.RunEgressWarm(t, newRuntime(t, "runsc"), sandboxtest.EgressOptions{})
}

func TestNameSaysTheOCIRuntime(t *testing.T) {
	for oci, want := range map[string]string{"": "docker", "runc": "docker", "runsc": "docker-runsc"} {
		rt, err := docker.New(docker.Options{Image: "sha256:" + strings.Repeat("0", 64), OCIRuntime: oci, Binary: "/bin/sh"})
		if err != nil {
			t.Fatal(err)
		}
		if got := rt.Name(); got != want {
			t.Errorf("OCIRuntime %q: Name() = %q, want %q", oci, got, want)
		}
		rt.Close()
	}
}

func TestMutableTagIsRefused(t *testing.T) {
	for _, ref := range []string{"perimeter-sandbox:bookworm", "perimeter-sandbox", "registry.example.com/sandbox:latest"} {
		_, err := docker.New(docker.Options{Image: ref, Binary: "/bin/sh"})
		if !errors.Is(err, image.ErrNotPinned) {
			t.Errorf("%s: err = %v, want ErrNotPinned", ref, err)
			continue
		}
		for _, hint := range []string{"perimeter image resolve " + ref, "resolve_tags"} {
			if !strings.Contains(err.Error(), hint) {
				t.Errorf("%s: error %q does not mention %q", ref, err, hint)
			}
		}
	}
	if _, err := docker.New(docker.Options{Binary: "/bin/sh"}); err == nil || !strings.Contains(err.Error(), "perimeter image build") {
		t.Errorf("no image: err = %v, want one that says how to build one", err)
	}
}

func TestResolveTagsPinsTheTagOnceAtStart(t *testing.T) {
	id := imagetest.Image(t)
	rt := newRuntime(t, "runc", func(o *docker.Options) {
		o.Image = image.DefaultRepository + ":" + image.DefaultSuite
		o.ResolveTags = true
	})
	if rt.Image() != id {
		t.Fatalf("Image() = %q, want the ID %s", rt.Image(), id)
	}
	sb, _ := create(t, rt, sandbox.Limits{})
	ins, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID())
	if err != nil {
		t.Fatal(err)
	}
	if ins.Image != id || ins.Config.Labels[docker.LabelImage] != id {
		t.Errorf("container image = %s, label %s; want %s", ins.Image, ins.Config.Labels[docker.LabelImage], id)
	}
}

func TestContainerIsHardened(t *testing.T) {
	limits := sandbox.Limits{MemoryBytes: 300 << 20, CPUs: 0.5, PIDs: 48, TmpBytes: 32 << 20}
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			sb, spec := create(t, rt, limits)
			ins, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID())
			if err != nil {
				t.Fatal(err)
			}
			hc, cfg := ins.HostConfig, ins.Config
			t.Run("Inspect", func(t *testing.T) {
				checks := []struct {
					what      string
					got, want any
				}{
					{"Runtime", hc.Runtime, oci},
					{"CapDrop", []string(hc.CapDrop), []string{"ALL"}},
					{"CapAdd", len(hc.CapAdd), 0},
					{"Privileged", hc.Privileged, false},
					{"ReadonlyRootfs", hc.ReadonlyRootfs, true},
					{"NetworkMode", string(hc.NetworkMode), "none"},
					{"User", cfg.User, "1000:1000"},
					{"no-new-privileges", slices.Contains(hc.SecurityOpt, "no-new-privileges"), true},
					{"seccomp unconfined", slices.Contains(hc.SecurityOpt, "seccomp=unconfined"), false},
					// Docker's default profile, less the tracing calls.
					{"seccomp profile without ptrace", slices.ContainsFunc(hc.SecurityOpt, func(s string) bool {
						return strings.HasPrefix(s, "seccomp={") && strings.Contains(s, `"clone"`) && !strings.Contains(s, `"ptrace"`)
					}), true},
					{"Memory", hc.Memory, limits.MemoryBytes},
					{"MemorySwap", hc.MemorySwap, limits.MemoryBytes},
					{"NanoCPUs", hc.NanoCPUs, int64(0.5e9)},
					{"PidsLimit", *hc.PidsLimit, map[string]int64{"runc": limits.PIDs, "runsc": 256 + 16*limits.PIDs}[oci]},
					{"Ulimits", fmt.Sprint(hc.Ulimits), map[string]string{
						"runc":  "[core=0:0]",
						"runsc": fmt.Sprintf("[core=0:0 nproc=%d:%d]", limits.PIDs, limits.PIDs),
					}[oci]},
					{"Init", hc.Init != nil && *hc.Init, true},
					{"LogConfig", hc.LogConfig.Type, "none"},
					{"tmpfs /tmp", hc.Tmpfs["/tmp"], "rw,nosuid,nodev,exec,size=33554432,mode=1777"},
					{"tmpfs home", hc.Tmpfs["/home/sandbox"], "rw,nosuid,nodev,exec,size=33554432,mode=0700,uid=1000,gid=1000"},
					{"Tty", cfg.Tty, false},
					{"StdinOnce", cfg.StdinOnce, false},
					{"WorkingDir", cfg.WorkingDir, "/workspace"},
					{"session label", cfg.Labels[sandbox.LabelSession], spec.SessionID},
					{"work label", cfg.Labels[sandbox.LabelWork], spec.WorkID},
					{"Env", []string(cfg.Env), []string{"LANG=C.UTF-8", "PATH=" + spec.Env["PATH"]}},
				}
				for _, c := range checks {
					if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
						t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
					}
				}
				var sawWorkspace, sawBinary bool
				for _, m := range ins.Mounts {
					switch m.Destination {
					case "/workspace":
						sawWorkspace = m.RW && m.Source == mustEval(t, spec.Workspace)
					case "/opt/perimeter/perimeter":
						sawBinary = !m.RW
					default:
						t.Errorf("unexpected mount %s from %s", m.Destination, m.Source)
					}
				}
				if !sawWorkspace || !sawBinary {
					t.Errorf("mounts = %+v, want the workspace read-write and the binary read-only", ins.Mounts)
				}
			})
			t.Run("NoPrivileges", func(t *testing.T) {
				status := ok(t, sb, "cat /proc/self/status")
				if !strings.Contains(status, "CapEff:\t0000000000000000") {
					t.Errorf("effective capabilities are not empty:\n%s", status)
				}
				switch {
				case strings.Contains(status, "NoNewPrivs:\t1"):
				case oci == "runsc" && !strings.Contains(status, "NoNewPrivs"):
					// gVisor's /proc does not show the flag; it applies it
					// to the sandbox process on the host.
				default:
					t.Errorf("NoNewPrivs is not 1:\n%s", status)
				}
				if id := ok(t, sb, "id"); !strings.HasPrefix(id, "uid=1000(sandbox) gid=1000(sandbox)") {
					t.Errorf("id = %q", id)
				}
			})
			t.Run("ReadOnlyRootWritableScratch", func(t *testing.T) {
				if res, err := bash(t, sb, "touch /usr/bin/planted"); err != nil || !res.IsError {
					t.Errorf("writing to the image succeeded: %+v, %v", res, err)
				}
				ok(t, sb, "touch /tmp/a ~/b /workspace/c && test -f ~/.profile -o ! -e ~/.profile")
				if _, err := os.Stat(filepath.Join(spec.Workspace, "c")); err != nil {
					t.Errorf("a file written to /workspace is not in the host workspace: %v", err)
				}
				out := ok(t, sb, `python3 -c 'import os; s=os.statvfs("/tmp"); h=os.statvfs(os.path.expanduser("~")); print(s.f_blocks*s.f_frsize, h.f_blocks*h.f_frsize)'`)
				if strings.TrimSpace(out) != fmt.Sprintf("%d %d", limits.TmpBytes, limits.TmpBytes) {
					t.Errorf("tmpfs sizes = %q, want %d each", out, limits.TmpBytes)
				}
			})
			t.Run("ProcessesAreLimited", func(t *testing.T) {
				out := ok(t, sb, `python3 -c '
import os, signal
children = []
try:
    for _ in range(400):
        children.append(os.posix_spawn("/bin/sleep", ["sleep", "60"], {}))
    print("no limit", len(children))
except OSError as e:
    print("limited", len(children))
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)'`)
				var n int
				if _, err := fmt.Sscanf(out, "limited %d", &n); err != nil || n >= int(limits.PIDs) {
					t.Errorf("starting 400 processes with a limit of %d: %q", limits.PIDs, out)
				}
				t.Logf("with a limit of %d, %d more processes started", limits.PIDs, n)
			})
			t.Run("NoNetwork", func(t *testing.T) {
				out := ok(t, sb, `python3 -c '
import socket
print(sorted(n for _, n in socket.if_nameindex()))
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
    print("connected")
except OSError as e:
    print("refused")'`)
				if out != "['lo']\nrefused\n" && out != "['lo']\nrefused\n\n" {
					t.Errorf("network: %q, want only a loopback interface and no route out", out)
				}
			})
		})
	}
}

func TestMemoryBombIsAToolErrorAndTheWorkerCarriesOn(t *testing.T) {
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			sb, _ := create(t, rt, sandbox.Limits{MemoryBytes: 128 << 20})
			ok(t, sb, "echo warm")
			bombStart := time.Now()
			res, err := bash(t, sb, `python3 -c 'b = bytearray(1024**3)'`)
			t.Logf("bomb took %s", time.Since(bombStart))
			var exit *sandbox.ExitError
			switch {
			case errors.As(err, &exit):
				// The whole sandbox was killed (gVisor's kernel is one process).
				if exit.Reason != sandbox.ReasonOOM {
					t.Errorf("sandbox exited with reason %q, want %q", exit.Reason, sandbox.ReasonOOM)
				}
				t.Logf("the sandbox died: %v", err)
				if _, err := bash(t, sb, "echo after"); !errors.Is(err, sandbox.ErrExited) {
					t.Errorf("next call: %v, want ErrExited", err)
				}
			case err != nil:
				t.Fatalf("err = %v, want a tool error or an ExitError", err)
			default:
				// Only the bomb was killed; sandboxd lives on.
				if !res.IsError || !strings.Contains(res.Text, sandbox.ReasonOOM) {
					t.Errorf("result = %+v, want a tool error saying %q", res, sandbox.ReasonOOM)
				}
				t.Logf("the tool was killed: %q", res.Text)
				if out := ok(t, sb, "echo after"); !strings.Contains(out, "after") {
					t.Errorf("next call output = %q", out)
				}
			}
		})
	}
}

func TestSandboxdDeathIsReportedWithItsCause(t *testing.T) {
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			tests := []struct {
				name   string
				kill   func(t *testing.T, sb *docker.Sandbox)
				reason string
			}{
				{"KilledByTheEngine", killByEngine, "killed by signal SIGKILL"},
				{"KilledFromInside", func(t *testing.T, sb *docker.Sandbox) {
					_, _ = bash(t, sb, "kill -HUP $PPID")
				}, "killed by signal SIGHUP"},
				{"StoppedFromInside", func(t *testing.T, sb *docker.Sandbox) {
					_, _ = bash(t, sb, "kill -TERM $PPID")
				}, "exit status 0"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					sb, _ := create(t, rt, sandbox.Limits{})
					ok(t, sb, "echo warm")
					tc.kill(t, sb)
					err := exitOf(t, sb)
					var exit *sandbox.ExitError
					if !errors.As(err, &exit) || exit.Reason != tc.reason {
						t.Fatalf("err = %v, want an ExitError with reason %q", err, tc.reason)
					}
				})
			}
		})
	}
}

// killByEngine has the engine SIGKILL the sandbox's container.
func killByEngine(t *testing.T, sb *docker.Sandbox) {
	t.Helper()
	if err := imagetest.Engine(t).ContainerKill(context.Background(), sb.ContainerID(), "KILL"); err != nil {
		t.Fatal(err)
	}
}

// exitOf calls the sandbox until a call fails, and returns that error. A
// signal is delivered asynchronously: on a loaded machine sandboxd may
// answer one more call before it acts on it.
func exitOf(t *testing.T, sb *docker.Sandbox) error {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); err == nil && time.Now().Before(deadline); {
		if _, err = bash(t, sb, "echo unreachable"); err == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	return err
}

func TestSandboxdKilledAfterAToolRanOutOfMemoryIsNotReportedAsOutOfMemory(t *testing.T) {
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			tests := []struct {
				name string
				kill func(t *testing.T, sb *docker.Sandbox)
			}{
				{"KilledByTheEngine", killByEngine},
				{"KilledFromInside", func(t *testing.T, sb *docker.Sandbox) {
					_, _ = bash(t, sb, "kill -KILL $PPID")
				}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					sb, _ := create(t, rt, sandbox.Limits{MemoryBytes: 128 << 20})
					ok(t, sb, "echo warm")
					res, err := bash(t, sb, `python3 -c 'b = bytearray(1024**3)'`)
					var exit *sandbox.ExitError
					if errors.As(err, &exit) {
						// Under gVisor the host kills the whole sandbox (its
						// kernel is one process): that death is for memory.
						if exit.Reason != sandbox.ReasonOOM {
							t.Errorf("the memory bomb ended the sandbox with reason %q, want %q", exit.Reason, sandbox.ReasonOOM)
						}
						return
					}
					if !strings.Contains(res.Text, sandbox.ReasonOOM) {
						t.Fatalf("memory bomb: %+v, want a result saying %q", res, sandbox.ReasonOOM)
					}
					ok(t, sb, "echo after")
					tc.kill(t, sb)
					err = exitOf(t, sb)
					if want := "killed by signal SIGKILL"; !errors.As(err, &exit) || exit.Reason != want {
						t.Fatalf("err = %v, want an ExitError with reason %q", err, want)
					}
				})
			}
		})
	}
}

func TestCloseRemovesTheContainerEvenWithACancelledContext(t *testing.T) {
	rt := newRuntime(t, "runc")
	sb, _ := create(t, rt, sandbox.Limits{})
	ok(t, sb, "sleep 600 >/dev/null 2>&1 &")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sb.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID()); !cerrdefs.IsNotFound(err) {
		t.Errorf("container after Close: inspect err = %v, want not found", err)
	}
	if _, err := bash(t, sb, "echo closed"); !errors.Is(err, sandbox.ErrClosed) {
		t.Errorf("Exec after Close: %v, want ErrClosed", err)
	}
}

func TestRemoveOrphansRemovesOnlyThatWorkersContainers(t *testing.T) {
	crashed := newRuntime(t, "runc")
	other := newRuntime(t, "runc")
	orphan, _ := create(t, crashed, sandbox.Limits{})
	survivor, _ := create(t, other, sandbox.Limits{})

	// The label the runtimes were given is on their containers.
	ctx := context.Background()
	ins, err := imagetest.Engine(t).ContainerInspect(ctx, orphan.ContainerID())
	if err != nil {
		t.Fatal(err)
	}
	worker := ins.Config.Labels[sandbox.LabelWorker]

	n, err := crashed.RemoveOrphans(ctx, worker)
	if err != nil || n != 1 {
		t.Fatalf("RemoveOrphans = %d, %v; want 1", n, err)
	}
	if _, err := imagetest.Engine(t).ContainerInspect(ctx, orphan.ContainerID()); !cerrdefs.IsNotFound(err) {
		t.Errorf("the orphan is still there: %v", err)
	}
	if _, err := bash(t, orphan, "echo gone"); !errors.Is(err, sandbox.ErrExited) {
		t.Errorf("Exec on a removed sandbox: %v, want ErrExited", err)
	}
	if out := ok(t, survivor, "echo here"); !strings.Contains(out, "here") {
		t.Errorf("the other worker's sandbox: %q", out)
	}
	if n, err := crashed.RemoveOrphans(ctx, worker); err != nil || n != 0 {
		t.Errorf("second RemoveOrphans = %d, %v; want 0", n, err)
	}
}

func TestWorkspaceSizeLimitIsEnforcedAndFilesSurviveClose(t *testing.T) {
	testenv.Need(t, os.Geteuid() == 0, "root, to loop-mount a size-bounded workspace")
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			ws := filepath.Join(t.TempDir(), "ws")
			if err := os.MkdirAll(filepath.Join(ws, "skills/demo"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(ws, "skills/demo/SKILL.md"), []byte("before"), 0o644); err != nil {
				t.Fatal(err)
			}
			spec := sandbox.Spec{SessionID: "sesn_quota", Workspace: ws, Env: map[string]string{"PATH": "/usr/bin:/bin"},
				Limits: sandbox.Limits{WorkspaceBytes: 16 << 20}}
			sb, err := rt.Create(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sb.Close(context.Background()) })
			out := ok(t, sb, "cat skills/demo/SKILL.md && echo more >> skills/demo/SKILL.md && echo new > new.txt && ls -A")
			if !strings.HasPrefix(out, "before") || !strings.Contains(out, "new.txt") || strings.Contains(out, "lost+found") {
				t.Errorf("workspace: %q, want the files it had, the new one and nothing else", out)
			}
			res, err := bash(t, sb, "head -c 32M /dev/zero > big")
			if err != nil || !res.IsError || !strings.Contains(res.Text, "No space left on device") {
				t.Errorf("writing 32 MiB into a 16 MiB workspace: %+v, %v; want No space left on device", res, err)
			}
			if _, err := os.Stat(filepath.Join(ws, "new.txt")); err != nil {
				t.Errorf("the host does not see the sandbox's file while it runs: %v", err)
			}
			ok(t, sb, "rm big")
			if err := sb.Close(context.Background()); err != nil {
				t.Fatalf("Close: %v", err)
			}
			for name, want := range map[string]string{"skills/demo/SKILL.md": "beforemore\n", "new.txt": "new\n"} {
				if b, err := os.ReadFile(filepath.Join(ws, name)); err != nil || string(b) != want {
					t.Errorf("after Close, %s = %q, %v; want %q", name, b, err, want)
				}
			}
			entries, _ := os.ReadDir(filepath.Dir(ws))
			for _, e := range entries {
				if e.Name() != "ws" {
					t.Errorf("left next to the workspace: %s", e.Name())
				}
			}
			if _, err := os.Stat(filepath.Join(ws, "lost+found")); err == nil {
				t.Error("lost+found was copied into the workspace")
			}
		})
	}
}

func TestDoctorReportsTheHost(t *testing.T) {
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			got := map[string]sandbox.Check{}
			for _, c := range rt.Doctor(context.Background()) {
				t.Logf("%-22s ok=%-5v %s", c.Name, c.OK, c.Detail)
				got[c.Name] = c
			}
			for _, name := range []string{"docker engine", "oci runtime " + oci, "memory limit", "pids limit", "seccomp", "docker-init", "sandbox image"} {
				if !got[name].OK {
					t.Errorf("check %q = %+v, want OK on this host", name, got[name])
				}
			}
			if _, ok := got["gvisor file status"]; ok != (oci == "runsc") {
				t.Errorf("gvisor file status check present = %v, want it for runsc only", ok)
			}
		})
	}
}

func mustEval(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func TestCreateRefusesAnEnvironmentItCannotPassExactly(t *testing.T) {
	rt, err := docker.New(docker.Options{Image: "sha256:" + strings.Repeat("0", 64), Binary: "/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	_, err = rt.Create(context.Background(), sandbox.Spec{Workspace: t.TempDir(), Env: map[string]string{"-u": "PATH"}})
	if err == nil || !strings.Contains(err.Error(), "cannot be passed") {
		t.Errorf("err = %v, want a refusal", err)
	}
}

func TestMoreCPUsThanTheHostHasAreCappedToTheHost(t *testing.T) {
	rt := newRuntime(t, "runc")
	sb, _ := create(t, rt, sandbox.Limits{CPUs: 4096})
	ins, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID())
	if err != nil {
		t.Fatal(err)
	}
	if ins.HostConfig.NanoCPUs <= 0 || ins.HostConfig.NanoCPUs > 4096e9 {
		t.Errorf("NanoCPUs = %d", ins.HostConfig.NanoCPUs)
	}
	t.Logf("4096 CPUs asked, %g given", float64(ins.HostConfig.NanoCPUs)/1e9)
}

func TestSeccompProfileIsApplied(t *testing.T) {
	// A profile that only refuses the ptrace family: enough to see it
	// applied (the engine's default profile allows ptrace).
	profile := filepath.Join(t.TempDir(), "seccomp.json")
	err := os.WriteFile(profile, []byte(`{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["ptrace", "process_vm_readv", "process_vm_writev"], "action": "SCMP_ACT_ERRNO"}]
}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, "runc", func(o *docker.Options) { o.SeccompProfile = profile })
	sb, _ := create(t, rt, sandbox.Limits{})
	ins, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ins.HostConfig.SecurityOpt, func(s string) bool { return strings.HasPrefix(s, "seccomp={") }) {
		t.Errorf("SecurityOpt = %v, want the profile", ins.HostConfig.SecurityOpt)
	}
	out := ok(t, sb, `python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(0x4206, os.getppid(), None, None)
print("attached" if r == 0 else os.strerror(ctypes.get_errno()))'`)
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("ptrace of sandboxd under the profile: %q, want Operation not permitted", out)
	}

	if _, err := docker.New(docker.Options{Image: "sha256:" + strings.Repeat("0", 64), Binary: "/bin/sh", SeccompProfile: filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Error("New accepted a seccomp profile that does not exist")
	}
}

// The sandbox's one way out is the egress socket, bridged by sandboxd to
// 127.0.0.1:3128; the session's CA bundle replaces the system one.
func TestSandboxReachesItsEgressProxyThroughTheBridge(t *testing.T) {
	for _, oci := range ociRuntimes {
		t.Run(oci, func(t *testing.T) {
			rt := newRuntime(t, oci)
			dir := t.TempDir()
			sock := filepath.Join(dir, "egress.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if err := os.Chmod(sock, 0o666); err != nil { // the sandbox's uid connects
				t.Fatal(err)
			}
			go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "proxy saw %s %s", r.Method, r.URL)
			}))
			bundle := filepath.Join(dir, "ca.pem")
			if err := os.WriteFile(bundle, []byte("session-ca-marker\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sb, err := rt.Create(ctx, sandbox.Spec{
				SessionID: "sesn_egress_" + randomHex(4), Workspace: t.TempDir(),
				Env:    map[string]string{"PATH": "/usr/bin:/bin", "http_proxy": "http://127.0.0.1:3128"},
				Egress: &sandbox.Egress{Socket: sock, CABundle: bundle},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Close(context.Background())
			out := ok(t, sb, `python3 -c "import urllib.request; print(urllib.request.urlopen('http://upstream.example/p', timeout=10).read().decode())"`)
			if !strings.Contains(out, "proxy saw GET http://upstream.example/p") {
				t.Errorf("through the proxy: %q", out)
			}
			if out := ok(t, sb, "cat "+sandbox.SystemCABundle+" "+sandbox.CABundle); strings.Count(out, "session-ca-marker") != 2 {
				t.Errorf("CA bundles in the sandbox: %q", out)
			}
		})
	}
}

// cancelOnCreate is an engine transport that cancels a Create's context
// while the engine creates its container: the engine finishes creating it,
// and a request made on that context never learns its ID.
type cancelOnCreate struct {
	http.RoundTripper
	cancel context.CancelFunc
}

func (c cancelOnCreate) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/containers/create") {
		return c.RoundTripper.RoundTrip(req)
	}
	c.cancel()
	resp, err := c.RoundTripper.RoundTrip(req.WithContext(context.WithoutCancel(req.Context())))
	if err == nil && req.Context().Err() != nil {
		resp.Body.Close()
		return nil, req.Context().Err()
	}
	return resp, err
}

// cancellingEngine is a client of the test engine that calls cancel while
// the engine creates a container (see cancelOnCreate).
func cancellingEngine(t *testing.T, cancel context.CancelFunc) *client.Client {
	t.Helper()
	engine := imagetest.Engine(t)
	sock := strings.TrimPrefix(engine.DaemonHost(), "unix://")
	hc := &http.Client{Transport: cancelOnCreate{cancel: cancel, RoundTripper: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
	cli, err := client.NewClientWithOpts(client.WithHost(engine.DaemonHost()), client.WithHTTPClient(hc), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestCreateCancelledWhileTheEngineCreatesLeavesNoContainer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli := cancellingEngine(t, cancel)
	var err error
	worker := "test-" + randomHex(6)
	rt := newRuntime(t, "runc", func(o *docker.Options) { o.Client, o.WorkerID = cli, worker })
	_, err = rt.Create(ctx, sandbox.Spec{SessionID: "sesn_cancelled_" + randomHex(4), Workspace: t.TempDir(),
		Env: map[string]string{"PATH": "/usr/bin:/bin"}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Create = %v, want context.Canceled", err)
	}
	if left := containersOf(t, worker); len(left) > 0 {
		t.Errorf("containers left behind: %v", left)
		if _, err := rt.RemoveOrphans(context.Background(), worker); err != nil {
			t.Errorf("RemoveOrphans: %v", err)
		}
	}
}

func TestCPUsAreCappedEvenWhenTheFirstCreateWasCancelled(t *testing.T) {
	rt := newRuntime(t, "runc")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := rt.Create(ctx, sandbox.Spec{Workspace: t.TempDir(), Limits: sandbox.Limits{CPUs: 4096}}); err == nil {
		t.Fatal("Create with a cancelled context succeeded")
	}
	sb, _ := create(t, rt, sandbox.Limits{CPUs: 4096})
	ins, err := imagetest.Engine(t).ContainerInspect(context.Background(), sb.ContainerID())
	if err != nil {
		t.Fatal(err)
	}
	if ins.HostConfig.NanoCPUs <= 0 || ins.HostConfig.NanoCPUs > 4096e9 {
		t.Errorf("NanoCPUs = %d", ins.HostConfig.NanoCPUs)
	}
}

func TestDoctorTriesWhetherAConfiguredSeccompProfileAllowsPtrace(t *testing.T) {
	scope, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	yama := err == nil && strings.TrimSpace(string(scope)) != "0"
	for _, tc := range []struct {
		name, profile string
		want          bool
	}{
		{"AllowsPtrace", `{"defaultAction": "SCMP_ACT_ALLOW"}`, yama},
		{"RefusesPtrace", `{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			profile := filepath.Join(t.TempDir(), "seccomp.json")
			if err := os.WriteFile(profile, []byte(tc.profile), 0o600); err != nil {
				t.Fatal(err)
			}
			rt := newRuntime(t, "runc", func(o *docker.Options) { o.SeccompProfile = profile })
			var got *sandbox.Check
			for _, c := range rt.Doctor(context.Background()) {
				if c.Name == "ptrace inside sandboxes" {
					got = &c
				}
			}
			if got == nil || got.OK != tc.want {
				t.Errorf("ptrace check = %+v, want OK = %v", got, tc.want)
			}
		})
	}
}

func TestDoctorCancelledWhileTheEngineCreatesItsProbeLeavesNoContainer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli := cancellingEngine(t, cancel)
	profile := filepath.Join(t.TempDir(), "seccomp.json")
	if err := os.WriteFile(profile, []byte(`{"defaultAction": "SCMP_ACT_ALLOW"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	worker := "test-" + randomHex(6)
	rt := newRuntime(t, "runc", func(o *docker.Options) { o.Client, o.WorkerID, o.SeccompProfile = cli, worker, profile })
	rt.Doctor(ctx) // the ptrace check starts a probe sandbox
	if left := containersOf(t, worker); len(left) > 0 {
		t.Errorf("containers left behind: %v", left)
		if _, err := rt.RemoveOrphans(context.Background(), worker); err != nil {
			t.Errorf("RemoveOrphans: %v", err)
		}
	}
}

// A warm sandbox that died while it waited (the engine restarted, an
// operator removed it) is not what a session gets.
func TestWarmPoolHandsOutNoDeadSandbox(t *testing.T) {
	worker := "test-" + randomHex(6)
	rt := newRuntime(t, "runc", func(o *docker.Options) { o.WorkerID = worker })
	env := map[string]string{"PATH": "/usr/bin:/bin"}
	p, err := pool.New(rt, pool.Options{Size: 1, Dir: filepath.Join(testenv.ShortDir(t), "pool"), Env: env,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for deadline := time.Now().Add(time.Minute); p.Ready() < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no warm sandbox within a minute")
		}
	}
	ctx := context.Background()
	list, err := imagetest.Engine(t).ContainerList(ctx, container.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", sandbox.LabelWorker+"="+worker)),
	})
	if err != nil || len(list) != 1 {
		t.Fatalf("warm containers: %d, %v; want 1", len(list), err)
	}
	if err := imagetest.Engine(t).ContainerKill(ctx, list[0].ID, "KILL"); err != nil {
		t.Fatal(err)
	}

	ws := filepath.Join(t.TempDir(), "sesn_1")
	if err := os.Mkdir(ws, 0o700); err != nil {
		t.Fatal(err)
	}
	sb, err := p.Create(ctx, sandbox.Spec{SessionID: "sesn_after_kill_" + randomHex(4), Workspace: ws, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close(ctx)
	if res, err := bash(t, sb, "echo alive"); err != nil || !strings.Contains(res.Text, "alive") {
		t.Errorf("the session's first call: %+v, %v; want it answered", res, err)
	}
}
