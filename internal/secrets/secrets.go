package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// Source yields the current value of a named secret.
//
// Implementations never log, print, or put a value in an error message;
// errors name the secret and the backend only. A missing secret is reported
// with an error wrapping ErrNotFound. The caller owns the returned slice and
// should clear it when done.
type Source interface {
	Get(ctx context.Context, name string) ([]byte, error)
}

// ErrNotFound means the secret has no value: it is not configured, or its
// variable, file, Vault secret, Kubernetes Secret or key does not exist, or
// the value is empty.
// It is always wrapped with the secret's name.
var ErrNotFound = errors.New("secret not found")

// Multi routes each name to the Source that holds it:
//
//	secrets.Multi{"github": vault, "npm": env}
type Multi map[string]Source

var _ Source = Multi(nil)

// Get asks the Source configured for name.
func (m Multi) Get(ctx context.Context, name string) ([]byte, error) {
	src, ok := m[name]
	if !ok || src == nil {
		return nil, notConfigured(name)
	}
	return src.Get(ctx, name)
}

func notConfigured(name string) error {
	return fmt.Errorf("secret %q: no source is configured for it: %w", name, ErrNotFound)
}

// trimNewline drops one trailing line ending, the one `echo` and most
// editors add; any other whitespace is part of the value.
func trimNewline(b []byte) []byte {
	if bytes.HasSuffix(b, []byte("\r\n")) {
		return b[:len(b)-2]
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}
