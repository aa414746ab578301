package secrets

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

func TestBuildRejectsInvalidSpecs(t *testing.T) {
	vault := Backends{Vault: &VaultOptions{Address: "http://127.0.0.1:1", Token: "t"}}
	kube := Backends{Kubernetes: &KubernetesOptions{Client: fake.NewClientset()}}
	for _, tc := range []struct {
		name     string
		specs    []Spec
		backends Backends
		want     []string
	}{
		{"empty name", []Spec{{Env: "X"}}, Backends{}, []string{"secrets[0]: the name is empty"}},
		{"padded name", []Spec{{Name: " gh", Env: "X"}}, Backends{}, []string{`secrets[0] (" gh"): the name has leading or trailing spaces`}},
		{"duplicate name", []Spec{{Name: "gh", Env: "X"}, {Name: "gh", File: "/f"}}, Backends{},
			[]string{`secrets[1] ("gh"): the name is already used by secrets[0]`}},
		{"no source", []Spec{{Name: "gh"}}, Backends{}, []string{`secrets[0] ("gh"): set one of env, file, vault or kubernetes`}},
		{"two sources", []Spec{{Name: "gh", Env: "X", File: "/f"}}, Backends{},
			[]string{`secrets[0] ("gh"): set only one of env, file, vault or kubernetes, not env and file`}},
		{"three sources", []Spec{{Name: "gh", Env: "X", File: "/f", Vault: &VaultRef{Path: "p", Key: "k"}}}, vault,
			[]string{"not env and file and vault"}},
		{"vault and kubernetes", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p", Key: "k"}, Kubernetes: &KubernetesRef{Name: "n", Key: "k"}}},
			Backends{Vault: vault.Vault, Kubernetes: kube.Kubernetes}, []string{"not vault and kubernetes"}},
		{"vault without connection", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p", Key: "k"}}}, Backends{},
			[]string{`secrets[0] ("gh"): a vault secret needs the Vault connection configured`}},
		{"vault ref without key", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p"}}}, vault,
			[]string{`secrets[0] ("gh"): a Vault reference needs a key`}},
		{"vault ref without path", []Spec{{Name: "gh", Vault: &VaultRef{Path: "/", Key: "k"}}}, vault,
			[]string{`secrets[0] ("gh"): a Vault reference needs a path`}},
		{"negative version", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p", Key: "k", Version: -1}}}, vault,
			[]string{"version -1 is negative"}},
		{"paths in vault options", []Spec{{Name: "gh", Env: "X"}},
			Backends{Vault: &VaultOptions{Paths: map[string]VaultRef{"x": {Path: "p", Key: "k"}}}}, []string{"vault: Paths must be empty"}},
		{"kubernetes without connection", []Spec{{Name: "gh", Kubernetes: &KubernetesRef{Name: "n", Key: "k"}}}, vault,
			[]string{`secrets[0] ("gh"): a kubernetes secret needs the Kubernetes connection configured`}},
		{"kubernetes ref without name", []Spec{{Name: "gh", Kubernetes: &KubernetesRef{Key: "k"}}}, kube,
			[]string{`secrets[0] ("gh"): a Kubernetes reference needs the name of a Secret`}},
		{"kubernetes ref without key", []Spec{{Name: "gh", Kubernetes: &KubernetesRef{Name: "n"}}}, kube,
			[]string{`secrets[0] ("gh"): a Kubernetes reference needs a key`}},
		{"kubernetes ref with invalid namespace", []Spec{{Name: "gh", Kubernetes: &KubernetesRef{Namespace: "Team A", Name: "n", Key: "k"}}}, kube,
			[]string{`secrets[0] ("gh"): namespace "Team A" is not a valid namespace name`}},
		{"refs in kubernetes options", []Spec{{Name: "gh", Env: "X"}},
			Backends{Kubernetes: &KubernetesOptions{Refs: map[string]KubernetesRef{"x": {Name: "n", Key: "k"}}}}, []string{"kubernetes: Refs must be empty"}},
		{"invalid kubernetes options", []Spec{{Name: "gh", Env: "X"}},
			Backends{Kubernetes: &KubernetesOptions{Namespace: "-x"}}, []string{`kubernetes: namespace "-x" is not a valid namespace name`}},
		{"every problem at once", []Spec{{Env: "X"}, {Name: "a"}, {Name: "a", Env: "Y"}, {Name: "b", Kubernetes: &KubernetesRef{Name: "n"}}},
			Backends{Kubernetes: &KubernetesOptions{Client: fake.NewClientset(), Kubeconfig: "/k"}},
			[]string{"secrets[0]: the name is empty", `secrets[1] ("a"): set one of`, `secrets[2] ("a"): the name is already used`,
				`secrets[3] ("b"): a Kubernetes reference needs a key`, "kubernetes: a client cannot be combined with a kubeconfig"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, closeAll, err := Build(t.Context(), tc.specs, tc.backends)
			if err == nil {
				closeAll()
				t.Fatalf("Build succeeded: %v", src)
			}
			if !strings.HasPrefix(err.Error(), "invalid secrets configuration:") {
				t.Errorf("error %q does not say the configuration is invalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestBuildAssemblesEveryBackend(t *testing.T) {
	t.Setenv("PERIMETER_TEST_NPM", "npm_value")
	ghFile := filepath.Join(t.TempDir(), "gh")
	writePrivate(t, ghFile, "gh_value\n")
	f := newFakeVault(t)
	f.addToken("hvs.static", 0, false)
	f.put("pypi", map[string]any{"token": "pypi_value"})

	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.static"
	client := fake.NewClientset(
		k8sSecret("ci", "registry", map[string]string{"password": "registry_value"}),
		k8sSecret("shared", "docker", map[string]string{"token": "docker_value"}),
	)
	kube := KubernetesOptions{Client: client, Namespace: "ci"}
	src, closeAll, err := Build(t.Context(), []Spec{
		{Name: "npm", Env: "PERIMETER_TEST_NPM"},
		{Name: "github", File: ghFile},
		{Name: "pypi", Vault: &VaultRef{Path: "pypi", Key: "token"}},
		{Name: "registry", Kubernetes: &KubernetesRef{Name: "registry", Key: "password"}},
		{Name: "docker", Kubernetes: &KubernetesRef{Namespace: "shared", Name: "docker", Key: "token"}},
	}, Backends{Vault: &opts, Kubernetes: &kube})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.(*Cache); !ok {
		t.Errorf("Build returned a %T, want a *Cache", src)
	}
	for name, want := range map[string]string{"npm": "npm_value", "github": "gh_value", "pypi": "pypi_value", "registry": "registry_value", "docker": "docker_value"} {
		if got, err := src.Get(t.Context(), name); err != nil || string(got) != want {
			t.Errorf("Get(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if err := closeAll(); err != nil {
		t.Errorf("close: %v", err)
	}
	if opts.Paths != nil {
		t.Error("Build changed the caller's VaultOptions")
	}
	if kube.Refs != nil {
		t.Error("Build changed the caller's KubernetesOptions")
	}
}

func TestBuildLeavesKubernetesAloneWithoutKubernetesSecrets(t *testing.T) {
	t.Setenv("PERIMETER_TEST_NPM", "npm_value")
	// Building a client from this would fail; Build must not try.
	kube := &KubernetesOptions{Kubeconfig: filepath.Join(t.TempDir(), "missing")}
	src, closeAll, err := Build(t.Context(), []Spec{{Name: "npm", Env: "PERIMETER_TEST_NPM"}}, Backends{Kubernetes: kube})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	if got, err := src.Get(t.Context(), "npm"); err != nil || string(got) != "npm_value" {
		t.Errorf("Get = %q, %v", got, err)
	}

	_, _, err = Build(t.Context(), []Spec{{Name: "registry", Kubernetes: &KubernetesRef{Name: "registry", Key: "k"}}}, Backends{Kubernetes: kube})
	if err == nil || !strings.Contains(err.Error(), "kubernetes: loading the kubeconfig") {
		t.Errorf("Build with a kubernetes secret and a missing kubeconfig: %v", err)
	}
}

func TestBuildLeavesVaultAloneWithoutVaultSecrets(t *testing.T) {
	t.Setenv("PERIMETER_TEST_NPM", "npm_value")
	// Nothing listens here; Build must not try.
	vault := &VaultOptions{Address: "http://127.0.0.1:1", Token: "t", retryWait: time.Millisecond}
	src, closeAll, err := Build(t.Context(), []Spec{{Name: "npm", Env: "PERIMETER_TEST_NPM"}}, Backends{Vault: vault})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	if got, err := src.Get(t.Context(), "npm"); err != nil || string(got) != "npm_value" {
		t.Errorf("Get = %q, %v", got, err)
	}
}

func TestBuildReportsVaultConnectionFailure(t *testing.T) {
	f := newFakeVault(t)
	opts := testVaultOptions(f, &testenv.Buffer{})
	opts.Token = "hvs.unknown"
	_, _, err := Build(t.Context(), []Spec{{Name: "pypi", Vault: &VaultRef{Path: "p", Key: "k"}}}, Backends{Vault: &opts})
	if err == nil || !strings.Contains(err.Error(), "permission denied (HTTP 403)") {
		t.Errorf("Build with a rejected token: %v", err)
	}
}
