package secrets

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultTTL is how long a Cache keeps a value when given no TTL.
const DefaultTTL = 60 * time.Second

// Cache wraps a Source, keeping each value in memory for at most a TTL. It
// never writes a value anywhere else, and it clears a value's bytes when it
// drops it. Concurrent Gets of a name that is not cached share one fetch.
// Errors are not cached: the next Get asks the Source again.
type Cache struct {
	src Source
	ttl time.Duration
	now func() time.Time // replaced in tests

	mu       sync.Mutex
	entries  map[string]*entry // guarded by mu
	inflight map[string]*call  // guarded by mu
	// gen is bumped by Purge, so that a fetch begun before it does not
	// repopulate the cache after it. Guarded by mu.
	gen uint64
}

var _ Source = (*Cache)(nil)

type entry struct {
	value   []byte
	expires time.Time
	timer   *time.Timer // drops the entry at expiry even if nobody asks again
}

// call is one fetch in progress; Gets of the same name wait for it.
type call struct {
	done chan struct{} // closed when the fetch has ended and err is set
	err  error
	// abandoned means the fetching Get's context ended, so err says
	// nothing about the secret and a waiter with time left should retry.
	abandoned bool
	waiters   int // guarded by Cache.mu; read by tests
}

// NewCache returns a Cache over src that keeps values for ttl (DefaultTTL
// if ttl <= 0).
func NewCache(src Source, ttl time.Duration) *Cache {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Cache{
		src:      src,
		ttl:      ttl,
		now:      time.Now,
		entries:  make(map[string]*entry),
		inflight: make(map[string]*call),
	}
}

// Get returns a copy of the cached value, fetching it first if it is not
// cached or has expired.
func (c *Cache) Get(ctx context.Context, name string) ([]byte, error) {
	for {
		c.mu.Lock()
		if e, ok := c.entries[name]; ok {
			if c.now().Before(e.expires) {
				v := bytes.Clone(e.value)
				c.mu.Unlock()
				return v, nil
			}
			c.dropLocked(name, e)
		}
		if cl, ok := c.inflight[name]; ok {
			cl.waiters++
			c.mu.Unlock()
			select {
			case <-cl.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("secret %q: %w", name, ctx.Err())
			}
			if cl.err != nil && !(cl.abandoned && ctx.Err() == nil) {
				return nil, cl.err
			}
			// The fetch stored its value (read it from the cache, so that
			// no copy outlives a Purge), or was abandoned by its caller.
			continue
		}
		cl := &call{done: make(chan struct{})}
		c.inflight[name] = cl
		gen := c.gen
		c.mu.Unlock()
		return c.fetch(ctx, name, cl, gen)
	}
}

func (c *Cache) fetch(ctx context.Context, name string, cl *call, gen uint64) (v []byte, err error) {
	finished := false
	defer func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.inflight, name)
		if !finished {
			// The Source panicked; let waiters go rather than hang them.
			err = fmt.Errorf("secret %q: the source failed unexpectedly", name)
		}
		cl.err = err
		cl.abandoned = err != nil && ctx.Err() != nil
		close(cl.done)
		if err == nil && gen == c.gen {
			c.storeLocked(name, bytes.Clone(v))
		}
	}()
	v, err = c.src.Get(ctx, name)
	finished = true
	if err == nil && len(v) == 0 {
		err = fmt.Errorf("secret %q: the source returned an empty value: %w", name, ErrNotFound)
	}
	return v, err
}

func (c *Cache) storeLocked(name string, value []byte) {
	e := &entry{value: value, expires: c.now().Add(c.ttl)}
	e.timer = time.AfterFunc(c.ttl, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.entries[name] == e {
			c.dropLocked(name, e)
		}
	})
	c.entries[name] = e
}

func (c *Cache) dropLocked(name string, e *entry) {
	e.timer.Stop()
	clear(e.value)
	delete(c.entries, name)
}

// Purge clears and drops every cached value. Fetches in progress still
// answer their callers but are not cached.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, e := range c.entries {
		c.dropLocked(name, e)
	}
	c.gen++
}
