// Package pool keeps sandboxes started and waiting, so a claimed session
// does not wait for one to boot.
//
// A warm sandbox is created with a workspace directory of its own under the
// pool's directory. When a session claims it, that directory is renamed to
// the session's workspace path: the sandbox's mount of it (at /workspace)
// follows the directory, so the session gets its own workspace without a
// restart. A warm sandbox serves exactly one session and is never returned
// to the pool; a replacement starts in the background once the session's
// first call has its answer (see refillAfter).
//
// Only backends that mount the workspace at a fixed path inside the sandbox
// (docker, bwrap) can be pooled. A session that already has files (a
// re-claimed or resumed session) or a different environment gets a cold
// sandbox, so nothing of one session can ever reach another.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// Options configure a Pool.
type Options struct {
	// Size is how many sandboxes wait; at least 1.
	Size int
	// Dir holds the warm sandboxes' workspaces; it must be on the same
	// file system as the session workspaces (a rename moves them).
	Dir string
	// Env and Limits are what warm sandboxes start with; a session whose
	// spec differs gets a cold sandbox.
	Env    map[string]string
	Limits sandbox.Limits
	// Logger; nil = slog.Default().
	Logger *slog.Logger
}

// Pool is a sandbox.Runtime that hands out warm sandboxes of another one.
type Pool struct {
	rt   sandbox.Runtime
	opts Options
	log  *slog.Logger

	ctx    context.Context // ends on Close; owns the refill goroutines
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex // guards ready, and wg.Add against Close
	ready []warm

	refillAfter time.Duration // refillAfter, but in tests
}

// refillAfter bounds how long a replacement waits for the first call of the
// sandbox it replaces. Starting one takes the CPU for tens of milliseconds
// (bwrap, a container, sandboxd, the shell), which on a small host the
// session that just claimed a warm sandbox would otherwise share for its
// first call: the call the pool is there to make fast.
const refillAfter = time.Second

type warm struct {
	sb  sandbox.Sandbox
	dir string
}

var _ sandbox.Runtime = (*Pool)(nil)

// New starts filling a pool of opts.Size sandboxes of rt.
func New(rt sandbox.Runtime, opts Options) (*Pool, error) {
	if opts.Size < 1 {
		return nil, errors.New("pool: size must be at least 1")
	}
	// Searchable, not listable, like the workspaces directory: a sandbox
	// running as an unprivileged host uid must reach its own workspace.
	if err := os.MkdirAll(opts.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	if err := os.Chmod(opts.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{rt: rt, opts: opts, log: opts.Logger.With(slog.String("component", "warm-pool"), slog.String("runtime", rt.Name())),
		ctx: ctx, cancel: cancel, refillAfter: refillAfter}
	for range opts.Size {
		p.refill()
	}
	return p, nil
}

// Name is the pooled runtime's name.
func (p *Pool) Name() string { return p.rt.Name() }

// Create hands spec's session a warm sandbox when it can, else a cold one.
func (p *Pool) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if !p.fits(spec) {
		if spec.Egress != nil {
			p.log.Info("starting a cold sandbox: warm sandboxes have no egress proxy mounted, and this session's policy allows egress", slog.String("session_id", spec.SessionID))
		}
		return p.rt.Create(ctx, spec)
	}
	w, ok := p.take()
	if !ok {
		return p.rt.Create(ctx, spec)
	}
	h := &handed{Sandbox: w.sb, refill: p.refill}
	h.timer = time.AfterFunc(p.refillAfter, h.replace)
	// The session's workspace is an empty directory the worker made; the
	// warm one takes its place.
	if err := os.Remove(spec.Workspace); err != nil && !os.IsNotExist(err) {
		h.replace()
		p.discard(w)
		return p.rt.Create(ctx, spec)
	}
	if err := os.Rename(w.dir, spec.Workspace); err != nil {
		p.log.Warn("could not hand over a warm workspace; starting a cold sandbox", slog.Any("error", err))
		h.replace()
		p.discard(w)
		if err := os.MkdirAll(spec.Workspace, 0o700); err != nil {
			return nil, err
		}
		return p.rt.Create(ctx, spec)
	}
	p.log.Info("handed out a warm sandbox", slog.String("session_id", spec.SessionID))
	return h, nil
}

// handed is a warm sandbox given to a session. Its replacement starts when
// its first call returns, when it is closed, or after refillAfter,
// whichever comes first.
type handed struct {
	sandbox.Sandbox
	refill func()
	timer  *time.Timer
	once   sync.Once
}

func (h *handed) replace() {
	h.once.Do(func() {
		h.timer.Stop()
		h.refill()
	})
}

func (h *handed) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	res, err := h.Sandbox.Exec(ctx, call)
	h.replace()
	return res, err
}

func (h *handed) Close(ctx context.Context) error {
	h.replace()
	return h.Sandbox.Close(ctx)
}

// fits reports whether a warm sandbox can serve spec: a fresh session (an
// empty workspace) with the pool's environment and limits, and no egress
// proxy (its mounts are made when a sandbox starts).
func (p *Pool) fits(spec sandbox.Spec) bool {
	if spec.Egress != nil || !maps.Equal(spec.Env, p.opts.Env) || spec.Limits.OrDefault() != p.opts.Limits.OrDefault() {
		return false
	}
	entries, err := os.ReadDir(spec.Workspace)
	return err == nil && len(entries) == 0
}

// take removes a warm sandbox, if one is ready.
func (p *Pool) take() (warm, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ready) == 0 {
		return warm{}, false
	}
	w := p.ready[0]
	p.ready = p.ready[1:]
	return w, true
}

// refill starts one replacement in the background, unless the pool is
// closed.
func (p *Pool) refill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for attempt := 0; p.ctx.Err() == nil; attempt++ {
			w, err := p.start()
			if err == nil {
				p.mu.Lock()
				closed := p.ctx.Err() != nil
				if !closed {
					p.ready = append(p.ready, w)
				}
				p.mu.Unlock()
				if !closed {
					p.log.Info("warm sandbox ready")
				}
				if closed {
					p.discard(w)
				}
				return
			}
			p.log.Warn("could not start a warm sandbox", slog.Any("error", err))
			select {
			case <-p.ctx.Done():
			case <-time.After(min(time.Second<<attempt, 30*time.Second)):
			}
		}
	}()
}

func (p *Pool) start() (warm, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	dir := filepath.Join(p.opts.Dir, "warm-"+hex.EncodeToString(b))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return warm{}, err
	}
	sb, err := p.rt.Create(p.ctx, sandbox.Spec{Workspace: dir, Env: p.opts.Env, Limits: p.opts.Limits})
	if err != nil {
		os.RemoveAll(dir)
		return warm{}, err
	}
	return warm{sb: sb, dir: dir}, nil
}

func (p *Pool) discard(w warm) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = w.sb.Close(ctx)
	_ = os.RemoveAll(w.dir)
}

// Ready is how many warm sandboxes are waiting.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// Close stops refilling and removes every waiting sandbox.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, w := range ready {
		p.discard(w)
	}
	return nil
}

// Image is the pooled runtime's pinned image, when it has one.
func (p *Pool) Image() string {
	if i, ok := p.rt.(interface{ Image() string }); ok {
		return i.Image()
	}
	return ""
}
