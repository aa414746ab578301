package secrets

import (
	"context"
	"fmt"
	"maps"
	"os"
)

// Env reads secrets from the supervisor's environment. Sandboxed processes
// start from an allow-listed environment, so these variables do not reach
// them.
type Env struct {
	vars map[string]string // secret name -> variable; never modified
}

var _ Source = (*Env)(nil)

// NewEnv returns an Env that reads secret name from variable vars[name].
func NewEnv(vars map[string]string) *Env {
	return &Env{vars: maps.Clone(vars)}
}

// Get returns the variable's current value.
func (e *Env) Get(_ context.Context, name string) ([]byte, error) {
	v, ok := e.vars[name]
	if !ok {
		return nil, notConfigured(name)
	}
	val, ok := os.LookupEnv(v)
	switch {
	case !ok:
		return nil, fmt.Errorf("secret %q: environment variable %s is not set: %w", name, v, ErrNotFound)
	case val == "":
		return nil, fmt.Errorf("secret %q: environment variable %s is empty: %w", name, v, ErrNotFound)
	}
	return []byte(val), nil
}
