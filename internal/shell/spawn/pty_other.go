//go:build !linux

package spawn

import (
	"errors"
	"os"
)

func start(string, []string) (*Proc, error) {
	return nil, startError{errors.New("the persistent shell needs Linux")}
}

func killGroup(p *os.Process) { _ = p.Kill() }
