// Package prestart starts the persistent shell ([spawn.Prestart]) when it
// is initialised. A program imports it for that effect alone, and only a
// program whose bash tool will adopt the shell (the slim sandboxd): the
// shell then starts while the program's other packages initialise, some
// 10 ms of a cold sandbox's start on a small virtual machine, rather than
// after them.
package prestart

import "github.com/perimeterhq/perimeter/internal/shell/spawn"

func init() { spawn.Prestart() }
