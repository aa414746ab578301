// Package secrets is where the real values of credentials come from.
//
// Trust model: a value lives only in the supervisor's memory, between a
// Source and the per-session egress proxy that substitutes it for a
// placeholder on requests to an allowed host. It never enters a sandbox, and
// this package never logs, prints, or puts it in an error: errors name the
// secret and the backend (variable, file path, Vault path and key), and the
// text Vault or the OS returns is included only when it cannot carry a value.
// A value is never empty; an empty one is reported as ErrNotFound, so a
// half-provisioned secret fails loudly instead of being sent as "".
//
// Backends: Env (a process environment variable), File (a file read on every
// Get, so rotation on disk takes effect), and Vault (KV version 2, token or
// AppRole auth, with the token renewed in the background). Cache bounds how
// long a value stays in memory and collapses concurrent fetches; Multi routes
// names to backends; Build assembles all of it from configuration. A
// Kubernetes Secrets backend is planned; it will live in its own package so
// that client-go stays out of everything that does not need it.
package secrets
