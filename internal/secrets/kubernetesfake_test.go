package secrets

import (
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeAPIServer speaks the part of the Kubernetes API that Kubernetes uses,
// reading one Secret, so that tests go through client-go's real transport
// and decoding. It records every request and fails the test on anything
// else.
type fakeAPIServer struct {
	t   *testing.T
	URL string
	CA  []byte // PEM of the certificate the server presents

	mu      sync.Mutex
	secrets map[string]map[string][]byte         // "namespace/name" -> data; guarded by mu
	raw     map[string]func(http.ResponseWriter) // "namespace/name" -> canned response; guarded by mu
	reqs    []fakeAPIRequest                     // guarded by mu
}

type fakeAPIRequest struct {
	Method, Path, Authorization string
}

var secretPath = regexp.MustCompile(`^/api/v1/namespaces/([^/]+)/secrets/([^/]+)$`)

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	f := &fakeAPIServer{
		t:       t,
		secrets: map[string]map[string][]byte{},
		raw:     map[string]func(http.ResponseWriter){},
	}
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	f.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return f
}

func (f *fakeAPIServer) put(namespace, name string, data map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := map[string][]byte{}
	for k, v := range data {
		d[k] = []byte(v)
	}
	f.secrets[namespace+"/"+name] = d
}

func (f *fakeAPIServer) cannedResponse(namespace, name string, respond func(http.ResponseWriter)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.raw[namespace+"/"+name] = respond
}

func (f *fakeAPIServer) requests() []fakeAPIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeAPIRequest(nil), f.reqs...)
}

func (f *fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, fakeAPIRequest{Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization")})
	m := secretPath.FindStringSubmatch(r.URL.Path)
	var data map[string][]byte
	var respond func(http.ResponseWriter)
	found := false
	if m != nil {
		respond = f.raw[m[1]+"/"+m[2]]
		data, found = f.secrets[m[1]+"/"+m[2]]
	}
	f.mu.Unlock()

	switch {
	case m == nil || r.Method != http.MethodGet:
		f.t.Errorf("fake API server: unexpected %s %s", r.Method, r.URL.Path)
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
	case respond != nil:
		respond(w)
	case !found:
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("secrets %q not found", m[2]))
	default:
		writeJSON(w, http.StatusOK, &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Namespace: m[1], Name: m[2]},
			Data:       data,
		})
	}
}

// writeStatus answers with a Status object, as the API server does for
// every failure.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, message string) {
	writeJSON(w, code, &metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  message,
		Reason:   reason,
		Code:     int32(code),
	})
}

// writeKubeconfig writes a kubeconfig whose current context, "main", uses
// server (whose certificate ca signs, if not nil) with a bearer token in
// namespace team-c. Its other contexts:
// "other" (namespace team-d), "bare" (no namespace), "plain" (http to a
// remote host) and "insecure" (certificate verification off).
func writeKubeconfig(t *testing.T, server string, ca []byte, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	caLine := ""
	if ca != nil {
		caLine = "\n    certificate-authority-data: " + base64.StdEncoding.EncodeToString(ca)
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s%s
- name: plain
  cluster:
    server: http://k8s.example.com
- name: insecure
  cluster:
    server: https://k8s.example.com
    insecure-skip-tls-verify: true
users:
- name: bot
  user:
    token: %s
contexts:
- name: main
  context: {cluster: test, user: bot, namespace: team-c}
- name: other
  context: {cluster: test, user: bot, namespace: team-d}
- name: bare
  context: {cluster: test, user: bot}
- name: plain
  context: {cluster: plain, user: bot}
- name: insecure
  context: {cluster: insecure, user: bot}
current-context: main
`, server, caLine, token)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
