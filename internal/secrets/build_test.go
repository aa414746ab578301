package secrets

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBuildRejectsInvalidSpecs(t *testing.T) {
	vault := &VaultOptions{Address: "http://127.0.0.1:1", Token: "t"}
	for _, tc := range []struct {
		name  string
		specs []Spec
		vault *VaultOptions
		want  []string
	}{
		{"empty name", []Spec{{Env: "X"}}, nil, []string{"secrets[0]: the name is empty"}},
		{"padded name", []Spec{{Name: " gh", Env: "X"}}, nil, []string{`secrets[0] (" gh"): the name has leading or trailing spaces`}},
		{"duplicate name", []Spec{{Name: "gh", Env: "X"}, {Name: "gh", File: "/f"}}, nil,
			[]string{`secrets[1] ("gh"): the name is already used by secrets[0]`}},
		{"no source", []Spec{{Name: "gh"}}, nil, []string{`secrets[0] ("gh"): set one of env, file or vault`}},
		{"two sources", []Spec{{Name: "gh", Env: "X", File: "/f"}}, nil,
			[]string{`secrets[0] ("gh"): set only one of env, file or vault, not env and file`}},
		{"three sources", []Spec{{Name: "gh", Env: "X", File: "/f", Vault: &VaultRef{Path: "p", Key: "k"}}}, vault,
			[]string{"not env and file and vault"}},
		{"vault without connection", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p", Key: "k"}}}, nil,
			[]string{`secrets[0] ("gh"): a vault secret needs the Vault connection configured`}},
		{"vault ref without key", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p"}}}, vault,
			[]string{`secrets[0] ("gh"): a Vault reference needs a key`}},
		{"vault ref without path", []Spec{{Name: "gh", Vault: &VaultRef{Path: "/", Key: "k"}}}, vault,
			[]string{`secrets[0] ("gh"): a Vault reference needs a path`}},
		{"negative version", []Spec{{Name: "gh", Vault: &VaultRef{Path: "p", Key: "k", Version: -1}}}, vault,
			[]string{"version -1 is negative"}},
		{"paths in vault options", []Spec{{Name: "gh", Env: "X"}},
			&VaultOptions{Paths: map[string]VaultRef{"x": {Path: "p", Key: "k"}}}, []string{"vault: Paths must be empty"}},
		{"every problem at once", []Spec{{Env: "X"}, {Name: "a"}, {Name: "a", Env: "Y"}}, nil,
			[]string{"secrets[0]: the name is empty", `secrets[1] ("a"): set one of`, `secrets[2] ("a"): the name is already used`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, closeAll, err := Build(t.Context(), tc.specs, tc.vault)
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

	opts := testVaultOptions(f, &logBuffer{})
	opts.Token = "hvs.static"
	src, closeAll, err := Build(t.Context(), []Spec{
		{Name: "npm", Env: "PERIMETER_TEST_NPM"},
		{Name: "github", File: ghFile},
		{Name: "pypi", Vault: &VaultRef{Path: "pypi", Key: "token"}},
	}, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.(*Cache); !ok {
		t.Errorf("Build returned a %T, want a *Cache", src)
	}
	for name, want := range map[string]string{"npm": "npm_value", "github": "gh_value", "pypi": "pypi_value"} {
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
}

func TestBuildLeavesVaultAloneWithoutVaultSecrets(t *testing.T) {
	t.Setenv("PERIMETER_TEST_NPM", "npm_value")
	// Nothing listens here; Build must not try.
	vault := &VaultOptions{Address: "http://127.0.0.1:1", Token: "t", retryWait: time.Millisecond}
	src, closeAll, err := Build(t.Context(), []Spec{{Name: "npm", Env: "PERIMETER_TEST_NPM"}}, vault)
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
	opts := testVaultOptions(f, &logBuffer{})
	opts.Token = "hvs.unknown"
	_, _, err := Build(t.Context(), []Spec{{Name: "pypi", Vault: &VaultRef{Path: "p", Key: "k"}}}, &opts)
	if err == nil || !strings.Contains(err.Error(), "permission denied (HTTP 403)") {
		t.Errorf("Build with a rejected token: %v", err)
	}
}
