package secrets

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeSource serves fixed values and records calls. If get is set, it
// answers instead, told which call (1, 2, …) for the name this is.
type fakeSource struct {
	values map[string]string
	get    func(ctx context.Context, name string, call int) ([]byte, error)

	mu    sync.Mutex
	calls map[string]int // guarded by mu
}

func (s *fakeSource) Get(ctx context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	if s.calls == nil {
		s.calls = map[string]int{}
	}
	s.calls[name]++
	n := s.calls[name]
	s.mu.Unlock()
	if s.get != nil {
		return s.get(ctx, name, n)
	}
	v, ok := s.values[name]
	if !ok {
		return nil, notConfigured(name)
	}
	return []byte(v), nil
}

func (s *fakeSource) count(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[name]
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time // guarded by mu
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestCacheHonoursTTL(t *testing.T) {
	src := &fakeSource{values: map[string]string{"a": "va"}}
	c := NewCache(src, 10*time.Second)
	clock := newFakeClock()
	c.now = clock.Now

	for _, step := range []struct {
		advance   time.Duration
		wantCalls int
	}{
		{0, 1},
		{9 * time.Second, 1},
		{time.Second, 2}, // exactly the TTL: expired
		{5 * time.Second, 2},
		{5 * time.Second, 3},
	} {
		clock.Advance(step.advance)
		got, err := c.Get(t.Context(), "a")
		if err != nil || string(got) != "va" {
			t.Fatalf("Get = %q, %v", got, err)
		}
		if n := src.count("a"); n != step.wantCalls {
			t.Errorf("after %v more: %d backend calls, want %d", step.advance, n, step.wantCalls)
		}
	}
}

func TestCacheDefaultTTL(t *testing.T) {
	if c := NewCache(&fakeSource{}, 0); c.ttl != DefaultTTL {
		t.Errorf("ttl = %v, want %v", c.ttl, DefaultTTL)
	}
}

func TestCacheSharesOneFetchAmongConcurrentGets(t *testing.T) {
	release := make(chan struct{})
	src := &fakeSource{get: func(ctx context.Context, name string, _ int) ([]byte, error) {
		<-release
		return []byte("v-" + name), nil
	}}
	c := NewCache(src, time.Minute)

	const n = 50
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			v, err := c.Get(t.Context(), "a")
			results[i], errs[i] = string(v), err
		})
	}
	eventually(t, 5*time.Second, "the Gets did not all wait on one fetch", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		cl := c.inflight["a"]
		return cl != nil && cl.waiters == n-1
	})
	close(release)
	wg.Wait()

	if got := src.count("a"); got != 1 {
		t.Errorf("%d backend calls for %d concurrent Gets, want 1", got, n)
	}
	for i := range n {
		if errs[i] != nil || results[i] != "v-a" {
			t.Errorf("Get %d = %q, %v", i, results[i], errs[i])
		}
	}
}

func TestCacheFetchesDifferentNamesIndependently(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	src := &fakeSource{get: func(ctx context.Context, name string, _ int) ([]byte, error) {
		if name == "slow" {
			<-release
		}
		return []byte("v"), nil
	}}
	c := NewCache(src, time.Minute)
	go c.Get(context.WithoutCancel(t.Context()), "slow")
	eventually(t, 5*time.Second, "slow fetch did not start", func() bool { return src.count("slow") == 1 })

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "fast"); err != nil {
		t.Errorf("Get of another name while one fetch hangs: %v", err)
	}
}

