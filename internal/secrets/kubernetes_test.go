package secrets

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
)

func k8sSecret(namespace, name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Data:       map[string][]byte{},
	}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func newTestKubernetes(t *testing.T, client kubernetes.Interface, namespace string, refs map[string]KubernetesRef) *Kubernetes {
	t.Helper()
	k, err := NewKubernetes(KubernetesOptions{Client: client, Namespace: namespace, Refs: refs})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func notInCluster() (*rest.Config, error) { return nil, rest.ErrNotInCluster }

// secretGets lists the namespace/name of every Secret read, and fails the
// test on any other action: a Kubernetes never lists or watches.
func secretGets(t *testing.T, client *fake.Clientset) []string {
	t.Helper()
	var got []string
	for _, a := range client.Actions() {
		g, ok := a.(k8stesting.GetAction)
		if !ok || a.GetVerb() != "get" || a.GetResource().Resource != "secrets" {
			t.Errorf("unexpected action %s %s", a.GetVerb(), a.GetResource())
			continue
		}
		got = append(got, g.GetNamespace()+"/"+g.GetName())
	}
	return got
}

func TestKubernetesReadsSecretKey(t *testing.T) {
	t.Parallel()
	client := fake.NewClientset(
		k8sSecret("team-a", "github", map[string]string{"token": "ghp_value1\n", "user": "bot"}),
		k8sSecret("shared", "npm", map[string]string{"token": "npm_value"}),
	)
	k := newTestKubernetes(t, client, "team-a", map[string]KubernetesRef{
		"github": {Name: "github", Key: "token"},
		"npm":    {Namespace: "shared", Name: "npm", Key: "token"},
	})

	got, err := k.Get(t.Context(), "github")
	if err != nil || string(got) != "ghp_value1" {
		t.Fatalf("Get(github) = %q, %v; want ghp_value1 (one trailing newline trimmed)", got, err)
	}
	clear(got) // the caller owns the value; clearing it must not reach the source
	if got, err := k.Get(t.Context(), "github"); err != nil || string(got) != "ghp_value1" {
		t.Errorf("second Get(github) = %q, %v; want ghp_value1", got, err)
	}
	if got, err := k.Get(t.Context(), "npm"); err != nil || string(got) != "npm_value" {
		t.Errorf("Get(npm) = %q, %v; want npm_value", got, err)
	}
	if diff := cmp.Diff([]string{"team-a/github", "team-a/github", "shared/npm"}, secretGets(t, client)); diff != "" {
		t.Errorf("Secrets read (-want +got):\n%s", diff)
	}
	if _, err := k.Get(t.Context(), "pypi"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unconfigured name: %v, want ErrNotFound", err)
	}
	if _, err := k.Get(canceled(t.Context()), "github"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestKubernetesReportsMissingValuesAsNotFound(t *testing.T) {
	t.Parallel()
	const canary = "canary-6d1f0b"
	client := fake.NewClientset(
		k8sSecret("team-a", "github", map[string]string{"other": canary, "empty": "", "newline": "\n"}),
	)
	k := newTestKubernetes(t, client, "team-a", map[string]KubernetesRef{
		"no-secret":  {Name: "gone", Key: "token"},
		"no-key":     {Name: "github", Key: "token"},
		"empty":      {Name: "github", Key: "empty"},
		"newline":    {Name: "github", Key: "newline"},
		"other-ns":   {Namespace: "team-b", Name: "github", Key: "other"},
		"no-key-bis": {Name: "github", Key: "Other"},
	})
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"no-secret", []string{`secret "no-secret": `, "kubernetes secret team-a/gone does not exist"}},
		{"no-key", []string{`secret "no-key": `, `kubernetes secret team-a/github has no key "token"`}},
		{"no-key-bis", []string{`secret "no-key-bis": `, `kubernetes secret team-a/github has no key "Other"`}},
		{"empty", []string{`secret "empty": `, `kubernetes secret team-a/github key "empty" is empty`}},
		{"newline", []string{`secret "newline": `, `kubernetes secret team-a/github key "newline" is empty`}},
		{"other-ns", []string{`secret "other-ns": `, "kubernetes secret team-b/github does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := k.Get(t.Context(), tc.name)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get = %q, %v; want ErrNotFound", got, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error %q shows a value", err)
			}
		})
	}
}

