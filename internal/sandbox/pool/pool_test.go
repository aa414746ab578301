package pool

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// fakeRuntime records the sandboxes it creates. Each writes a marker file
// into its workspace, as a real sandbox's mount would show it.
type fakeRuntime struct {
	mu            sync.Mutex
	created       []*fakeSandbox
	failFirst     int
	failConfigure bool
}

type fakeSandbox struct {
	n             int
	spec          sandbox.Spec
	failConfigure bool
	mu            sync.Mutex
	closed        bool
	calls         []sandbox.Call
	hold          chan struct{} // if set, Exec waits for it to close
}

func (f *fakeRuntime) Name() string { return "fake" }

func (f *fakeRuntime) Create(_ context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failFirst > 0 {
		f.failFirst--
		return nil, errors.New("engine busy")
	}
	sb := &fakeSandbox{n: len(f.created) + 1, spec: spec, failConfigure: f.failConfigure}
	f.created = append(f.created, sb)
	if err := os.WriteFile(filepath.Join(spec.Workspace, ".sandbox"), []byte{byte('0' + sb.n)}, 0o600); err != nil {
		return nil, err
	}
	return sb, nil
}

func (s *fakeSandbox) Exec(_ context.Context, call sandbox.Call) (sandbox.Result, error) {
	if s.hold != nil {
		<-s.hold
	}
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
	if call.Tool == sandbox.ToolConfigure && s.failConfigure {
		return sandbox.Result{Text: "no", IsError: true}, nil
	}
	return sandbox.Result{}, nil
}

func (f *fakeRuntime) sandbox(i int) *fakeSandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.created[i]
}

func (f *fakeRuntime) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.created)
}

