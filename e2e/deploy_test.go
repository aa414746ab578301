package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

const manifestPath = "../deploy/kubernetes/perimeter-worker.yaml"

// manifest is the shipped Kubernetes manifest, decoded strictly: a field
// Kubernetes does not know is an error, as `kubectl apply` would make it.
type manifest struct {
	config    *corev1.ConfigMap
	daemonSet *appsv1.DaemonSet
	kinds     []string
}

func loadManifest(t *testing.T) manifest {
	t.Helper()
	raw, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	decode := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer().Decode
	var m manifest
	for i, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(raw), -1) {
		obj, gvk, err := decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s, document %d: %v", manifestPath, i+1, err)
		}
		m.kinds = append(m.kinds, gvk.Kind)
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			m.config = o
		case *appsv1.DaemonSet:
			m.daemonSet = o
		}
	}
	if m.config == nil || m.daemonSet == nil {
		t.Fatalf("%s holds %v, want a ConfigMap and a DaemonSet", manifestPath, m.kinds)
	}
	return m
}

func (m manifest) worker(t *testing.T) corev1.Container {
	t.Helper()
	for _, c := range m.daemonSet.Spec.Template.Spec.Containers {
		if c.Name == "worker" {
			return c
		}
	}
	t.Fatal("the DaemonSet has no worker container")
	return corev1.Container{}
}

func (m manifest) volume(t *testing.T, name string) corev1.Volume {
	t.Helper()
	for _, v := range m.daemonSet.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("the DaemonSet has no volume %q", name)
	return corev1.Volume{}
}

// TestKubernetesManifestHoldsTogether checks what Kubernetes cannot: that
// the worker's config, flags, mounts and probes in the manifest agree.
func TestKubernetesManifestHoldsTogether(t *testing.T) {
	m := loadManifest(t)
	c := m.worker(t)
	cfgText, ok := m.config.Data["perimeter.yaml"]
	if !ok {
		t.Fatal("the ConfigMap has no perimeter.yaml")
	}
	cfg, err := config.Parse([]byte(cfgText), "perimeter.yaml")
	if err != nil {
		t.Fatalf("the ConfigMap's perimeter.yaml: %v", err)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.Name] = vm
	}

	// The config file the flags name is the ConfigMap's, where it is mounted.
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 == len(c.Args) {
		t.Fatalf("the worker's args %v name no --config", c.Args)
	}
	if want := filepath.Join(mounts["config"].MountPath, "perimeter.yaml"); c.Args[i+1] != want {
		t.Errorf("--config %s, want %s (the ConfigMap's mount)", c.Args[i+1], want)
	}
	// The node's Docker Engine mounts workspaces, sandboxd and egress
	// sockets by their paths in the state directory: the same on the node
	// and in the pod.
	state := m.volume(t, "state")
	if state.HostPath == nil || state.HostPath.Path != cfg.Worker.StateDir || mounts["state"].MountPath != cfg.Worker.StateDir {
		t.Errorf("state_dir %s, host path %+v, mounted at %s: want one path", cfg.Worker.StateDir, state.HostPath, mounts["state"].MountPath)
	}
	if sock := m.volume(t, "docker"); sock.HostPath == nil || sock.HostPath.Path != mounts["docker"].MountPath {
		t.Errorf("the Docker socket %+v is mounted at %s, want the same path", sock.HostPath, mounts["docker"].MountPath)
	}
	// Probes and scrapes reach the admin listener.
	_, port, err := net.SplitHostPort(cfg.Worker.AdminListen)
	if err != nil {
		t.Fatalf("admin_listen %q: %v", cfg.Worker.AdminListen, err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Worker.AdminListen); host != "0.0.0.0" && host != "" {
		t.Errorf("admin_listen %s: the kubelet's probes come from outside the pod", cfg.Worker.AdminListen)
	}
	if len(c.Ports) != 1 || strconv.Itoa(int(c.Ports[0].ContainerPort)) != port {
		t.Errorf("container ports %+v, want admin_listen's %s", c.Ports, port)
	}
	if got := m.daemonSet.Spec.Template.Annotations["prometheus.io/port"]; got != port {
		t.Errorf("prometheus.io/port %q, want %s", got, port)
	}
	// SIGTERM drains before the kubelet's SIGKILL.
	grace := time.Duration(*m.daemonSet.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= time.Duration(cfg.Worker.DrainTimeout) {
		t.Errorf("terminationGracePeriodSeconds %s, want more than drain_timeout %s", grace, time.Duration(cfg.Worker.DrainTimeout))
	}
	// The environment key comes from a Secret, never from the ConfigMap.
	if strings.Contains(cfgText, "sk-ant-") {
		t.Error("the ConfigMap holds a key")
	}
	var key *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "ANTHROPIC_ENVIRONMENT_KEY" {
			key = &c.Env[i]
		}
	}
	if key == nil || key.ValueFrom == nil || key.ValueFrom.SecretKeyRef == nil {
		t.Errorf("ANTHROPIC_ENVIRONMENT_KEY is %+v, want it from a Secret", key)
	}
}

