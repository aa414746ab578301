package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/sandboxd"
)

// inprocRuntime runs sandboxd's Serve inside this process, over the same
// kind of pipes and RPC the process runtime uses: Perimeter's whole path
// minus the process boundary. It is a diagnostic, never a product runtime.
type inprocRuntime struct{}

var _ sandbox.Runtime = inprocRuntime{}

func (inprocRuntime) Name() string { return "inproc" }

func (inprocRuntime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if err := os.MkdirAll(spec.Workspace, 0o700); err != nil {
		return nil, err
	}
	toR, toW, err := os.Pipe() // supervisor → sandboxd
	if err != nil {
		return nil, err
	}
	fromR, fromW, err := os.Pipe() // sandboxd → supervisor
	if err != nil {
		toR.Close()
		toW.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &inprocSandbox{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := sandboxd.Serve(sctx, toR, fromW, sandboxd.Options{Workdir: spec.Workspace, Env: spec.Env})
		toR.Close()
		fromW.Close()
		s.done <- err
	}()
	s.conn = sandbox.NewConn(pipePair{r: fromR, w: toW}, sandbox.ConnOptions{})
	if _, err := s.conn.Hello(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("inproc sandboxd: %w", err), s.Close(ctx))
	}
	return s, nil
}

// inprocSandbox is one in-process sandboxd.
type inprocSandbox struct {
	conn   *sandbox.Conn
	cancel context.CancelFunc
	done   chan error
}

func (s *inprocSandbox) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	return s.conn.Exec(ctx, call)
}

// Close ends sandboxd's input, which makes Serve close its tools and return.
func (s *inprocSandbox) Close(ctx context.Context) error {
	err := s.conn.Close()
	select {
	case serveErr := <-s.done:
		s.done <- serveErr // keep Close idempotent
		err = errors.Join(err, serveErr)
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	s.cancel()
	return err
}

// pipePair joins sandboxd's output (read) and input (write) for the Conn.
type pipePair struct{ r, w *os.File }

func (p pipePair) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p pipePair) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p pipePair) Close() error                { return errors.Join(p.w.Close(), p.r.Close()) }