func TestKubernetesExplainsMissingPermission(t *testing.T) {
	t.Parallel()
	secrets := schema.GroupResource{Resource: "secrets"}
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{
			"forbidden",
			apierrors.NewForbidden(secrets, "github", errors.New(`User "system:serviceaccount:ci:perimeter" cannot get resource "secrets" in API group "" in the namespace "team-a"`)),
			[]string{
				`secret "github": kubernetes read team-a/github is forbidden`,
				`RBAC permission to get secrets in namespace team-a`,
				`verb "get" on resource "secrets"`,
				`User "system:serviceaccount:ci:perimeter" cannot get resource "secrets"`,
				"(HTTP 403)",
			},
		},
		{
			"unauthorized",
			apierrors.NewUnauthorized("Unauthorized"),
			[]string{
				`secret "github": kubernetes read team-a/github`,
				"did not accept the credentials",
				`RBAC permission to get secrets in namespace team-a`,
				"(HTTP 401)",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(k8sSecret("team-a", "github", map[string]string{"token": "v"}))
			client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, tc.err
			})
			k := newTestKubernetes(t, client, "team-a", map[string]KubernetesRef{"github": {Name: "github", Key: "token"}})
			_, err := k.Get(t.Context(), "github")
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("Get: %v, want a permission error that is not ErrNotFound", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestKubernetesNamespaceDefaults(t *testing.T) {
	dir := t.TempDir()
	nsFile := filepath.Join(dir, "namespace")
	if err := os.WriteFile(nsFile, []byte("team-b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kubeconfig := writeKubeconfig(t, "https://127.0.0.1:6443", nil, "kube-token")
	inCluster := func() (*rest.Config, error) { return &rest.Config{Host: "https://10.96.0.1:443"}, nil }

	for _, tc := range []struct {
		name     string
		opts     KubernetesOptions
		wantNS   string
		wantHost string // of the client built; empty for an injected one
	}{
		{"injected client", KubernetesOptions{Client: fake.NewClientset()}, "default", ""},
		{"injected client with namespace", KubernetesOptions{Client: fake.NewClientset(), Namespace: "team-a"}, "team-a", ""},
		{"in cluster: the pod's namespace", KubernetesOptions{inClusterConfig: inCluster, namespaceFile: nsFile}, "team-b", "10.96.0.1:443"},
		{"in cluster without a namespace file", KubernetesOptions{inClusterConfig: inCluster, namespaceFile: filepath.Join(dir, "none")}, "default", "10.96.0.1:443"},
		{"in cluster with namespace", KubernetesOptions{inClusterConfig: inCluster, namespaceFile: nsFile, Namespace: "team-a"}, "team-a", "10.96.0.1:443"},
		{"kubeconfig: the context's namespace", KubernetesOptions{Kubeconfig: kubeconfig, inClusterConfig: inCluster}, "team-c", "127.0.0.1:6443"},
		{"kubeconfig with another context", KubernetesOptions{Kubeconfig: kubeconfig, Context: "other"}, "team-d", "127.0.0.1:6443"},
		{"kubeconfig context without namespace", KubernetesOptions{Kubeconfig: kubeconfig, Context: "bare"}, "default", "127.0.0.1:6443"},
		{"kubeconfig with namespace", KubernetesOptions{Kubeconfig: kubeconfig, Namespace: "team-a"}, "team-a", "127.0.0.1:6443"},
		{"KUBECONFIG outside a cluster", KubernetesOptions{inClusterConfig: notInCluster}, "team-c", "127.0.0.1:6443"},
		{"a context means a kubeconfig, even in a cluster", KubernetesOptions{Context: "other", inClusterConfig: inCluster}, "team-d", "127.0.0.1:6443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", kubeconfig)
			k, err := NewKubernetes(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if k.namespace != tc.wantNS {
				t.Errorf("namespace = %q, want %q", k.namespace, tc.wantNS)
			}
			if tc.wantHost != "" {
				if got := k.client.CoreV1().RESTClient().Get().URL().Host; got != tc.wantHost {
					t.Errorf("API server = %s, want %s", got, tc.wantHost)
				}
			}
		})
	}
}

func TestKubernetesReadsFromTheBackendNamespace(t *testing.T) {
	t.Parallel()
	client := fake.NewClientset(
		k8sSecret("default", "github", map[string]string{"token": "in-default"}),
		k8sSecret("team-a", "github", map[string]string{"token": "in-team-a"}),
	)
	refs := map[string]KubernetesRef{"github": {Name: "github", Key: "token"}}
	for ns, want := range map[string]string{"": "in-default", "team-a": "in-team-a"} {
		k := newTestKubernetes(t, client, ns, refs)
		if got, err := k.Get(t.Context(), "github"); err != nil || string(got) != want {
			t.Errorf("with namespace %q: Get = %q, %v; want %q", ns, got, err, want)
		}
	}
}

func TestNewKubernetesRejectsBadOptions(t *testing.T) {
	kubeconfig := writeKubeconfig(t, "https://127.0.0.1:6443", nil, "kube-token")
	emptyHome := t.TempDir()
	for _, tc := range []struct {
		name string
		opts KubernetesOptions
		want string
	}{
		{"client and kubeconfig", KubernetesOptions{Client: fake.NewClientset(), Kubeconfig: kubeconfig}, "a client cannot be combined with a kubeconfig or context"},
		{"client and context", KubernetesOptions{Client: fake.NewClientset(), Context: "main"}, "a client cannot be combined"},
		{"invalid namespace", KubernetesOptions{Client: fake.NewClientset(), Namespace: "Team_A"}, `namespace "Team_A" is not a valid namespace name`},
		{"negative timeout", KubernetesOptions{Client: fake.NewClientset(), Timeout: -1}, "timeout -1ns is negative"},
		{"ref without name", KubernetesOptions{Client: fake.NewClientset(), Refs: map[string]KubernetesRef{"gh": {Key: "k"}}}, `secret "gh": a Kubernetes reference needs the name of a Secret`},
		{"ref without key", KubernetesOptions{Client: fake.NewClientset(), Refs: map[string]KubernetesRef{"gh": {Name: "n"}}}, `secret "gh": a Kubernetes reference needs a key`},
		{"ref with invalid key", KubernetesOptions{Client: fake.NewClientset(), Refs: map[string]KubernetesRef{"gh": {Name: "n", Key: "a/b"}}}, `"a/b" is not a valid Secret key`},
		{"ref with invalid name", KubernetesOptions{Client: fake.NewClientset(), Refs: map[string]KubernetesRef{"gh": {Name: "GitHub", Key: "k"}}}, `"GitHub" is not a valid Secret name`},
		{"ref with invalid namespace", KubernetesOptions{Client: fake.NewClientset(), Refs: map[string]KubernetesRef{"gh": {Namespace: "a.b", Name: "n", Key: "k"}}}, `namespace "a.b" is not a valid namespace name`},
		{"no configuration", KubernetesOptions{inClusterConfig: notInCluster}, "not running in a cluster and no kubeconfig found"},
		{"missing kubeconfig", KubernetesOptions{Kubeconfig: filepath.Join(emptyHome, "none")}, "loading the kubeconfig"},
		{"unknown context", KubernetesOptions{Kubeconfig: kubeconfig, Context: "nope"}, `context was not found for specified context: nope`},
		{"plain http", KubernetesOptions{Kubeconfig: kubeconfig, Context: "plain"}, "API server http://k8s.example.com is plain http"},
		{"no certificate verification", KubernetesOptions{Kubeconfig: kubeconfig, Context: "insecure"}, "turns off certificate verification for API server https://k8s.example.com"},
		{"unusable service account", KubernetesOptions{inClusterConfig: func() (*rest.Config, error) {
			return nil, &os.PathError{Op: "open", Path: "/var/run/secrets/kubernetes.io/serviceaccount/token", Err: os.ErrNotExist}
		}}, "running in a cluster, but its service account cannot be used"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", filepath.Join(emptyHome, "none"))
			t.Setenv("HOME", emptyHome)
			k, err := NewKubernetes(tc.opts)
			if err == nil {
				t.Fatalf("NewKubernetes succeeded: %+v", k)
			}
			if !strings.HasPrefix(err.Error(), "kubernetes: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to start with \"kubernetes: \" and say %q", err, tc.want)
			}
		})
	}
}

// TestKubernetesThroughTheAPIServer goes through client-go's real transport
// and decoding, with a kubeconfig.
func TestKubernetesThroughTheAPIServer(t *testing.T) {
	t.Parallel()
	f := newFakeAPIServer(t)
	f.put("team-c", "github", map[string]string{"token": "ghp_value1"})
	f.cannedResponse("team-c", "denied", func(w http.ResponseWriter) {
		writeStatus(w, http.StatusForbidden, metav1.StatusReasonForbidden,
			`secrets "denied" is forbidden: User "bot" cannot get resource "secrets" in API group "" in the namespace "team-c"`)
	})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f.cannedResponse("team-c", "slow", func(http.ResponseWriter) { <-release })
	k, err := NewKubernetes(KubernetesOptions{
		Kubeconfig: writeKubeconfig(t, f.URL, f.CA, "kube-token"),
		Refs: map[string]KubernetesRef{
			"github":  {Name: "github", Key: "token"},
			"missing": {Name: "missing", Key: "token"},
			"denied":  {Name: "denied", Key: "token"},
			"slow":    {Name: "slow", Key: "token"},
		},
		Timeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}

	if got, err := k.Get(t.Context(), "github"); err != nil || string(got) != "ghp_value1" {
		t.Errorf("Get(github) = %q, %v; want ghp_value1", got, err)
	}
	if _, err := k.Get(t.Context(), "missing"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "team-c/missing does not exist") {
		t.Errorf("Get(missing): %v, want ErrNotFound naming team-c/missing", err)
	}
	_, err = k.Get(t.Context(), "denied")
	if err == nil || !strings.Contains(err.Error(), "get secrets in namespace team-c") || !strings.Contains(err.Error(), `User "bot" cannot get resource "secrets"`) {
		t.Errorf("Get(denied): %v, want the RBAC permission needed and the server's message", err)
	}
	if _, err := k.Get(t.Context(), "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get(slow): %v, want the timeout", err)
	}

	want := []fakeAPIRequest{
		{"GET", "/api/v1/namespaces/team-c/secrets/github", "Bearer kube-token"},
		{"GET", "/api/v1/namespaces/team-c/secrets/missing", "Bearer kube-token"},
		{"GET", "/api/v1/namespaces/team-c/secrets/denied", "Bearer kube-token"},
		{"GET", "/api/v1/namespaces/team-c/secrets/slow", "Bearer kube-token"},
	}
	if diff := cmp.Diff(want, f.requests()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}
