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
// With Options.Egress, each warm sandbox also starts with an egress socket
// and CA bundle (the host's system roots) of its own mounted (see
// [sandbox.Egress]): the pool listens
// on the socket, and a session with an egress proxy takes it over. At the
// hand-over the pool writes the session's CA bundle into the mounted file,
// gives the listener to the session's proxy, and sets the variables the
// session adds to the pool's environment (the proxy's, the credentials'
// placeholders) through sandboxd ([sandbox.ToolConfigure]). A session
// without a proxy gets the socket closed: nothing answers on it.
//
// Only backends that mount the workspace at a fixed path inside the sandbox
// (docker, bwrap) can be pooled. A session that already has files (a
// re-claimed or resumed session), an environment without one of the
// pool's variables, or other limits gets a cold sandbox, so nothing of one
// session can ever reach another.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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
	// Env and Limits are what warm sandboxes start with. A session whose
	// limits differ, or whose environment lacks one of Env's variables,
	// gets a cold sandbox; variables it adds or changes are set at the
	// hand-over.
	Env    map[string]string
	Limits sandbox.Limits
	// Egress starts warm sandboxes with an egress socket and CA bundle
	// mounted, so that sessions with an egress proxy can take them.
	Egress bool
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
	roots       []byte        // the CA bundle warm sandboxes start with
}

// refillAfter bounds how long a replacement waits for the first call of the
// sandbox it replaces. Starting one takes the CPU for tens of milliseconds
// (bwrap, a container, sandboxd, the shell), which on a small host the
// session that just claimed a warm sandbox would otherwise share for its
// first call: the call the pool is there to make fast.
const refillAfter = time.Second

type warm struct {
	sb   sandbox.Sandbox
	dir  string
	slot *slot // with Options.Egress
}

// slot is a warm sandbox's egress socket and CA bundle, in a directory of
// their own (see sandbox.NewEgressDir).
type slot struct {
	dir string
	eg  *sandbox.Egress
	l   net.Listener // on eg.Socket until handed to a proxy
}

var _ sandbox.Runtime = (*Pool)(nil)

// New starts filling a pool of opts.Size sandboxes of rt.
func New(rt sandbox.Runtime, opts Options) (*Pool, error) {
	if opts.Size < 1 {
		return nil, errors.New("pool: size must be at least 1")
	}
	// Searchable, not listable, like the workspaces directory: a sandbox
	// running as an unprivileged host uid must reach its own workspace.
	if err := sandbox.MkdirMode(opts.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// What a worker that stopped without closing its pool left behind:
	// its sandboxes are gone (they die with the worker, or are removed as
	// orphans), their directories and sockets are not.
	if entries, err := os.ReadDir(opts.Dir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "warm-") || strings.HasPrefix(e.Name(), "egress-") {
				_ = os.RemoveAll(filepath.Join(opts.Dir, e.Name()))
			}
		}
	}
	if opts.Egress && len(sandbox.EgressSocketPath(filepath.Join(opts.Dir, "egress-0123456789abcdef"))) > sandbox.MaxSocketPath {
		opts.Logger.Warn("warm sandboxes start without an egress socket: the pool directory is too long for a unix socket path; sessions with an egress proxy get cold sandboxes (a shorter worker.state_dir fixes this)",
			slog.String("dir", opts.Dir))
		opts.Egress = false
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{rt: rt, opts: opts, log: opts.Logger.With(slog.String("component", "warm-pool"), slog.String("runtime", rt.Name())),
		ctx: ctx, cancel: cancel, refillAfter: refillAfter}
	if opts.Egress {
		// What a session's bundle starts with (see egress.ManagerOptions),
		// until a session's replaces it. None on a host without one.
		p.roots, _ = os.ReadFile(sandbox.SystemCABundle)
	}
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
		if spec.Egress != nil && !p.opts.Egress {
			p.log.Info("starting a cold sandbox: warm sandboxes have no egress socket mounted, and this session's policy allows egress", slog.String("session_id", spec.SessionID))
		}
		return p.rt.Create(ctx, spec)
	}
	w, ok := p.take()
	if !ok {
		return p.rt.Create(ctx, spec)
	}
	h := &handed{Sandbox: w.sb, refill: p.refill}
	time.AfterFunc(p.refillAfter, h.replace)
	cold := func(why string, err error) (sandbox.Sandbox, error) {
		p.log.Warn(why+"; starting a cold sandbox", slog.String("session_id", spec.SessionID), slog.Any("error", err))
		h.replace()
		p.discard(w)
		if err := os.MkdirAll(spec.Workspace, 0o700); err != nil {
			return nil, err
		}
		return p.rt.Create(ctx, spec)
	}
	if w.slot != nil && spec.Egress != nil {
		// In place: the sandbox has this file (its inode) mounted, and
		// sees the new content (gVisor too: its bind mounts are shared
		// with the host by default, --file-access-mounts=shared).
		if err := os.WriteFile(w.slot.eg.CABundle, spec.Egress.CABundlePEM, 0o644); err != nil {
			return cold("could not give a warm sandbox the session's CA bundle", err)
		}
	}
	// Made even when there is nothing to set: a warm sandbox may have died
	// while it waited (the engine restarted, an operator removed it), and
	// the answer proves sandboxd is there before a session depends on it.
	input, _ := json.Marshal(map[string]any{"env": added(spec.Env, p.opts.Env)})
	res, err := w.sb.Exec(ctx, sandbox.Call{Tool: sandbox.ToolConfigure, Input: input})
	if err == nil && res.IsError {
		err = errors.New(res.Text)
	}
	if err != nil {
		return cold("could not set the session's environment in a warm sandbox", err)
	}
	// The session's workspace is an empty directory the worker made; the
	// warm one takes its place.
	if err := os.Remove(spec.Workspace); err != nil && !os.IsNotExist(err) {
		return cold("could not hand over a warm workspace", err)
	}
	if err := os.Rename(w.dir, spec.Workspace); err != nil {
		return cold("could not hand over a warm workspace", err)
	}
	if w.slot != nil {
		if spec.Egress != nil {
			spec.Egress.Serve(w.slot.l)
		} else {
			_ = w.slot.l.Close()
		}
		h.cleanup = func() { _ = os.RemoveAll(w.slot.dir) }
	}
	p.log.Info("handed out a warm sandbox", slog.String("session_id", spec.SessionID))
	return h, nil
}

