package secrets

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestSourcesKeepTheContract holds every Source to the same behaviour: the
// value when it is there; ErrNotFound, with an error that starts by naming
// the secret, when it is missing, empty, or not configured at all.
func TestSourcesKeepTheContract(t *testing.T) {
	// Each builder configures "present" (value "v1"), "empty" and "missing";
	// "unconfigured" is left out.
	builders := map[string]func(t *testing.T) Source{
		"env": func(t *testing.T) Source {
			t.Setenv("PERIMETER_TEST_PRESENT", "v1")
			t.Setenv("PERIMETER_TEST_EMPTY", "")
			unsetenv(t, "PERIMETER_TEST_MISSING_0b7d")
			return NewEnv(map[string]string{"present": "PERIMETER_TEST_PRESENT", "empty": "PERIMETER_TEST_EMPTY", "missing": "PERIMETER_TEST_MISSING_0b7d"})
		},
		"file": func(t *testing.T) Source {
			dir := t.TempDir()
			writePrivate(t, filepath.Join(dir, "present"), "v1\n")
			writePrivate(t, filepath.Join(dir, "empty"), "")
			return NewFile(map[string]string{"present": filepath.Join(dir, "present"), "empty": filepath.Join(dir, "empty"), "missing": filepath.Join(dir, "missing")})
		},
		"vault": func(t *testing.T) Source {
			f := newFakeVault(t)
			f.addToken("hvs.static", 0, false)
			f.put("present", map[string]any{"k": "v1"})
			f.put("empty", map[string]any{"k": ""})
			opts := testVaultOptions(f, &testenv.Buffer{})
			opts.Token = "hvs.static"
			opts.Paths = map[string]VaultRef{"present": {Path: "present", Key: "k"}, "empty": {Path: "empty", Key: "k"}, "missing": {Path: "missing", Key: "k"}}
			v, err := NewVault(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { v.Close() })
			return v
		},
		"kubernetes": func(t *testing.T) Source {
			client := fake.NewClientset(
				k8sSecret("default", "present", map[string]string{"k": "v1"}),
				k8sSecret("default", "empty", map[string]string{"k": ""}),
			)
			return newTestKubernetes(t, client, "", map[string]KubernetesRef{"present": {Name: "present", Key: "k"}, "empty": {Name: "empty", Key: "k"}, "missing": {Name: "missing", Key: "k"}})
		},
		"kubernetes through the API server": func(t *testing.T) Source {
			f := newFakeAPIServer(t)
			f.put("team-c", "present", map[string]string{"k": "v1\n"})
			f.put("team-c", "empty", map[string]string{"k": "\n"})
			k, err := NewKubernetes(KubernetesOptions{
				Kubeconfig: writeKubeconfig(t, f.URL, f.CA, "kube-token"),
				Refs:       map[string]KubernetesRef{"present": {Name: "present", Key: "k"}, "empty": {Name: "empty", Key: "k"}, "missing": {Name: "missing", Key: "k"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			return k
		},
		"cache over file": func(t *testing.T) Source {
			dir := t.TempDir()
			writePrivate(t, filepath.Join(dir, "present"), "v1")
			writePrivate(t, filepath.Join(dir, "empty"), "\n")
			return NewCache(NewFile(map[string]string{"present": filepath.Join(dir, "present"), "empty": filepath.Join(dir, "empty"), "missing": filepath.Join(dir, "missing")}), time.Minute)
		},
		"multi": func(t *testing.T) Source {
			t.Setenv("PERIMETER_TEST_PRESENT", "v1")
			t.Setenv("PERIMETER_TEST_EMPTY", "")
			unsetenv(t, "PERIMETER_TEST_MISSING_0b7d")
			env := NewEnv(map[string]string{"present": "PERIMETER_TEST_PRESENT", "empty": "PERIMETER_TEST_EMPTY", "missing": "PERIMETER_TEST_MISSING_0b7d"})
			return Multi{"present": env, "empty": env, "missing": env}
		},
	}
	for backend, build := range builders {
		t.Run(backend, func(t *testing.T) {
			src := build(t)
			got, err := src.Get(t.Context(), "present")
			if err != nil || string(got) != "v1" {
				t.Errorf("Get(present) = %q, %v; want v1", got, err)
			}
			for _, name := range []string{"empty", "missing", "unconfigured"} {
				_, err := src.Get(t.Context(), name)
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("Get(%s): %v, want ErrNotFound", name, err)
					continue
				}
				if prefix := `secret "` + name + `": `; !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("Get(%s): error %q does not start with %q", name, err, prefix)
				}
			}
		})
	}
}

// unsetenv unsets a variable for the rest of the test.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "") // restores the old value at cleanup
	os.Unsetenv(name)
}