// TestTheWorkerImageRunsTheManifestsPod builds the worker's image with
// scripts/worker-image.sh (what `make image` runs) and starts it in the
// Docker engine as the manifest's DaemonSet would start it: its args, env,
// mounts, user, capabilities and read-only root, with the ConfigMap's
// config. The worker in the container runs sessions in sandboxes of the
// same engine, one of them reaching an upstream through its egress proxy
// over the state directory both share; it answers the manifest's probes,
// drains on `docker stop`, and leaves no sandbox behind.
func TestTheWorkerImageRunsTheManifestsPod(t *testing.T) {
	ok, what := dockerReady()
	testenv.Need(t, ok, what)
	m := loadManifest(t)
	c := m.worker(t)
	spec := m.daemonSet.Spec.Template.Spec

	tag := fmt.Sprintf("perimeter-e2e:%d", time.Now().UnixNano())
	if out, err := exec.Command("../scripts/worker-image.sh", testenv.Binary(t), tag).CombinedOutput(); err != nil {
		t.Fatalf("scripts/worker-image.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", tag).Run() })
	checkWorkerImage(t, tag)

	// An HTTPS upstream the canary scenario's sandbox calls through its
	// egress proxy, with the credential put in by the proxy.
	canary := "canary-image-" + fmt.Sprint(time.Now().UnixNano())
	up := newCanaryUpstream(t)

	// The ConfigMap's files, plus what this test's sessions need, in the
	// directory mounted where the ConfigMap would be.
	confDir := t.TempDir()
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(m.config.Data["perimeter.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	sb := cfg["sandbox"].(map[string]any)
	sb["env"] = map[string]any{"UPSTREAM_URL": "https://127.0.0.1:" + up.port + "/echo"}
	cfg["secrets"] = []any{map[string]any{"name": "canary", "env": "PERIMETER_E2E_CANARY"}}
	for name, text := range m.config.Data {
		if name == "perimeter.yaml" {
			b, err := yaml.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			text = string(b)
		}
		writeFile(t, filepath.Join(confDir, name), text)
	}
	writeFile(t, filepath.Join(confDir, "e2e-policy.yaml"), up.policy())
	writeFile(t, filepath.Join(confDir, "upstream-ca.pem"), up.rootsPEM())
	if err := os.Chmod(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(confDir, "*"))
	for _, f := range files {
		_ = os.Chmod(f, 0o644)
	}

	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	state := stateDir(t)
	workerID := "e2e-image-" + filepathBase(state)
	admin := freeAddr(t)
	name := "perimeter-e2e-" + filepathBase(state)

	args := []string{"run", "--detach", "--name", name,
		// The test's control plane and upstream listen on this host's
		// loopback; a pod would reach the API over its own network.
		"--network", "host",
		"--env", "ANTHROPIC_BASE_URL=" + cp.url,
		"--env", "ANTHROPIC_ENVIRONMENT_ID=" + envID,
		"--env", "PERIMETER_E2E_CANARY=" + canary,
		"--env", "SSL_CERT_FILE=" + filepath.Join(mountPath(t, c, "config"), "upstream-ca.pem"),
	}
	args = append(args, podSecurityArgs(t, c)...)
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			args = append(args, "--env", e.Name+"="+e.Value)
		case e.ValueFrom.SecretKeyRef != nil && e.Name == "ANTHROPIC_ENVIRONMENT_KEY":
			args = append(args, "--env", e.Name+"="+envKey)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			args = append(args, "--env", e.Name+"="+workerID)
		default:
			t.Fatalf("env %s: the test does not know how to fill %+v", e.Name, e.ValueFrom)
		}
	}
	for _, vm := range c.VolumeMounts {
		var v corev1.Volume
		for _, sv := range spec.Volumes {
			if sv.Name == vm.Name {
				v = sv
			}
		}
		switch {
		case v.ConfigMap != nil:
			args = append(args, "--volume", confDir+":"+vm.MountPath+":ro")
		case v.HostPath != nil && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathSocket:
			args = append(args, "--volume", v.HostPath.Path+":"+vm.MountPath)
		case v.HostPath != nil:
			// The state directory: a fresh one, at the same path on the
			// host and in the container, as the manifest has it.
			args = append(args, "--volume", state+":"+state)
		case v.EmptyDir != nil:
			args = append(args, "--tmpfs", vm.MountPath+":rw,size=64m")
		default:
			t.Fatalf("volume %s: the test does not know how to mount %+v", v.Name, v.VolumeSource)
		}
	}
	args = append(args, tag)
	args = append(args, c.Args...)
	// What differs from the pod: this test's state directory and admin
	// address, and a policy that allows the scenarios' calls and egress.
	// The runtime is the manifest's: the strongest the worker finds it can
	// start a sandbox in, from inside its container.
	args = append(args, "--state-dir", state, "--admin-listen", admin,
		"--policy", filepath.Join(mountPath(t, c, "config"), "e2e-policy.yaml"), "--max-idle", "2s")
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("--- worker container's log:\n%s", out)
		}
		_ = exec.Command("docker", "rm", "-f", name).Run()
		noContainersOf(t, workerID)
	})

	// The kubelet's probes.
	waitFor(t, "the worker container's readiness probe", func() bool {
		resp, err := http.Get("http://" + admin + c.ReadinessProbe.HTTPGet.Path)
		if err != nil {
			return false // not listening yet
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if code, body := httpGet(t, "http://"+admin+p.HTTPGet.Path); code != http.StatusOK {
			t.Errorf("%s probe: %d %s", what, code, body)
		}
	}

	quick, canaryID := newSession(t, op, "quickstart"), newSession(t, op, "e2e-canary")
	waitPassed(t, op, quick)
	waitPassed(t, op, canaryID)
	if code, body := httpGet(t, "http://"+admin+"/metrics"); code != http.StatusOK || !strings.Contains(body, "perimeter_") {
		t.Errorf("/metrics: %d, %d bytes", code, len(body))
	}

	// The other commands run from the image, beside the worker.
	for _, cmd := range [][]string{
		{"approvals", "list", "--all", "--admin-url", "http://" + admin, "--token-file", filepath.Join(state, "admin-token")},
		{"audit", "verify", "--state-dir", state},
	} {
		out, err := exec.Command("docker", append([]string{"exec", name, "perimeter"}, cmd...)...).CombinedOutput()
		if err != nil {
			t.Errorf("docker exec perimeter %s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}

	// The kubelet stops a pod with SIGTERM and waits the grace period.
	grace := strconv.Itoa(int(*spec.TerminationGracePeriodSeconds))
	if out, err := exec.Command("docker", "stop", "--time", grace, name).CombinedOutput(); err != nil {
		t.Fatalf("docker stop: %v\n%s", err, out)
	}
	out, err := exec.Command("docker", "inspect", "--format", "{{.State.ExitCode}}", name).Output()
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("the worker container exited %q (%v), want 0 after draining", strings.TrimSpace(string(out)), err)
	}
	logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
	noContainersOf(t, workerID)

	up.wantReceivedOnce(t, "Bearer "+canary)
	if bytes.Contains(logs, []byte(canary)) {
		t.Error("the worker container's log contains the real value")
	}
	for _, want := range []string{`msg="picked the strongest sandbox runtime this host offers" runtime=docker`, `msg="egress request"`, filepath.Join(state, "bin", "perimeter-sandboxd-")} {
		if !bytes.Contains(logs, []byte(want)) {
			t.Errorf("the worker container's log lacks %s", want)
		}
	}
}

// checkWorkerImage wants the image to hold the binary and its CA bundle
// and nothing to run but them: no shell.
func checkWorkerImage(t *testing.T, tag string) {
	t.Helper()
	out, err := exec.Command("docker", "run", "--rm", tag, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "perimeter version ") {
		t.Errorf("docker run %s --version: %v\n%s", tag, err, out)
	}
	version := strings.TrimPrefix(strings.TrimSpace(string(out)), "perimeter version ")
	label, _ := exec.Command("docker", "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.version"}}`, tag).Output()
	if got := strings.TrimSpace(string(label)); got != version || got == "" {
		t.Errorf("the image's org.opencontainers.image.version is %q, want the binary's %q", got, version)
	}
	// Its commands read the image's config ($PERIMETER_CONFIG): the state
	// directory is /var/lib/perimeter, not ./perimeter-state.
	out, _ = exec.Command("docker", "run", "--rm", tag, "audit", "verify").CombinedOutput()
	if !strings.Contains(string(out), "/var/lib/perimeter/audit") {
		t.Errorf("perimeter audit verify in the image does not look in /var/lib/perimeter:\n%s", out)
	}
	if out, err := exec.Command("docker", "run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true").CombinedOutput(); err == nil {
		t.Errorf("the worker image runs /bin/sh:\n%s", out)
	}
	bin, err := os.Stat(testenv.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("docker", "image", "inspect", "--format", "{{.Size}}", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	size, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if size < bin.Size() || size > bin.Size()+2<<20 {
		t.Errorf("the image is %d bytes for a %d-byte binary: want the binary and a CA bundle", size, bin.Size())
	}
}

// podSecurityArgs turns the container's securityContext into docker run
// flags.
func podSecurityArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("the worker container has no securityContext")
	}
	var args []string
	if sc.RunAsUser != nil {
		args = append(args, "--user", strconv.FormatInt(*sc.RunAsUser, 10))
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if sc.Capabilities != nil {
		for _, cp := range sc.Capabilities.Drop {
			args = append(args, "--cap-drop", string(cp))
		}
		for _, cp := range sc.Capabilities.Add {
			args = append(args, "--cap-add", string(cp))
		}
	}
	return args
}

func mountPath(t *testing.T, c corev1.Container, volume string) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.Name == volume {
			return vm.MountPath
		}
	}
	t.Fatalf("the worker container does not mount %s", volume)
	return ""
}

// TestSystemdUnitMatchesTheBinary checks the shipped unit against the
// binary it starts: every flag of its command line exists, and systemd
// waits for the drain before it kills. (systemd itself is not run here.)
func TestSystemdUnitMatchesTheBinary(t *testing.T) {
	raw, err := os.ReadFile("../deploy/systemd/perimeter-worker.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]string{}
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			unit[k] = v
		}
	}
	cmdline := strings.Fields(unit["ExecStart"])
	if len(cmdline) < 2 || cmdline[0] != "/usr/local/bin/perimeter" || cmdline[1] != "worker" {
		t.Fatalf("ExecStart=%s, want /usr/local/bin/perimeter worker …", unit["ExecStart"])
	}
	help, err := exec.Command(testenv.Binary(t), "worker", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("perimeter worker --help: %v\n%s", err, help)
	}
	for _, arg := range cmdline[2:] {
		if strings.HasPrefix(arg, "--") && !strings.Contains(string(help), "      "+arg+" ") {
			t.Errorf("ExecStart passes %s, which perimeter worker does not have", arg)
		}
	}
	stop, err := time.ParseDuration(unit["TimeoutStopSec"] + "s")
	if err != nil || stop <= 30*time.Second {
		t.Errorf("TimeoutStopSec=%s, want more than the default drain_timeout (30s)", unit["TimeoutStopSec"])
	}
	// The worker sends READY=1 (TestWorkerTellsSystemdItIsReadyOnceSIGHUPReloads);
	// SIGTERM goes to it alone, which closes its sandboxes as it drains.
	if unit["Type"] != "notify" || unit["KillMode"] != "mixed" {
		t.Errorf("Type=%s KillMode=%s, want notify and mixed", unit["Type"], unit["KillMode"])
	}
	// READY=1 comes after the runtime probes: a minute each at most.
	if start, err := time.ParseDuration(unit["TimeoutStartSec"] + "s"); err != nil || start < 3*time.Minute {
		t.Errorf("TimeoutStartSec=%s, want room for three runtime probes", unit["TimeoutStartSec"])
	}
	// The mode the worker gives its state directory (sandboxes search it).
	if unit["StateDirectoryMode"] != "0711" {
		t.Errorf("StateDirectoryMode=%s, want 0711", unit["StateDirectoryMode"])
	}
	if unit["KillSignal"] != "SIGTERM" || !strings.Contains(unit["ExecReload"], "-HUP") {
		t.Errorf("KillSignal=%s ExecReload=%s: SIGTERM drains, SIGHUP reloads the policy", unit["KillSignal"], unit["ExecReload"])
	}
}

// TestWorkerTellsSystemdItIsReadyOnceSIGHUPReloads: started as the unit's
// Type=notify service, the worker sends READY=1 only once SIGHUP reloads
// its policy, so `systemctl reload` (which systemd sends only after
// READY) never meets the signal's default action, which ends a process;
// nor does a SIGHUP during the drain.
func TestWorkerTellsSystemdItIsReadyOnceSIGHUPReloads(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cp := startControlPlane(t, t.TempDir(), "")
	w := startWorkerEnv(t, cp.url, stateDir(t), []string{"NOTIFY_SOCKET=" + sock})
	_ = l.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 256)
	n, err := l.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("from NOTIFY_SOCKET: %q, %v; want READY=1", buf[:n], err)
	}
	w.signal(sighup)
	w.waitLog(regexp.MustCompile(`msg="policy reloaded"`))
	w.signal(sigterm)
	w.signal(sighup)
	if code := w.wait(60 * time.Second); code != 0 {
		t.Errorf("worker exited %d after SIGTERM and a SIGHUP while draining, want 0", code)
	}
}

// TestSandboxesStartedWithTheWorkerDoNotInheritAnIgnoredSIGHUP: the worker
// holds SIGHUP while it starts, and a warm sandbox it starts meanwhile
// must not inherit the signal ignored (an exec keeps SIG_IGN): the
// agent's programs would then outlive a hang-up they expect to end them.
func TestSandboxesStartedWithTheWorkerDoNotInheritAnIgnoredSIGHUP(t *testing.T) {
	ok, what := bwrapReady()
	testenv.Need(t, ok, what)
	cfg := filepath.Join(t.TempDir(), "worker.yaml")
	writeFile(t, cfg, "version: 1\nsandbox:\n  warm_pool: 1\n")
	cp := startControlPlane(t, t.TempDir(), "")
	w := startWorker(t, cp.url, stateDir(t), "--config", cfg, "--runtime", "bwrap")
	w.waitLog(regexp.MustCompile(`msg="warm sandbox ready"`))
	var checked int
	for _, pid := range descendants(w.cmd.Process.Pid) {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(status)) {
			if hex, ok := strings.CutPrefix(line, "SigIgn:"); ok {
				mask, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				checked++
				if mask&(1<<(syscall.SIGHUP-1)) != 0 {
					cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
					t.Errorf("process %d (%s) of the warm sandbox ignores SIGHUP", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no process of the warm sandbox")
	}
	w.stop(t)
}

// descendants lists the processes below pid.
func descendants(pid int) []int {
	var out []int
	for _, child := range sandbox.ChildrenOf(pid) {
		out = append(append(out, child), descendants(child)...)
	}
	return out
}
