package checkpoint

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// spareTarget is how many spare files a store keeps ready: enough for a
// checkpoint that changes a few dozen files (each change adds its file and
// one manifest per directory on its path).
const spareTarget = 128

// spares is a pool of empty files in spare/, created ahead of need and
// taken by checkpoints as their temporary files. On some file systems
// allocating an inode is by far the dearest part of writing a small
// object (measured on ext4 under a VM: 360 µs to create a file, 20 µs to
// open and write an existing one, 20 µs to rename it), and a checkpoint
// sits between a tool call and its result; the pool moves that cost to
// the idle time after the checkpoint. Open empties spare/, as it does
// tmp/.
type spares struct {
	dir string

	mu      sync.Mutex // guards the fields below
	names   []string
	seq     int
	filling bool
	closed  bool
	wg      sync.WaitGroup
}

// take opens a spare file for writing, or returns nil when none is left.
func (sp *spares) take() *os.File {
	for {
		sp.mu.Lock()
		if len(sp.names) == 0 {
			sp.mu.Unlock()
			return nil
		}
		name := sp.names[len(sp.names)-1]
		sp.names = sp.names[:len(sp.names)-1]
		sp.mu.Unlock()
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
		if err == nil {
			return f
		}
		os.Remove(name)
	}
}

// refill creates spare files in the background until there are
// spareTarget of them.
func (sp *spares) refill() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.filling || sp.closed || len(sp.names) >= spareTarget {
		return
	}
	sp.filling = true
	sp.wg.Go(func() {
		for {
			sp.mu.Lock()
			if sp.closed || len(sp.names) >= spareTarget {
				sp.filling = false
				sp.mu.Unlock()
				return
			}
			sp.seq++
			name := filepath.Join(sp.dir, strconv.Itoa(sp.seq))
			sp.mu.Unlock()
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			sp.mu.Lock()
			if err == nil {
				f.Close()
				sp.names = append(sp.names, name)
			}
			if err != nil || sp.closed {
				// Never spin on a full disk; the next commit tries again.
				sp.filling = false
				sp.mu.Unlock()
				return
			}
			sp.mu.Unlock()
		}
	})
}

// close stops refilling and waits for it.
func (sp *spares) close() {
	sp.mu.Lock()
	sp.closed = true
	sp.mu.Unlock()
	sp.wg.Wait()
}
