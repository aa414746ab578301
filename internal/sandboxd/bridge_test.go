package sandboxd

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoSocket serves a unix socket that answers each line with "echo: "
// and the line, and counts its connections.
func echoSocket(t *testing.T) (string, *int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "egress.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	n := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, "echo: "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return path, &n
}

func TestBridgeJoinsLoopbackConnectionsToTheEgressSocket(t *testing.T) {
	sock, _ := echoSocket(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Bridge(ctx, "127.0.0.1:0", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for j := range 3 {
				msg := strings.Repeat("x", i*1000+j)
				if _, err := io.WriteString(c, msg+"\n"); err != nil {
					t.Error(err)
					return
				}
				got, err := r.ReadString('\n')
				if err != nil || got != "echo: "+msg+"\n" {
					t.Errorf("got %d bytes (%v), want the echo of %d", len(got), err, len(msg))
					return
				}
			}
		}()
	}
	wg.Wait()

	cancel()
	// Once ctx ends, nothing listens any more.
	waitClosed(t, addr.String())
}

func TestBridgeRefusesWhatIsNotASocket(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, filepath.Join(t.TempDir(), "missing.sock")} {
		if _, err := Bridge(context.Background(), "127.0.0.1:0", path); err == nil {
			t.Errorf("%s: bridge started", path)
		}
	}
}

func waitClosed(t *testing.T, addr string) {
	t.Helper()
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%s still accepts connections after the bridge stopped", addr)
}
