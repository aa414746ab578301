// Package examples ships Perimeter's example scenarios and policies inside
// the binary, so `perimeter demo` works from any directory.
package examples

import "embed"

// Scenarios holds scenarios/*.yaml.
//
//go:embed scenarios/*.yaml
var Scenarios embed.FS

// Policies holds policies/*.yaml.
//
//go:embed policies/*.yaml
var Policies embed.FS
