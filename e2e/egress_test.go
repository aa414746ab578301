package e2e

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestCanarySecretReachesOnlyItsUpstream runs the e2e-canary scenario on
// each isolating runtime: a secret with a unique value is configured, the
// agent dumps its environment, greps everything it can see and calls the
// allowed upstream with the placeholder it found. The upstream receives the
// real value; the sandbox, the model (every event of the session), the
// worker's logs and its exported spans never contain it.
func TestCanarySecretReachesOnlyItsUpstream(t *testing.T) {
	onIsolatingRuntimes(t, func(t *testing.T, runtime string) { testCanary(t, runtime, false) })
}

// TestCanaryInAWarmSandbox runs the same scenario in a sandbox from a warm
// pool, started before the session and its proxy.
func TestCanaryInAWarmSandbox(t *testing.T) {
	onIsolatingRuntimes(t, func(t *testing.T, runtime string) { testCanary(t, runtime, true) })
}

func testCanary(t *testing.T, runtime string, warm bool) {
	canary := "canary-e2e-" + fmt.Sprint(time.Now().UnixNano())

	up := newCanaryUpstream(t)
	port := up.port

	dir := t.TempDir()
	// The worker verifies the upstream with the roots SSL_CERT_FILE names.
	roots := filepath.Join(dir, "upstream-ca.pem")
	writeFile(t, roots, up.rootsPEM())
	policy := filepath.Join(dir, "policy.yaml")
	writeFile(t, policy, up.policy())
	pool := "0"
	if warm {
		pool = "1"
	}
	cfg := filepath.Join(dir, "worker.yaml")
	writeFile(t, cfg, `version: 1
sandbox:
  warm_pool: `+pool+`
  env:
    UPSTREAM_URL: https://127.0.0.1:`+port+`/echo
secrets:
  - name: canary
    env: PERIMETER_E2E_CANARY
`)
	col := &collector{}
	otlp := freeAddr(t)
	srv := &http.Server{Addr: otlp, Handler: col}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Close() })
	waitDial(t, otlp)

	state := stateDir(t)
	cp := startControlPlane(t, t.TempDir(), "")
	op := operator(cp.url)
	w := startWorkerEnv(t, cp.url, state, []string{
		"PERIMETER_E2E_CANARY=" + canary,
		"SSL_CERT_FILE=" + roots,
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + otlp,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
	}, "--config", cfg, "--policy", policy, "--runtime", runtime, "--tool-timeout", "200s",
		"--worker-id", "e2e-canary-"+filepathBase(state))
	if warm {
		waitFor(t, "a warm sandbox", func() bool { return strings.Contains(w.out.String(), `msg="warm sandbox ready"`) })
	}
	id := newSession(t, op, "e2e-canary")
	waitPassed(t, op, id)
	w.stop(t)
	noContainersOf(t, "e2e-canary-"+filepathBase(state))

	up.wantReceivedOnce(t, "Bearer "+canary)
	for _, ev := range events(t, op, id) {
		raw, _ := json.Marshal(ev)
		if strings.Contains(string(raw), canary) {
			t.Errorf("the session's events carry the real value: %s", raw)
		}
	}
	logs := w.out.String()
	if strings.Contains(logs, canary) {
		t.Error("the worker's log contains the real value")
	}
	if handed := strings.Contains(logs, `msg="handed out a warm sandbox"`); handed != warm {
		t.Errorf("a warm sandbox handed out: %v, want %v", handed, warm)
	}
	for _, want := range []string{`msg="egress request"`, `credentials=[canary]`, `msg="egress blocked"`, `host=blocked.example.org`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the worker's log lacks %s", want)
		}
	}
	// The audit log verifies, never holds the value, and tells the story
	// of each call: the credential by name, the blocked host.
	if out, err := exec.Command(testenv.Binary(t), "audit", "verify", "--state-dir", state).CombinedOutput(); err != nil || !strings.Contains(string(out), "ok:") {
		t.Errorf("perimeter audit verify: %v\n%s", err, out)
	}
	show, err := exec.Command(testenv.Binary(t), "audit", "show", "--session", id, "--state-dir", state).CombinedOutput()
	if err != nil {
		t.Errorf("perimeter audit show: %v\n%s", err, show)
	}
	for _, want := range []string{"canary", "127.0.0.1", "blocked.example.org", "bash"} {
		if !strings.Contains(string(show), want) {
			t.Errorf("perimeter audit show lacks %q:\n%s", want, show)
		}
	}
	files, _ := filepath.Glob(filepath.Join(state, "audit", "*"))
	for _, f := range files {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), canary) {
			t.Errorf("%s holds the real value", f)
		}
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	egressSpans := 0
	for _, s := range col.spans {
		if strings.HasPrefix(s.Name, "egress ") {
			egressSpans++
		}
		raw, _ := json.Marshal(s)
		if strings.Contains(string(raw), canary) {
			t.Errorf("span %s carries the real value", s.Name)
		}
	}
	if egressSpans < 2 {
		t.Errorf("%d egress spans exported, want one per request (at least 2)", egressSpans)
	}
}

