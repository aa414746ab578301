//go:build unix

package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A named pipe where the secret file should be is refused at once, not
// waited on until something writes to it.
func TestFileRefusesANamedPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f := NewFile(map[string]string{"pipe": fifo})
	done := make(chan error, 1)
	go func() {
		_, err := f.Get(t.Context(), "pipe")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Get of a named pipe: %v, want it refused as not a regular file", err)
		}
	case <-time.After(10 * time.Second):
		// Release the blocked open before failing.
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		<-done
		t.Fatal("Get of a named pipe waited for a writer")
	}
}
