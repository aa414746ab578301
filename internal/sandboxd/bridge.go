package sandboxd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Bridge makes the session's egress proxy reachable inside the sandbox: it
// listens on listen (a loopback address, e.g. 127.0.0.1:3128, which the
// sandbox's HTTP_PROXY names) and joins each connection to the proxy's unix
// socket at socket, mounted into the sandbox by the runtime. The sandbox
// has no other network, so this is its only way out, and everything that
// passes is decided by the proxy in the supervisor.
//
// The listener is bound before Bridge returns; connections are served until
// ctx ends. A connection the socket refuses is closed at once.
func Bridge(ctx context.Context, listen, socket string) (net.Addr, error) {
	if fi, err := os.Stat(socket); err != nil {
		return nil, fmt.Errorf("egress socket: %w", err)
	} else if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("egress socket %s is not a socket", socket)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("egress bridge: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond) // e.g. out of descriptors: do not spin
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				join(ctx, c, socket)
			}()
		}
	}()
	return ln.Addr(), nil
}

// join copies between c and a fresh connection to the socket until both
// directions end.
func join(ctx context.Context, c net.Conn, socket string) {
	defer c.Close()
	var d net.Dialer
	up, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		closeWrite(up)
	}()
	_, _ = io.Copy(c, up)
	closeWrite(c)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
