package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestShippedExampleConfigParses(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	c, err := Load(filepath.Join(filepath.Dir(file), "..", "..", "examples", "perimeter.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Worker.ToolTimeout.D(0); got != 120*time.Second {
		t.Errorf("tool_timeout = %v, want 2m", got)
	}
	if len(c.CustomTools) != 1 || c.CustomTools[0].Name != "ticket_lookup" {
		t.Errorf("custom tools = %+v", c.CustomTools)
	}
}

func TestConfigErrorsSayWhatToFix(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"Empty", "", `test.yaml is empty: a config file needs at least "version: 1"`},
		{"OnlyComments", "# nothing yet\n", "test.yaml is empty"},
		{"UnknownKey", "version: 1\nworker:\n  max_sesions: 3\n", "max_sesions"},
		{"WrongVersion", "version: 2\n", "version is 2"},
		{"SecondDocument", "version: 1\n---\nworker:\n  max_sessions: 8\n", "test.yaml: a second YAML document starts at line 2"},
		{"MissingVersion", "worker: {}\n", "version is 0"},
		{"BadDuration", "version: 1\nworker:\n  max_idle: soon\n", "not a duration"},
		{"CustomToolWithoutCommand", "version: 1\ncustom_tools:\n  - name: x\n", `custom tool "x": command is required`},
		{"CustomToolWithoutName", "version: 1\ncustom_tools:\n  - command: true\n", "name is required"},
		{"NegativeMaxSessions", "version: 1\nworker:\n  max_sessions: -1\n", "worker.max_sessions (or --max-sessions) is -1"},
		{"NegativeToolTimeout", "version: 1\nworker:\n  tool_timeout: -5s\n", "worker.tool_timeout (or --tool-timeout) is -5s"},
		{"NegativeDrainTimeout", "version: 1\nworker:\n  drain_timeout: -1m\n", "worker.drain_timeout (or --drain-timeout) is -1m0s"},
		{"NegativePIDs", "version: 1\nsandbox:\n  limits: {pids: -1}\n", "sandbox.limits.pids is negative"},
		{"NegativeCPUs", "version: 1\nsandbox:\n  limits: {cpus: -0.5}\n", "sandbox.limits.cpus is negative"},
		{"NegativeWarmPool", "version: 1\nsandbox:\n  warm_pool: -2\n", "sandbox.warm_pool is negative"},
		{"NegativeCheckpointCount", "version: 1\ncheckpoints:\n  max_count: -1\n", "checkpoints.max_count is negative"},
		{"NegativeCheckpointAge", "version: 1\ncheckpoints:\n  max_age: -24h\n", "checkpoints.max_age is negative"},
		{"NegativeCheckpointEntries", "version: 1\ncheckpoints:\n  max_entries: -1\n", "checkpoints.max_entries is negative"},
		{"NegativeLeaseTTL", "version: 1\ncontrolplane:\n  ttl: -5s\n", "controlplane.ttl is negative"},
		{"NegativeMaxOutputBytes", "version: 1\nworker:\n  max_output_bytes: -1\n", "worker.max_output_bytes is -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "test.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// max_idle is the one worker duration whose negative value means
// something: no idle timeout.
func TestANegativeMaxIdleDisablesTheIdleTimeout(t *testing.T) {
	c, err := Parse([]byte("version: 1\nworker:\n  max_idle: -1s\n"), "test.yaml")
	if err != nil || c.Worker.MaxIdle >= 0 {
		t.Fatalf("max_idle: -1s: %+v, %v", c, err)
	}
}

func TestEmptyConfigPathMeansDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil || c.Version != Version {
		t.Fatalf("Load(\"\") = %+v, %v", c, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: err = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestSandboxLimitsReadHumanSizes(t *testing.T) {
	c, err := Parse([]byte("version: 1\nsandbox:\n  limits: {memory: 512MiB, tmp: 64m, pids: 128, cpus: 0.5}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Sandbox.Limits
	if l.Memory != 512<<20 || l.Tmp != 64<<20 || l.PIDs != 128 || l.CPUs != 0.5 {
		t.Errorf("limits = %+v", l)
	}
	for _, bad := range []string{"memory: lots", "memory: -1"} {
		if _, err := Parse([]byte("version: 1\nsandbox:\n  limits: {"+bad+"}\n"), "t.yaml"); err == nil || !strings.Contains(err.Error(), "not a size") {
			t.Errorf("%s: err = %v", bad, err)
		}
	}
	if _, err := Parse([]byte("version: 1\nsandbox: {restart: sometimes}\n"), "t.yaml"); err == nil || !strings.Contains(err.Error(), "on-failure or never") {
		t.Errorf("bad restart: err = %v", err)
	}
}

func TestSecretsAndTheirBackendsParse(t *testing.T) {
	c, err := Parse([]byte(`version: 1
secrets:
  - {name: github, env: GITHUB_TOKEN}
  - {name: pypi, vault: {path: ci/pypi, key: token}}
  - {name: deploy, kubernetes: {name: deploy-key, key: token}}
secret_backends:
  vault: {address: "https://vault.internal:8200", role_id: perimeter, timeout: 5s}
  kubernetes: {namespace: agents}
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Secrets) != 3 || c.Secrets[0].Env != "GITHUB_TOKEN" || c.Secrets[1].Vault.Path != "ci/pypi" || c.Secrets[2].Kubernetes.Name != "deploy-key" {
		t.Errorf("secrets = %+v", c.Secrets)
	}
	if v := c.SecretBackends.Vault; v == nil || v.RoleID != "perimeter" || v.Timeout != 5*time.Second {
		t.Errorf("vault = %+v", v)
	}
	if k := c.SecretBackends.Kubernetes; k == nil || k.Namespace != "agents" {
		t.Errorf("kubernetes = %+v", k)
	}
	// A token never comes from the file.
	if _, err := Parse([]byte("version: 1\nsecret_backends:\n  vault: {token: s.abc}\n"), "test.yaml"); err == nil {
		t.Error("a Vault token in the config file was accepted")
	}
}
