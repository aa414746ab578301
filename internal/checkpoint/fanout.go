package checkpoint

import "sync"

// tokens bounds the goroutines that work through a tree of directories,
// walking a workspace or copying a checkpoint: each holds a token while it
// works. A directory's children go to new goroutines while tokens are
// free and run inline otherwise, so the work never waits for a token and
// nesting never deadlocks.
type tokens chan struct{}

// run runs fn holding a token: the root of the work.
func (t tokens) run(fn func()) {
	t <- struct{}{}
	defer func() { <-t }()
	fn()
}

// lend runs wait, which blocks without working, with the caller's token
// lent to the others meanwhile.
func (t tokens) lend(wait func()) {
	<-t
	wait()
	t <- struct{}{}
}

// fanout runs the work on one directory's children.
type fanout struct {
	t       tokens
	wg      sync.WaitGroup
	spawned bool
}

// do runs fn on a new goroutine if a token is free, inline otherwise.
func (f *fanout) do(fn func()) {
	select {
	case f.t <- struct{}{}:
		f.spawned = true
		f.wg.Go(func() {
			defer func() { <-f.t }()
			fn()
		})
	default:
		fn()
	}
}

// wait waits for what do started, lending the caller's token meanwhile.
func (f *fanout) wait() {
	if f.spawned {
		f.t.lend(f.wg.Wait)
	}
}
