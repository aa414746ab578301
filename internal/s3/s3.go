// Package s3 stores objects in a bucket of Amazon S3 or any service that
// speaks its API (MinIO, Ceph RGW, Cloudflare R2, Google Cloud Storage's
// XML API, …). A Bucket is a checkpoint.Remote: it is how persisted
// workspaces outlive the worker host that saved them.
//
// Credentials are static keys handed over by the caller or, without them,
// found where the AWS tools look: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
// and AWS_SESSION_TOKEN; MINIO_ROOT_USER and MINIO_ROOT_PASSWORD (or
// MINIO_ACCESS_KEY and MINIO_SECRET_KEY); the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE);
// then the role of the pod or instance (IRSA web identity, ECS and EKS
// container credentials, EC2 instance metadata). They are used only to
// sign requests: no key appears in a message, a log line or an error.
//
// The worker needs s3:GetObject, s3:PutObject and s3:ListBucket on the
// bucket and prefix. Without ListBucket, S3 answers a question about a
// missing object with 403 rather than 404, which Exists cannot tell from
// a denial.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
)

// Config locates a bucket and says how to reach it. Only Bucket is
// required.
type Config struct {
	// Endpoint is the S3 API: host[:port] or an http(s) URL, such as
	// s3.eu-west-1.amazonaws.com, https://minio.internal:9000 or
	// storage.googleapis.com. Empty means Amazon S3.
	Endpoint string `yaml:"endpoint"`
	// Bucket holds the objects; it must exist.
	Bucket string `yaml:"bucket"`
	// Prefix is put before every object's name, a "/" between: several
	// deployments can share a bucket. Empty means the bucket's root.
	Prefix string `yaml:"prefix"`
	// Region is the bucket's; empty means asked of Amazon S3, or
	// us-east-1 elsewhere, which most other services accept.
	Region string `yaml:"region"`
	// DisableTLS talks plain HTTP. Requests stay signed, so the keys never
	// cross the network, but workspace contents do, readable and
	// unauthenticated: only for a service on the same host or a network
	// that is private for other reasons.
	DisableTLS bool `yaml:"disable_tls"`
	// CAFile is a PEM file of certificate authorities to trust besides the
	// system's, for a service with a private certificate.
	CAFile string `yaml:"ca_file"`
	// Lookup is how requests name the bucket: "path" (endpoint/bucket/…,
	// what MinIO and Ceph usually need), "virtual-host"
	// (bucket.endpoint/…), or empty (auto) for virtual-host on Amazon S3
	// and Google Cloud Storage and path elsewhere.
	Lookup string `yaml:"lookup"`

	// AccessKeyID and SecretAccessKey, with SessionToken for temporary
	// keys, are static credentials, for a caller that takes them from a
	// secret store; never read from a config file. Empty means the
	// standard chain in the package doc.
	AccessKeyID     string `yaml:"-"`
	SecretAccessKey string `yaml:"-"`
	SessionToken    string `yaml:"-"`
}

// Lookup values.
const (
	LookupAuto        = ""
	LookupPath        = "path"
	LookupVirtualHost = "virtual-host"
)

const defaultEndpoint = "s3.amazonaws.com"

// Bucket is a bucket, or a prefix in one, seen as a checkpoint.Remote.
// It is safe for concurrent use.
type Bucket struct {
	client *minio.Client
	bucket string
	prefix string // "" or ending in "/"
	where  string // for messages: "bucket b at endpoint", no credentials
	creds  *credentials.Credentials
	hc     *http.Client // for credential requests (instance metadata, STS)
	static bool         // static credentials, not the chain
}

var _ checkpoint.Remote = (*Bucket)(nil)

// New checks cfg and makes a Bucket. It makes no request: Check does.
func New(cfg Config) (*Bucket, error) {
	host, secure, err := endpoint(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket: set the bucket that holds the checkpoints")
	}
	if err := s3utils.CheckValidBucketName(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3: bucket %q: %v; use the bucket's name, not a URL or path", cfg.Bucket, err)
	}
	where := fmt.Sprintf("bucket %q at %s", cfg.Bucket, host)

	var lookup minio.BucketLookupType
	switch cfg.Lookup {
	case LookupAuto, "auto":
		lookup = minio.BucketLookupAuto
	case LookupPath:
		lookup = minio.BucketLookupPath
	case LookupVirtualHost:
		lookup = minio.BucketLookupDNS
	default:
		return nil, fmt.Errorf("s3: lookup is %q: use path, virtual-host, or leave it empty to choose by endpoint", cfg.Lookup)
	}

	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := s3utils.CheckValidObjectNamePrefix(prefix); err != nil {
			return nil, fmt.Errorf("s3: prefix %q: %v", cfg.Prefix, err)
		}
		prefix += "/"
	}

	creds, static, err := credentialsFor(cfg)
	if err != nil {
		return nil, err
	}

	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	switch {
	case cfg.CAFile != "" && !secure:
		return nil, errors.New("s3: a CA file is set but TLS is disabled: remove one of them")
	case cfg.CAFile != "":
		pool, err := caPool(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	}

	client, err := minio.New(host, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Transport:    transport,
		Region:       cfg.Region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: %s: %w", where, err)
	}
	return &Bucket{
		client: client,
		bucket: cfg.Bucket,
		prefix: prefix,
		where:  where,
		creds:  creds,
		hc:     &http.Client{Transport: transport},
		static: static,
	}, nil
}

