package secrets

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// TestErrorsNeverContainValues plants a canary value behind every failure
// mode it can reach and checks that no error, and no log line, repeats it.
func TestErrorsNeverContainValues(t *testing.T) {
	const canary = "canary-3f9c1e7a5b"
	dir := t.TempDir()
	exposed := filepath.Join(dir, "exposed")
	writePrivate(t, exposed, canary)
	if err := os.Chmod(exposed, 0o644); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge")
	writePrivate(t, huge, strings.Repeat(canary, maxFileSize/len(canary)+1))
	t.Setenv("PERIMETER_TEST_CANARY", canary)
	t.Setenv("PERIMETER_TEST_EMPTY", "")

	f := newFakeVault(t)
	f.roleID, f.secretID = "role-1", "right-secret-id"
	f.addToken("hvs.static", 0, false)
	f.put("other-key", map[string]any{"unrelated": canary})
	f.put("object", map[string]any{"k": map[string]any{"nested": canary}})
	f.put("array", map[string]any{"k": []any{canary}})
	f.put("deleted", map[string]any{"k": canary})
	f.put("deleted", nil)
	raw := func(status int, body string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	f.cannedResponse("proxy-error", raw(http.StatusBadGateway, "<html>upstream sent "+canary+"</html>"))
	f.cannedResponse("truncated", raw(http.StatusOK, `{"data":{"data":{"k":"`+canary))
	f.cannedResponse("wrong-shape", raw(http.StatusOK, `{"data":"`+canary+`"}`))
	f.cannedResponse("junk", raw(http.StatusOK, canary))
	f.cannedResponse("forbidden", raw(http.StatusForbidden, `{"errors":["permission denied"]}`))

	logs := &testenv.Buffer{}
	opts := testVaultOptions(f, logs)
	opts.Token = "hvs.static"
	opts.Paths = map[string]VaultRef{}
	for _, p := range []string{"other-key", "object", "array", "deleted", "proxy-error", "truncated", "wrong-shape", "junk", "forbidden"} {
		opts.Paths["vault-"+p] = VaultRef{Path: p, Key: "k"}
	}
	v, err := NewVault(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	multi := Multi{
		"env-unset":        NewEnv(map[string]string{"env-unset": "PERIMETER_TEST_UNSET_8e2f"}),
		"env-empty":        NewEnv(map[string]string{"env-empty": "PERIMETER_TEST_EMPTY"}),
		"env-unconfigured": NewEnv(map[string]string{"other": "PERIMETER_TEST_CANARY"}),
		"file-exposed":     NewFile(map[string]string{"file-exposed": exposed}),
		"file-huge":        NewFile(map[string]string{"file-huge": huge}),
		"file-missing":     NewFile(map[string]string{"file-missing": filepath.Join(dir, "missing")}),
	}
	for name := range opts.Paths {
		multi[name] = v
	}

	// Kubernetes: a fake clientset for the errors client-go builds, and
	// the fake API server (with the canary as the bearer token too) for
	// what client-go makes of the answers it decodes.
	var klogs bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&klogs)
	defer func() {
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	}()
	secretsGR := schema.GroupResource{Resource: "secrets"}
	client := fake.NewClientset(
		k8sSecret("default", "other-key", map[string]string{"unrelated": canary}),
		k8sSecret("default", "empty", map[string]string{"k": "", "unrelated": canary}),
	)
	client.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		switch a.(k8stesting.GetAction).GetName() {
		case "proxy-error":
			return true, nil, apierrors.NewGenericServerResponse(http.StatusBadGateway, "get", secretsGR, "proxy-error", "<html>upstream sent "+canary+"</html>", 0, true)
		case "proxy-forbidden":
			return true, nil, apierrors.NewGenericServerResponse(http.StatusForbidden, "get", secretsGR, "proxy-forbidden", canary, 0, true)
		case "undecodable":
			return true, nil, fmt.Errorf(`Object 'Kind' is missing in '{"data":{"k":%q}}'`, canary)
		}
		return false, nil, nil
	})
	kubeRefs := map[string]KubernetesRef{}
	for _, n := range []string{"other-key", "empty", "proxy-error", "proxy-forbidden", "undecodable"} {
		kubeRefs["kube-"+n] = KubernetesRef{Name: n, Key: "k"}
	}
	kube := newTestKubernetes(t, client, "", kubeRefs)
	for name := range kubeRefs {
		multi[name] = kube
	}

	api := newFakeAPIServer(t)
	b64 := base64.StdEncoding.EncodeToString([]byte(canary))
	api.put("team-c", "other-key", map[string]string{"unrelated": canary})
	typed := func(status int, contentType, body string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	for name, respond := range map[string]func(http.ResponseWriter){
		"proxy-error":     typed(http.StatusBadGateway, "text/html", "<html>upstream sent "+canary+"</html>"),
		"proxy-forbidden": typed(http.StatusForbidden, "text/plain", "denied: "+canary),
		"unauthorized":    typed(http.StatusUnauthorized, "text/plain", "bad token "+canary),
		"truncated":       typed(http.StatusOK, "application/json", `{"kind":"Secret","apiVersion":"v1","data":{"k":"`+b64),
		"junk":            typed(http.StatusOK, "application/json", canary),
		"not-base64":      typed(http.StatusOK, "application/json", `{"kind":"Secret","apiVersion":"v1","data":{"k":"`+canary+`"}}`),
		"no-kind":         typed(http.StatusOK, "application/json", `{"metadata":{"name":"`+canary+`"},"data":{"unrelated":"`+b64+`"}}`),
		"wrong-kind":      typed(http.StatusOK, "application/json", `{"kind":"ConfigMap","apiVersion":"v1","data":{"k":"`+canary+`"}}`),
		"wrong-type":      typed(http.StatusOK, "application/json", `{"kind":"Secret","apiVersion":"v1","data":["`+canary+`"]}`),
	} {
		api.cannedResponse("team-c", name, respond)
	}
	apiRefs := map[string]KubernetesRef{}
	for _, n := range []string{"other-key", "proxy-error", "proxy-forbidden", "unauthorized", "truncated", "junk", "not-base64", "no-kind", "wrong-kind", "wrong-type"} {
		apiRefs["kube-api-"+n] = KubernetesRef{Name: n, Key: "k"}
	}
	kubeAPI, err := NewKubernetes(KubernetesOptions{Kubeconfig: writeKubeconfig(t, api.URL, api.CA, canary), Refs: apiRefs})
	if err != nil {
		t.Fatal(err)
	}
	for name := range apiRefs {
		multi[name] = kubeAPI
	}
	cache := NewCache(multi, time.Minute)

	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
			return
		}
		t.Logf("%s: %v", what, err)
		for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
			if strings.Contains(text, canary) || strings.Contains(text, b64) {
				t.Errorf("%s: the error shows the value: %s", what, text)
			}
		}
	}
	names := []string{"unrouted"}
	for name := range multi {
		names = append(names, name)
	}
	for _, name := range names {
		_, err := cache.Get(t.Context(), name)
		check(name, err)
	}

	// Credentials are values too: a rejected token or AppRole secret ID
	// must not show up in the error either.
	ctx := t.Context()
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, Token: canary, retryWait: time.Millisecond})
	check("rejected token", err)
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, RoleID: "role-1", SecretID: canary, retryWait: time.Millisecond})
	check("rejected secret ID", err)
	_, err = NewVault(ctx, VaultOptions{Address: f.URL, RoleID: "role-1", SecretIDFile: exposed, retryWait: time.Millisecond})
	check("exposed secret ID file", err)
	_, err = NewVault(ctx, VaultOptions{Address: "http://vault.example.com", Token: canary})
	check("refused address", err)
	_, err = cache.Get(canceled(ctx), "vault-other-key")
	check("cancelled", err)
	_, err = NewKubernetes(KubernetesOptions{Kubeconfig: writeKubeconfig(t, api.URL, api.CA, canary), Context: "nope"})
	check("kubeconfig with an unknown context", err)
	for i, bad := range []string{
		"users:\n- name: bot\n  user:\n    token: [" + canary + "\n",
		"users: \"" + canary + "\"\n",
		"users:\n- name: bot\n  user:\n    token: {t: " + canary + "}\n",
		"apiVersion: v1\nkind: Config\n" + canary + "\n",
		canary,
	} {
		path := filepath.Join(dir, fmt.Sprintf("kubeconfig-%d", i))
		writePrivate(t, path, bad)
		_, err = NewKubernetes(KubernetesOptions{Kubeconfig: path})
		check(fmt.Sprintf("malformed kubeconfig %d", i), err)
	}

	if strings.Contains(logs.String(), canary) || strings.Contains(logs.String(), "hvs.static") {
		t.Errorf("the logs show a value:\n%s", logs)
	}
	klog.Flush()
	if strings.Contains(klogs.String(), canary) || strings.Contains(klogs.String(), b64) {
		t.Errorf("client-go's logs show a value:\n%s", klogs.String())
	}
}

func canceled(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	return ctx
}
