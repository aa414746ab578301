package secrets

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubernetesRef locates one secret: a key of a Kubernetes Secret.
type KubernetesRef struct {
	// Namespace of the Secret; empty means the backend's namespace.
	Namespace string `yaml:"namespace"`
	// Name of the Secret.
	Name string `yaml:"name"`
	// Key in the Secret's data whose value is the secret.
	Key string `yaml:"key"`
}

// KubernetesOptions configures a Kubernetes source. The zero value uses the
// pod's service account when running in a cluster, and otherwise the
// kubeconfig that kubectl would use ($KUBECONFIG, or ~/.kube/config) with its
// current context.
//
// Whatever the configuration, the identity needs permission to get secrets
// (RBAC verb "get" on resource "secrets") in every namespace a reference
// reads from, and no other: values are read one Secret at a time, never
// listed or watched.
type KubernetesOptions struct {
	// Kubeconfig is the path of a kubeconfig file. Empty means the pod's
	// service account when running in a cluster, and otherwise $KUBECONFIG
	// or ~/.kube/config.
	Kubeconfig string `yaml:"kubeconfig"`
	// Context is the kubeconfig context to use; empty means its current
	// context. Setting it means a kubeconfig is used even in a cluster.
	Context string `yaml:"context"`
	// Namespace is where Secrets are read when a reference names none.
	// Empty means the pod's namespace in a cluster, the context's namespace
	// with a kubeconfig, and "default" if neither says.
	Namespace string `yaml:"namespace"`

	// Refs maps secret names to the Secret keys that hold them.
	Refs map[string]KubernetesRef `yaml:"-"`

	// Timeout bounds each request to the API server; zero means 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Client replaces the client built from Kubeconfig and Context (tests
	// pass a fake clientset). Namespace then defaults to "default".
	Client kubernetes.Interface `yaml:"-"`

	// inClusterConfig and namespaceFile replace rest.InClusterConfig and
	// the service account's namespace file; tests set them.
	inClusterConfig func() (*rest.Config, error)
	namespaceFile   string
}

const (
	defaultKubernetesTimeout = 30 * time.Second
	serviceAccountNamespace  = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// Kubernetes reads secrets from Kubernetes Secrets through the API server,
// at every Get. Nothing is cached or written to disk (wrap it in a Cache to
// bound how often the API server is asked), and every value of the decoded
// Secret, not only the one wanted, is cleared once the wanted one is copied;
// client-go's buffer of the response is left to the garbage collector.
//
// As with File, one trailing line ending is trimmed, so a Secret made with
// kubectl create secret --from-file gives the same value here as through a
// volume.
type Kubernetes struct {
	client    kubernetes.Interface
	namespace string                   // for references that name none
	refs      map[string]KubernetesRef // never modified
	timeout   time.Duration
}

var _ Source = (*Kubernetes)(nil)

// NewKubernetes checks opts and builds the API client. It reads the
// kubeconfig or the service account's files but does not contact the API
// server: the first Get does, so a missing RBAC permission shows at the
// first use of each secret.
func NewKubernetes(opts KubernetesOptions) (*Kubernetes, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	for name, ref := range opts.Refs {
		if err := ref.validate(); err != nil {
			return nil, fmt.Errorf("kubernetes: secret %q: %w", name, err)
		}
	}
	k := &Kubernetes{
		client:    opts.Client,
		namespace: opts.Namespace,
		refs:      maps.Clone(opts.Refs),
		timeout:   cmp.Or(opts.Timeout, defaultKubernetesTimeout),
	}
	if k.client != nil {
		k.namespace = cmp.Or(k.namespace, metav1.NamespaceDefault)
		return k, nil
	}

	cfg, namespace, err := kubernetesConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := checkKubernetesTransport(cfg); err != nil {
		return nil, err
	}
	if k.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	k.namespace = cmp.Or(k.namespace, namespace, metav1.NamespaceDefault)
	return k, nil
}

// Get reads the Secret from the API server now and returns a copy of the
// key's value.
func (k *Kubernetes) Get(ctx context.Context, name string) ([]byte, error) {
	ref, ok := k.refs[name]
	if !ok {
		return nil, notConfigured(name)
	}
	ns := cmp.Or(ref.Namespace, k.namespace)
	where := ns + "/" + ref.Name
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("secret %q: kubernetes read %s: %w", name, where, err)
	}

	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	s, err := k.client.CoreV1().Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
	if s != nil {
		defer func() {
			for _, v := range s.Data {
				clear(v)
			}
		}()
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, fmt.Errorf("secret %q: kubernetes read %s: %w", name, where, ctx.Err())
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("secret %q: kubernetes secret %s does not exist: %w", name, where, ErrNotFound)
	case apierrors.IsForbidden(err):
		return nil, fmt.Errorf("secret %q: kubernetes read %s is forbidden: %s: %w", name, where, rbacNeed(ns), describeKubernetesError(err))
	case apierrors.IsUnauthorized(err):
		return nil, fmt.Errorf("secret %q: kubernetes read %s: the API server did not accept the credentials (check the kubeconfig or the service account token); once it does, %s: %w", name, where, rbacNeed(ns), describeKubernetesError(err))
	default:
		return nil, fmt.Errorf("secret %q: kubernetes read %s: %w", name, where, describeKubernetesError(err))
	}

	v, ok := s.Data[ref.Key]
	if !ok {
		return nil, fmt.Errorf("secret %q: kubernetes secret %s has no key %q: %w", name, where, ref.Key, ErrNotFound)
	}
	v = trimNewline(v)
	if len(v) == 0 {
		return nil, fmt.Errorf("secret %q: kubernetes secret %s key %q is empty: %w", name, where, ref.Key, ErrNotFound)
	}
	return bytes.Clone(v), nil
}