// canaryUpstream is the HTTPS upstream of the e2e-canary scenario: it
// records the Authorization header of each request and echoes it back,
// which the egress proxy must redact on the way in.
type canaryUpstream struct {
	*httptest.Server
	port     string
	mu       sync.Mutex
	received []string
}

func newCanaryUpstream(t *testing.T) *canaryUpstream {
	u := &canaryUpstream{}
	u.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.received = append(u.received, r.Header.Get("Authorization"))
		u.mu.Unlock()
		fmt.Fprintf(w, "upstream saw %s\n", r.Header.Get("Authorization"))
	}))
	t.Cleanup(u.Close)
	_, u.port, _ = net.SplitHostPort(u.Listener.Addr().String())
	return u
}

// rootsPEM is the certificate a worker verifies the upstream with.
func (u *canaryUpstream) rootsPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.Certificate().Raw}))
}

// policy allows every call, and egress to the upstream only, with the
// canary secret substituted for its placeholder there.
func (u *canaryUpstream) policy() string {
	return `version: 1
default: {decision: allow}
egress:
  rules:
    - name: echo upstream
      hosts: [127.0.0.1]
      ports: [` + u.port + `]
  credentials:
    - secret: canary
      env: CANARY_TOKEN
      hosts: [127.0.0.1]
`
}

func (u *canaryUpstream) wantReceivedOnce(t *testing.T, auth string) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.received) != 1 || u.received[0] != auth {
		t.Errorf("the upstream received %q, want the real value once", u.received)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestACallWithARefusedRequestIsRolledBack: a call whose rule says
// rollback: on_error exits 0 after the egress proxy refused one of its
// requests; the worker restores the workspace to before the call, and the
// model reads why.
func TestACallWithARefusedRequestIsRolledBack(t *testing.T) {
	onIsolatingRuntimes(t, func(t *testing.T, runtime string) {
		state := stateDir(t)
		cp := startControlPlane(t, t.TempDir(), "")
		op := operator(cp.url)
		workerID := "e2e-egress-rollback-" + filepathBase(state)
		w := startWorker(t, cp.url, state, "--policy", "testdata/policies/egress-rollback.yaml",
			"--runtime", runtime, "--tool-timeout", "60s", "--worker-id", workerID)
		id := newSession(t, op, "e2e-egress-rollback")
		waitPassed(t, op, id)
		w.stop(t)
		noContainersOf(t, workerID)
		if logs := w.out.String(); !strings.Contains(logs, `msg="egress blocked"`) || !strings.Contains(logs, "host=uploads.example.org") {
			t.Errorf("the worker's log lacks the blocked request:\n%s", logs)
		}
	})
}
