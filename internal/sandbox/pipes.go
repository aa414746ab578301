package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Pipes are the stdio of a sandboxd a backend starts as a child process.
// The worker owns its ends outright, so exec.Cmd.Wait neither closes them
// under a reader nor waits on copiers.
type Pipes struct {
	StdinR, StdinW   *os.File
	StdoutR, StdoutW *os.File
	StderrR, StderrW *os.File
}

// NewPipes opens the three pipes.
func NewPipes() (*Pipes, error) {
	var p Pipes
	var err error
	if p.StdinR, p.StdinW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	if p.StdoutR, p.StdoutW, err = os.Pipe(); err != nil {
		p.CloseAll()
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	if p.StderrR, p.StderrW, err = os.Pipe(); err != nil {
		p.CloseAll()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	return &p, nil
}

// CloseChildEnds closes the ends the child inherited, once it has started.
func (p *Pipes) CloseChildEnds() { closeFiles(p.StdinR, p.StdoutW, p.StderrW) }

// CloseAll closes every end.
func (p *Pipes) CloseAll() {
	closeFiles(p.StdinR, p.StdinW, p.StdoutR, p.StdoutW, p.StderrR, p.StderrW)
}

// RPC joins sandboxd's stdout (read) and stdin (write) for a [Conn];
// closing it closes both, which sandboxd sees as EOF.
func (p *Pipes) RPC() io.ReadWriteCloser { return stdio{r: p.StdoutR, w: p.StdinW} }

type stdio struct {
	r, w *os.File
}

func (s stdio) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s stdio) Write(b []byte) (int, error) { return s.w.Write(b) }
func (s stdio) Close() error                { return errors.Join(s.w.Close(), s.r.Close()) }

func closeFiles(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			_ = f.Close()
		}
	}
}