// rbacNeed says which permission a read of a Secret in namespace ns needs.
func rbacNeed(ns string) string {
	return fmt.Sprintf(`the identity needs RBAC permission to get secrets in namespace %s (a Role with verb "get" on resource "secrets", bound to it)`, ns)
}

// kubernetesConfig finds the client configuration and the namespace it
// implies: the service account's when in a cluster and no kubeconfig is
// asked for, else the kubeconfig's.
func kubernetesConfig(opts KubernetesOptions) (*rest.Config, string, error) {
	if opts.Kubeconfig == "" && opts.Context == "" {
		inCluster := opts.inClusterConfig
		if inCluster == nil {
			inCluster = rest.InClusterConfig
		}
		cfg, err := inCluster()
		switch {
		case err == nil:
			return cfg, podNamespace(cmp.Or(opts.namespaceFile, serviceAccountNamespace)), nil
		case !errors.Is(err, rest.ErrNotInCluster):
			return nil, "", fmt.Errorf("kubernetes: running in a cluster, but its service account cannot be used (is its token mounted?): %w", err)
		}
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = opts.Kubeconfig
	raw, err := rules.Load()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: loading the kubeconfig: %w", err)
	}
	cc := clientcmd.NewNonInteractiveClientConfig(*raw, opts.Context, &clientcmd.ConfigOverrides{}, rules)
	cfg, err := cc.ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, "", errors.New("kubernetes: not running in a cluster and no kubeconfig found: set the kubeconfig path or KUBECONFIG")
	case err != nil:
		return nil, "", fmt.Errorf("kubernetes: kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: kubeconfig: %w", err)
	}
	return cfg, ns, nil
}

// podNamespace reads the namespace of the pod's service account, or ""
// if the file is missing or empty.
func podNamespace(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// checkKubernetesTransport refuses a connection that would carry the
// credentials and the values in clear text or to an unverified server,
// unless the API server is on a loopback address (kubectl proxy, a test
// server).
func checkKubernetesTransport(cfg *rest.Config) error {
	u, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes: the API server address: %w", err)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	shown := (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("kubernetes: API server %s is plain %s, which would send credentials and values in clear text; use https (http is allowed only to a loopback address)", shown, u.Scheme)
	case cfg.Insecure:
		return fmt.Errorf("kubernetes: the kubeconfig turns off certificate verification for API server %s (insecure-skip-tls-verify); give its CA instead", shown)
	}
	return nil
}

func (o KubernetesOptions) validate() error {
	switch {
	case o.Client != nil && (o.Kubeconfig != "" || o.Context != ""):
		return errors.New("kubernetes: a client cannot be combined with a kubeconfig or context")
	case o.Namespace != "" && len(validation.IsDNS1123Label(o.Namespace)) > 0:
		return fmt.Errorf("kubernetes: namespace %q is not a valid namespace name", o.Namespace)
	case o.Timeout < 0:
		return fmt.Errorf("kubernetes: timeout %s is negative (0 means 30s)", o.Timeout)
	}
	return nil
}

func (r KubernetesRef) validate() error {
	switch {
	case r.Name == "":
		return errors.New("a Kubernetes reference needs the name of a Secret")
	case len(validation.IsDNS1123Subdomain(r.Name)) > 0:
		return fmt.Errorf("%q is not a valid Secret name", r.Name)
	case r.Key == "":
		return errors.New("a Kubernetes reference needs a key")
	case len(validation.IsConfigMapKey(r.Key)) > 0:
		return fmt.Errorf("%q is not a valid Secret key (letters, digits, '-', '_' and '.')", r.Key)
	case r.Namespace != "" && len(validation.IsDNS1123Label(r.Namespace)) > 0:
		return fmt.Errorf("namespace %q is not a valid namespace name", r.Namespace)
	}
	return nil
}

// kubernetesError is a failed request described by its status, and by the
// API server's own reason and message when the answer was one of its Status
// objects; the body of any other answer (from a proxy, say) is left out,
// since nothing says what it holds.
type kubernetesError struct {
	code    int32
	reason  metav1.StatusReason // empty unless from a Status
	message string              // empty unless from a Status
}

func (e *kubernetesError) Error() string {
	switch {
	case e.message != "":
		return fmt.Sprintf("%s (HTTP %d)", e.message, e.code)
	case e.reason != "":
		return fmt.Sprintf("%s (HTTP %d)", e.reason, e.code)
	}
	return fmt.Sprintf("HTTP %d %s, not a Status from the API server", e.code, http.StatusText(int(e.code)))
}

var errMalformedKubernetesResponse = errors.New("the response from the API server could not be read as a Secret")

// describeKubernetesError turns an error from client-go into one whose text
// is safe to show. Errors that are neither the API server's status nor the
// transport's are decoding errors, whose text can quote the response body,
// so they are replaced.
func describeKubernetesError(err error) error {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		s := status.Status()
		if apierrors.IsUnexpectedServerError(err) {
			return &kubernetesError{code: s.Code}
		}
		return &kubernetesError{code: s.Code, reason: s.Reason, message: s.Message}
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return errMalformedKubernetesResponse
}
