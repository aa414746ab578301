//go:build !linux

package spawn

import (
	"errors"
	"os"
)

func start(string, []string) (*Proc, error) {
	return nil, errors.New("start bash pty: the persistent shell needs Linux")
}

func killGroup(p *os.Process) { _ = p.Kill() }
