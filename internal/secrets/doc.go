// Package secrets is where the real values of credentials come from.
//
// Trust model: a value lives only in the supervisor's memory, between a
// Source and the per-session egress proxy that substitutes it for a
// placeholder on requests to an allowed host. It never enters a sandbox, and
// this package never logs, prints, or puts it in an error: errors name the
// secret and the backend (variable, file path, Vault path and key,
// Kubernetes namespace, Secret and key), and the text Vault, the Kubernetes
// API server or the OS returns is included only when it cannot carry a value.
// A value is never empty; an empty one is reported as ErrNotFound, so a
// half-provisioned secret fails loudly instead of being sent as "".
//
// Backends: Env (a process environment variable), File (a file read on every
// Get, so rotation on disk takes effect), Vault (KV version 2, token or
// AppRole auth, with the token renewed in the background), and Kubernetes (a
// key of a Kubernetes Secret, read through the API server at every Get with
// the pod's service account or a kubeconfig; it needs only RBAC "get" on
// secrets). Cache bounds how long a value stays in memory and collapses
// concurrent fetches; Multi routes names to backends; Build assembles all of
// it from configuration.
//
// The connections to Vault and to the Kubernetes API server carry
// credentials and values, so both must be TLS with certificate verification,
// except to a loopback address.
//
// This is the only package that imports client-go; whatever imports it links
// client-go too, so packages that only need a Source (the egress proxy)
// declare their own one-method interface instead.
package secrets
