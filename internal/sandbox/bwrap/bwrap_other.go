//go:build !linux

package bwrap

import (
	"context"
	"errors"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// errUnsupported is New's error off Linux: bubblewrap is Linux namespaces.
var errUnsupported = errors.New("bwrap: the bwrap sandbox runtime needs Linux")

// Runtime is unavailable off Linux; New always fails.
type Runtime struct{}

var _ sandbox.Runtime = (*Runtime)(nil)

// New fails: bwrap needs Linux.
func New(Options) (*Runtime, error) { return nil, errUnsupported }

// Name is "bwrap".
func (r *Runtime) Name() string { return "bwrap" }

// Create fails: bwrap needs Linux.
func (r *Runtime) Create(context.Context, sandbox.Spec) (sandbox.Sandbox, error) {
	return nil, errUnsupported
}

// Doctor reports that bwrap needs Linux.
func (r *Runtime) Doctor(context.Context) []sandbox.Check {
	return []sandbox.Check{{Name: "bwrap", OK: false, Detail: errUnsupported.Error()}}
}
