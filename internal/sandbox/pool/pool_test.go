package pool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// fakeRuntime records the sandboxes it creates. Each writes a marker file
// into its workspace, as a real sandbox's mount would show it.
type fakeRuntime struct {
	mu        sync.Mutex
	created   []*fakeSandbox
	failFirst int
}

type fakeSandbox struct {
	n      int
	spec   sandbox.Spec
	mu     sync.Mutex
	closed bool
	hold   chan struct{} // if set, Exec waits for it to close
}

func (f *fakeRuntime) Name() string { return "fake" }

func (f *fakeRuntime) Create(_ context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failFirst > 0 {
		f.failFirst--
		return nil, errors.New("engine busy")
	}
	sb := &fakeSandbox{n: len(f.created) + 1, spec: spec}
	f.created = append(f.created, sb)
	if err := os.WriteFile(filepath.Join(spec.Workspace, ".sandbox"), []byte{byte('0' + sb.n)}, 0o600); err != nil {
		return nil, err
	}
	return sb, nil
}

func (s *fakeSandbox) Exec(context.Context, sandbox.Call) (sandbox.Result, error) {
	if s.hold != nil {
		<-s.hold
	}
	return sandbox.Result{}, nil
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
		name  string
		env   map[string]string
		files bool
	}{
		{"WorkspaceHasFiles", map[string]string{"A": "1"}, true},
		{"DifferentEnvironment", map[string]string{"A": "2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeRuntime{}
			p := newPool(t, rt, map[string]string{"A": "1"})
			waitReady(t, p, 1)
			ws := sessionDir(t)
			if tc.files {
				os.WriteFile(filepath.Join(ws, "notes.txt"), []byte("mine"), 0o600)
			}
			sb, err := p.Create(context.Background(), sandbox.Spec{Workspace: ws, Env: tc.env})
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
func TestReplacementWaitsForTheFirstCall(t *testing.T) {
	for _, end := range []string{"Exec", "Close"} {
		t.Run(end, func(t *testing.T) {
			rt := &fakeRuntime{}
			p := newPool(t, rt, nil)
			waitReady(t, p, 1)
			sb, err := p.Create(context.Background(), sandbox.Spec{SessionID: "sesn_1", Workspace: sessionDir(t)})
			if err != nil {
				t.Fatal(err)
			}
			fake := sb.(*handed).Sandbox.(*fakeSandbox)
			fake.hold = make(chan struct{})
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