// fits reports whether a warm sandbox can serve spec: a fresh session (an
// empty workspace) with the pool's limits and at least the pool's
// environment, and either no egress proxy or warm sandboxes with a socket
// for one (to which the proxy must accept a listener).
func (p *Pool) fits(spec sandbox.Spec) bool {
	if spec.Egress != nil && (!p.opts.Egress || spec.Egress.Serve == nil) {
		return false
	}
	for k := range p.opts.Env {
		if _, ok := spec.Env[k]; !ok {
			return false // a running shell cannot be made to forget it
		}
	}
	if spec.Limits.OrDefault() != p.opts.Limits.OrDefault() {
		return false
	}
	entries, err := os.ReadDir(spec.Workspace)
	return err == nil && len(entries) == 0
}

// added is what env adds to or changes in base.
func added(env, base map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		if w, ok := base[k]; !ok || w != v {
			out[k] = v
		}
	}
	return out
}

// handed is a warm sandbox given to a session. Its replacement starts when
// its first call returns, when it is closed, or after refillAfter,
// whichever comes first.
type handed struct {
	sandbox.Sandbox
	refill  func()
	once    sync.Once
	cleanup func() // after Close: removes the egress slot, if any
}

// replace starts the replacement, once. The refillAfter timer calls it
// too; once it has run, the timer's call does nothing.
func (h *handed) replace() { h.once.Do(h.refill) }

func (h *handed) Exec(ctx context.Context, call sandbox.Call) (sandbox.Result, error) {
	res, err := h.Sandbox.Exec(ctx, call)
	h.replace()
	return res, err
}

func (h *handed) Close(ctx context.Context) error {
	h.replace()
	err := h.Sandbox.Close(ctx)
	if h.cleanup != nil {
		h.cleanup()
	}
	return err
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
				if closed {
					p.discard(w)
				} else {
					p.log.Info("warm sandbox ready")
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
	id := hex.EncodeToString(b)
	w := warm{dir: filepath.Join(p.opts.Dir, "warm-"+id)}
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		return warm{}, err
	}
	spec := sandbox.Spec{Workspace: w.dir, Env: p.opts.Env, Limits: p.opts.Limits}
	if p.opts.Egress {
		dir := filepath.Join(p.opts.Dir, "egress-"+id)
		eg, l, err := sandbox.NewEgressDir(dir, p.roots)
		if err != nil {
			os.RemoveAll(w.dir)
			return warm{}, fmt.Errorf("a warm sandbox's %w", err)
		}
		w.slot = &slot{dir: dir, eg: eg, l: l}
		spec.Egress = eg
	}
	sb, err := p.rt.Create(p.ctx, spec)
	if err != nil {
		p.remove(w)
		return warm{}, err
	}
	w.sb = sb
	return w, nil
}

func (p *Pool) discard(w warm) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = w.sb.Close(ctx)
	p.remove(w)
}

// remove removes a warm sandbox's directories and closes its listener.
func (p *Pool) remove(w warm) {
	_ = os.RemoveAll(w.dir)
	if w.slot != nil {
		_ = w.slot.l.Close()
		_ = os.RemoveAll(w.slot.dir)
	}
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