// endpoint returns the host[:port] to reach and whether over TLS.
func endpoint(cfg Config) (host string, secure bool, err error) {
	ep := cfg.Endpoint
	if ep == "" {
		ep = defaultEndpoint
	}
	if !strings.Contains(ep, "://") {
		bad := strings.ContainsAny(ep, "/?#@ ")
		if !bad && strings.Contains(ep, ":") {
			_, port, err := net.SplitHostPort(ep)
			n, perr := strconv.Atoi(port)
			bad = err != nil || perr != nil || n <= 0 || n > 65535
		}
		if bad {
			return "", false, fmt.Errorf("s3: endpoint %q: give host[:port], or a URL with no path", redact(ep))
		}
		return ep, !cfg.DisableTLS, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", false, fmt.Errorf("s3: endpoint %q is not a URL: give host[:port] or https://host[:port]", redact(ep))
	}
	switch {
	case u.User != nil:
		return "", false, fmt.Errorf("s3: endpoint %q holds credentials: remove them from the URL and give them as keys", redact(ep))
	case u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return "", false, fmt.Errorf("s3: endpoint %q: give a URL with a host and no path; the bucket and prefix are set apart", ep)
	case u.Scheme == "https" && cfg.DisableTLS:
		return "", false, fmt.Errorf("s3: endpoint %q is https but TLS is disabled: remove one of them", ep)
	case u.Scheme == "http" && !cfg.DisableTLS:
		return "", false, fmt.Errorf("s3: endpoint %q is plain HTTP: use https, or disable TLS explicitly if the network is private", ep)
	case u.Scheme != "https" && u.Scheme != "http":
		return "", false, fmt.Errorf("s3: endpoint %q: the scheme must be https or http", ep)
	}
	return u.Host, u.Scheme == "https", nil
}

// redact hides what could be a password in an endpoint the user got wrong.
func redact(s string) string {
	if i := strings.LastIndex(s, "@"); i >= 0 {
		scheme := ""
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			scheme = s[:j+3]
		}
		return scheme + "…@" + s[i+1:]
	}
	return s
}

// credentialsFor returns the static keys in cfg or the standard chain.
func credentialsFor(cfg Config) (*credentials.Credentials, bool, error) {
	switch {
	case cfg.AccessKeyID != "" && cfg.SecretAccessKey != "":
		return credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken), true, nil
	case cfg.AccessKeyID != "" || cfg.SecretAccessKey != "" || cfg.SessionToken != "":
		return nil, false, errors.New("s3: static credentials need both an access key id and a secret access key; give both, or neither to use the standard chain")
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	}), false, nil
}

func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("s3: CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("s3: CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// String describes the bucket for logs: its name, prefix and endpoint.
func (b *Bucket) String() string {
	return fmt.Sprintf("s3://%s/%s (%s)", b.bucket, b.prefix, b.client.EndpointURL().Host)
}

// Check makes sure credentials were found and the bucket exists and
// answers, with an error that says which of them is wrong.
func (b *Bucket) Check(ctx context.Context) error {
	if !b.static {
		v, err := b.creds.GetWithContext(&credentials.CredContext{Client: b.hc, Endpoint: b.client.EndpointURL().String(), Context: ctx})
		if err != nil || v.SignerType.IsAnonymous() {
			return fmt.Errorf("s3: %s: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MINIO_ROOT_USER and MINIO_ROOT_PASSWORD), "+
				"a profile in the shared credentials file, or give the pod or instance a role", b.where)
		}
	}
	ok, err := b.client.BucketExists(ctx, b.bucket)
	if err != nil {
		return b.fail("reach the bucket", "", err)
	}
	if !ok {
		return fmt.Errorf("s3: %s does not exist: create it, or fix the bucket name, endpoint or region", b.where)
	}
	return nil
}

func (b *Bucket) key(name string) string { return b.prefix + name }

// Exists reports whether the object name exists.
func (b *Bucket) Exists(ctx context.Context, name string) (bool, error) {
	_, err := b.client.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, b.fail("look up", name, err)
	}
	return true, nil
}

// Put writes the object name, of size bytes read from r, whole: it
// appears only once all of it is stored. The service checks the bytes it
// received against their MD5, sent in a signed header, so an upload
// damaged on its way is refused rather than kept.
func (b *Bucket) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	_, err := b.client.PutObject(ctx, b.bucket, b.key(name), r, size, minio.PutObjectOptions{
		ContentType:    "application/octet-stream",
		SendContentMd5: true,
		// The payload is not signed as well, as it is not over TLS
		// anyway: over plain HTTP the library would sign it in chunks,
		// which it does wrong for an empty object (no Content-Length).
		DisableContentSha256: true,
	})
	if err != nil {
		return b.fail("write", name, err)
	}
	return nil
}

// Get opens the object name; a missing one is an error wrapping
// checkpoint.ErrNotFound.
func (b *Bucket) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	obj, err := b.client.GetObject(ctx, b.bucket, b.key(name), minio.GetObjectOptions{})
	if err == nil {
		// The request is made here: a missing object shows now, not at
		// the first read.
		_, err = obj.Stat()
	}
	if err != nil {
		if obj != nil {
			obj.Close()
		}
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %s in %s", checkpoint.ErrNotFound, b.key(name), b.where)
		}
		return nil, b.fail("read", name, err)
	}
	return obj, nil
}

func isNotFound(err error) bool {
	var e minio.ErrorResponse
	return errors.As(err, &e) && (e.Code == minio.NoSuchKey || e.Code == "NotFound")
}

// fail describes a failed request: what it did, on which object of which
// bucket, and the service's answer with its code.
func (b *Bucket) fail(op, name string, err error) error {
	obj := ""
	if name != "" {
		obj = " " + b.key(name)
	}
	var e minio.ErrorResponse
	if errors.As(err, &e) && e.Code != "" {
		return fmt.Errorf("s3: %s%s in %s: %w (%s, HTTP %d)", op, obj, b.where, err, e.Code, e.StatusCode)
	}
	return fmt.Errorf("s3: %s%s in %s: %w", op, obj, b.where, err)
}