func (s *fakeSandbox) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *fakeSandbox) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func waitReady(t *testing.T, p *Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Ready() != n {
		if time.Now().After(deadline) {
			t.Fatalf("pool has %d ready, want %d", p.Ready(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newPool(t *testing.T, rt *fakeRuntime, env map[string]string) *Pool {
	t.Helper()
	p, err := New(rt, Options{Size: 1, Dir: filepath.Join(t.TempDir(), "pool"), Env: env})
	if err != nil {
		t.Fatal(err)
	}
	p.refillAfter = time.Hour // only the handed-out sandbox's first call or close starts a replacement
	t.Cleanup(func() { p.Close() })
	return p
}

func sessionDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "sesn_1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestAWarmSandboxServesOneFreshSessionAndIsReplaced(t *testing.T) {
	rt := &fakeRuntime{}
	p := newPool(t, rt, map[string]string{"A": "1"})
	waitReady(t, p, 1)

	ws := sessionDir(t)
	sb, err := p.Create(context.Background(), sandbox.Spec{SessionID: "sesn_1", Workspace: ws, Env: map[string]string{"A": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.(*handed).Sandbox.(*fakeSandbox).n != 1 {
		t.Fatalf("got sandbox %v, want the warm one", sb)
	}
	// The warm sandbox's workspace is now the session's.
	if b, err := os.ReadFile(filepath.Join(ws, ".sandbox")); err != nil || string(b) != "1" {
		t.Fatalf("session workspace marker = %q, %v", b, err)
	}
	if _, err := sb.Exec(context.Background(), sandbox.Call{Tool: "bash"}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, p, 1)
	ws2 := sessionDir(t)
	sb2, err := p.Create(context.Background(), sandbox.Spec{SessionID: "sesn_2", Workspace: ws2, Env: map[string]string{"A": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb2 == sb {
		t.Fatal("a sandbox was handed to two sessions")
	}
}

func TestSessionsAWarmSandboxCannotServeGetAColdOne(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		files  bool
		limits sandbox.Limits
		egress bool
	}{
		{name: "WorkspaceHasFiles", env: map[string]string{"A": "1"}, files: true},
		{name: "LacksAPoolVariable", env: map[string]string{"B": "1"}},
		{name: "OtherLimits", env: map[string]string{"A": "1"}, limits: sandbox.Limits{PIDs: 7}},
		{name: "EgressWithoutWarmSockets", env: map[string]string{"A": "1"}, egress: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			p := newPool(t, rt, map[string]string{"A": "1"})
			waitReady(t, p, 1)
			ws := sessionDir(t)
			if tc.files {
				os.WriteFile(filepath.Join(ws, "notes.txt"), []byte("mine"), 0o600)
			}
			spec := sandbox.Spec{Workspace: ws, Env: tc.env, Limits: tc.limits}
			if tc.egress {
				spec.Egress = &sandbox.Egress{Socket: "/nonexistent", CABundle: "/nonexistent", Serve: func(net.Listener) {}}
			}
			sb, err := p.Create(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := sb.(*fakeSandbox); got.n == 1 || got.spec.Workspace != ws {
				t.Fatalf("got sandbox %d on %s; want a cold one on the session's workspace", got.n, got.spec.Workspace)
			}
			if p.Ready() != 1 {
				t.Error("the warm sandbox was consumed")
			}
		})
	}
}

// A session that adds variables to the pool's environment, or changes
// them, gets a warm sandbox with them set through sandboxd before the
// hand-over.
func TestAWarmSandboxTakesTheSessionsEnvironment(t *testing.T) {
	rt := &fakeRuntime{}
	p := newPool(t, rt, map[string]string{"A": "1", "PATH": "/bin"})
	waitReady(t, p, 1)
	sb, err := p.Create(context.Background(), sandbox.Spec{Workspace: sessionDir(t), Env: map[string]string{"A": "2", "B": "3", "PATH": "/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	fake := sb.(*handed).Sandbox.(*fakeSandbox)
	if len(fake.calls) != 1 || fake.calls[0].Tool != sandbox.ToolConfigure || string(fake.calls[0].Input) != `{"env":{"A":"2","B":"3"}}` {
		t.Fatalf("calls before the hand-over: %+v, want one %s of A and B", fake.calls, sandbox.ToolConfigure)
	}
}

// A warm sandbox that cannot take the session's environment is removed,
// and the session gets a cold one.
func TestAWarmSandboxThatCannotBeConfiguredIsReplacedByAColdOne(t *testing.T) {
	rt := &fakeRuntime{failConfigure: true}
	p := newPool(t, rt, nil)
	waitReady(t, p, 1)
	ws := sessionDir(t)
	sb, err := p.Create(context.Background(), sandbox.Spec{Workspace: ws, Env: map[string]string{"B": "3"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := sb.(*fakeSandbox); got.n == 1 || got.spec.Workspace != ws {
		t.Fatalf("got sandbox %d on %s; want a cold one on the session's workspace", got.n, got.spec.Workspace)
	}
	if !rt.sandbox(0).isClosed() {
		t.Error("the warm sandbox that failed was left running")
	}
}

// With Egress, warm sandboxes start with a socket the pool listens on and
// an empty CA bundle. A session with a proxy gets the listener handed to
// its proxy and its bundle written into the very file the sandbox has
// mounted; a session without one gets the socket closed. Closing the
// sandbox removes them.
func TestWarmSandboxesServeEgressSessions(t *testing.T) {
	for _, withProxy := range []bool{true, false} {
		t.Run(map[bool]string{true: "SessionWithProxy", false: "SessionWithoutProxy"}[withProxy], func(t *testing.T) {
			rt := &fakeRuntime{}
			p, err := New(rt, Options{Size: 1, Dir: filepath.Join(testenv.ShortDir(t), "pool"), Egress: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			p.refillAfter = time.Hour
			waitReady(t, p, 1)
			warm := rt.sandbox(0).spec.Egress
			if warm == nil {
				t.Fatal("the warm sandbox was started without an egress socket")
			}
			mounted, err := os.Stat(warm.CABundle)
			roots, _ := os.ReadFile(sandbox.SystemCABundle)
			if b, _ := os.ReadFile(warm.CABundle); err != nil || string(b) != string(roots) {
				t.Fatalf("warm CA bundle: %d bytes, %v; want the host's system roots (%d bytes)", len(b), err, len(roots))
			}

			spec := sandbox.Spec{Workspace: sessionDir(t)}
			accepted := make(chan net.Conn, 1)
			if withProxy {
				spec.Egress = &sandbox.Egress{Socket: "/unused", CABundle: "/unused", CABundlePEM: []byte("SESSION CA"), Serve: func(l net.Listener) {
					go func() {
						if c, err := l.Accept(); err == nil {
							accepted <- c
						}
					}()
				}}
				spec.Env = map[string]string{"HTTPS_PROXY": "http://127.0.0.1:3128"}
			}
			sb, err := p.Create(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := sb.(*handed); !ok {
				t.Fatalf("got %T, want the warm sandbox", sb)
			}
			c, dialErr := net.Dial("unix", warm.Socket)
			if withProxy {
				if dialErr != nil {
					t.Fatalf("the warm sandbox's socket: %v", dialErr)
				}
				defer c.Close()
				select {
				case got := <-accepted:
					got.Close()
				case <-time.After(10 * time.Second):
					t.Fatal("the session's proxy did not get the warm sandbox's connection")
				}
				now, err := os.Stat(warm.CABundle)
				b, _ := os.ReadFile(warm.CABundle)
				if err != nil || !os.SameFile(mounted, now) || string(b) != "SESSION CA" {
					t.Errorf("CA bundle %q (same file as mounted: %v, %v); want the session's, in place", b, err == nil && os.SameFile(mounted, now), err)
				}
			} else if dialErr == nil {
				c.Close()
				t.Fatal("the warm socket of a session without a proxy accepts connections")
			}
			if err := sb.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Dir(warm.Socket)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the egress slot outlived its sandbox: %v", err)
			}
		})
	}
}

func TestPoolRetriesAFailedStartAndCloseRemovesWaitingSandboxes(t *testing.T) {
	rt := &fakeRuntime{failFirst: 1}
	p, err := New(rt, Options{Size: 2, Dir: filepath.Join(t.TempDir(), "pool")})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, p, 2)
	p.Close()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, sb := range rt.created {
		if !sb.isClosed() {
			t.Errorf("sandbox %d still open after Close", sb.n)
		}
		if _, err := os.Stat(sb.spec.Workspace); !os.IsNotExist(err) {
			t.Errorf("warm workspace %s left behind", sb.spec.Workspace)
		}
	}
}

// The replacement for a handed-out sandbox starts once that sandbox's first
// call has returned (or it is closed), not while the call runs.
// handOutHeld waits for p's warm sandbox and hands it to a session; its
// calls and Close then block until fake.hold is closed.
func handOutHeld(t *testing.T, p *Pool) (sandbox.Sandbox, *fakeSandbox) {
	t.Helper()
	waitReady(t, p, 1)
	sb, err := p.Create(context.Background(), sandbox.Spec{SessionID: "sesn_1", Workspace: sessionDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	fake := sb.(*handed).Sandbox.(*fakeSandbox)
	fake.hold = make(chan struct{})
	return sb, fake
}

func TestReplacementWaitsForTheFirstCall(t *testing.T) {
	for _, end := range []string{"Exec", "Close"} {
		t.Run(end, func(t *testing.T) {
			rt := &fakeRuntime{}
			p := newPool(t, rt, nil)
			sb, fake := handOutHeld(t, p)
			done := make(chan struct{})
			go func() {
				defer close(done)
				if end == "Exec" {
					_, _ = sb.Exec(context.Background(), sandbox.Call{Tool: "bash"})
				} else {
					_ = sb.Close(context.Background())
				}
			}()
			if end == "Exec" {
				time.Sleep(50 * time.Millisecond)
				if n := rt.count(); n != 1 {
					t.Fatalf("%d sandboxes created while the first call ran; the replacement must wait for it", n)
				}
			}
			close(fake.hold)
			<-done
			waitReady(t, p, 1)
			if n := rt.count(); n != 2 {
				t.Fatalf("%d sandboxes created, want the warm one and its replacement", n)
			}
			// Later calls start nothing more.
			_, _ = sb.Exec(context.Background(), sandbox.Call{Tool: "bash"})
			_ = sb.Close(context.Background())
			if n := rt.count(); n != 2 {
				t.Fatalf("%d sandboxes created after more calls, want 2", n)
			}
		})
	}
}

// TestReplacementStartsAfterRefillAfterWhileTheFirstCallRuns: a first
// call that runs long does not keep the pool empty past refillAfter.
func TestReplacementStartsAfterRefillAfterWhileTheFirstCallRuns(t *testing.T) {
	rt := &fakeRuntime{}
	p := newPool(t, rt, nil)
	p.refillAfter = 20 * time.Millisecond
	sb, fake := handOutHeld(t, p)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = sb.Exec(context.Background(), sandbox.Call{Tool: "bash"})
	}()
	waitReady(t, p, 1) // while the call still runs
	close(fake.hold)
	<-done
	if n := rt.count(); n != 2 {
		t.Fatalf("%d sandboxes created, want the warm one and one replacement", n)
	}
}

// A pool's directory is its own: what a worker that stopped without closing
// its pool left there (warm workspaces, egress sockets) goes at New, and
// Close removes what it started.
func TestPoolClearsItsDirectory(t *testing.T) {
	dir := filepath.Join(testenv.ShortDir(t), "pool")
	for _, stale := range []string{"warm-0123456789abcdef", "egress-0123456789abcdef"} {
		if err := os.MkdirAll(filepath.Join(dir, stale), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rt := &fakeRuntime{}
	p, err := New(rt, Options{Size: 1, Dir: dir, Egress: true})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, p, 1)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 { // the new warm sandbox's workspace and egress slot
		t.Errorf("pool directory after New: %v; want only the new sandbox's two entries", entries)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("pool directory after Close: %v; want it empty", entries)
	}
	if !rt.sandbox(0).isClosed() {
		t.Error("Close left the warm sandbox running")
	}
}