func TestCacheWaiterRetriesWhenTheFetchingCallerGivesUp(t *testing.T) {
	src := &fakeSource{get: func(ctx context.Context, name string, call int) ([]byte, error) {
		if call == 1 {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return []byte("v"), nil
	}}
	c := NewCache(src, time.Minute)

	leaderCtx, cancelLeader := context.WithCancel(t.Context())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := c.Get(leaderCtx, "a")
		leaderErr <- err
	}()
	eventually(t, 5*time.Second, "first fetch did not start", func() bool { return src.count("a") == 1 })

	waiter := make(chan error, 1)
	var got []byte
	go func() {
		var err error
		got, err = c.Get(t.Context(), "a")
		waiter <- err
	}()
	eventually(t, 5*time.Second, "second Get did not wait", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.inflight["a"] != nil && c.inflight["a"].waiters == 1
	})
	cancelLeader()

	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled Get: %v, want context.Canceled", err)
	}
	if err := <-waiter; err != nil || string(got) != "v" {
		t.Errorf("the waiting Get = %q, %v; want it to fetch again and succeed", got, err)
	}
}

func TestCacheDoesNotCacheErrors(t *testing.T) {
	src := &fakeSource{get: func(_ context.Context, name string, call int) ([]byte, error) {
		if call == 1 {
			return nil, errors.New("backend down")
		}
		return []byte("v"), nil
	}}
	c := NewCache(src, time.Minute)
	if _, err := c.Get(t.Context(), "a"); err == nil {
		t.Fatal("first Get succeeded")
	}
	if got, err := c.Get(t.Context(), "a"); err != nil || string(got) != "v" {
		t.Errorf("second Get = %q, %v; want a fresh fetch", got, err)
	}
}

func TestCacheRejectsEmptyValues(t *testing.T) {
	src := &fakeSource{get: func(context.Context, string, int) ([]byte, error) { return nil, nil }}
	if _, err := NewCache(src, time.Minute).Get(t.Context(), "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an empty value: %v, want ErrNotFound", err)
	}
}

func TestCacheReturnsCopies(t *testing.T) {
	c := NewCache(&fakeSource{values: map[string]string{"a": "value"}}, time.Minute)
	first, _ := c.Get(t.Context(), "a")
	clear(first)
	if got, _ := c.Get(t.Context(), "a"); string(got) != "value" {
		t.Errorf("Get after the caller cleared its copy = %q, want value", got)
	}
}

func TestCachePurgeClearsAndDropsValues(t *testing.T) {
	src := &fakeSource{values: map[string]string{"a": "va", "b": "vb"}}
	c := NewCache(src, time.Minute)
	c.Get(t.Context(), "a")
	c.Get(t.Context(), "b")
	c.mu.Lock()
	held := [][]byte{c.entries["a"].value, c.entries["b"].value}
	c.mu.Unlock()

	c.Purge()
	for _, b := range held {
		for _, x := range b {
			if x != 0 {
				t.Fatalf("a purged value was not cleared: %q", b)
			}
		}
	}
	if got, err := c.Get(t.Context(), "a"); err != nil || string(got) != "va" {
		t.Errorf("Get after Purge = %q, %v", got, err)
	}
	if n := src.count("a"); n != 2 {
		t.Errorf("%d backend calls, want 2: Purge should force a fetch", n)
	}
}

func TestCachePurgeDuringFetchKeepsNothing(t *testing.T) {
	release := make(chan struct{})
	src := &fakeSource{get: func(context.Context, string, int) ([]byte, error) {
		<-release
		return []byte("v"), nil
	}}
	c := NewCache(src, time.Minute)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Get(t.Context(), "a")
	}()
	eventually(t, 5*time.Second, "fetch did not start", func() bool { return src.count("a") == 1 })
	c.Purge()
	close(release)
	<-done

	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d entries cached from a fetch that began before Purge", n)
	}
}

func TestCacheDropsExpiredValuesUnasked(t *testing.T) {
	c := NewCache(&fakeSource{values: map[string]string{"a": "va"}}, 20*time.Millisecond)
	c.Get(t.Context(), "a")
	c.mu.Lock()
	held := c.entries["a"].value
	c.mu.Unlock()

	eventually(t, 5*time.Second, "the expired value is still held", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.entries) == 0
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if string(held) != "\x00\x00" {
		t.Errorf("the dropped value was not cleared: %q", held)
	}
}
