package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// tunnelLinger is how long a tunnel waits for the sandbox to close its
// side once the upstream has closed.
const tunnelLinger = time.Minute

// serveConnect answers a CONNECT: refused, tunnelled as it is, or
// intercepted when the proxy must read the requests inside.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	t, err := connectTarget(r.Host)
	if err != nil {
		p.badRequest(w, r, r.Host, err)
		return
	}
	rec := p.newRecord(http.MethodConnect, t, "")
	what := "CONNECT " + t.authority()
	d := p.rules.checkHost(t.host, t.ip, t.port)
	rec.Rule = d.rule
	rec.HostPattern = d.host
	if d.reason != "" {
		p.refuse(w, &rec, what, d.reason)
		p.finish(&rec, start)
		return
	}
	rec.Allowed = true
	if p.intercept || d.inspect || p.credentialHost(t) {
		p.interceptTunnel(w, t, &rec, start)
		return
	}
	p.tunnel(w, r, t, &rec, start, what)
}

// tunnel connects the sandbox to the upstream byte for byte.
func (p *Proxy) tunnel(w http.ResponseWriter, r *http.Request, t target, rec *Record, start time.Time, what string) {
	defer p.finish(rec, start)
	up, err := p.dialUpstream(r.Context(), "tcp", t.authority())
	if err != nil {
		var rf *refusal
		if errors.As(err, &rf) {
			p.refuse(w, rec, what, rf.reason)
		} else {
			p.fail(w, rec, what, err.Error())
		}
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer func() {
		up.Close()
		p.untrack(up)
	}()
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.fail(w, rec, what, "the connection cannot be taken over: "+err.Error())
		return
	}
	defer client.Close()
	if !p.track(client) {
		return
	}
	_ = client.SetDeadline(time.Time{})
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		rec.Reason = "the sandbox went away"
		return
	}
	rec.Status = http.StatusOK
	var pending []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pending, _ = brw.Reader.Peek(n)
	}
	rec.BytesOut, rec.BytesIn = splice(client, up, pending)
}

// splice copies both ways until both sides are done, and returns the bytes
// sent upstream and back.
func splice(client, up net.Conn, pending []byte) (out, in int64) {
	raw := client
	if sc, ok := client.(*sandboxConn); ok {
		raw = sc.Conn // lets the kernel splice between the sockets
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if len(pending) > 0 {
			n, err := up.Write(pending)
			out += int64(n)
			if err != nil {
				closeWrite(up)
				return
			}
		}
		n, _ := io.Copy(up, raw)
		out += n
		closeWrite(up)
	}()
	in, _ = io.Copy(raw, up)
	closeWrite(raw)
	// The upstream is done; a sandbox that keeps its side open does not
	// keep the tunnel forever.
	_ = raw.SetReadDeadline(time.Now().Add(tunnelLinger))
	wg.Wait()
	return out, in
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// interceptTunnel takes over the sandbox's connection, terminates TLS on it
// with a leaf of the session CA for the target (plain HTTP inside the
// tunnel is read as it is) and hands it to the inner server, which checks
// and forwards each request on it. A failed handshake is recorded here;
// the requests are recorded one by one by the inner server.
func (p *Proxy) interceptTunnel(w http.ResponseWriter, t target, rec *Record, start time.Time) {
	rec.Intercepted = true
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.fail(w, rec, "CONNECT "+t.authority(), "the connection cannot be taken over: "+err.Error())
		p.finish(rec, start)
		return
	}
	handed := false
	defer func() {
		if !handed {
			client.Close()
		}
	}()
	if !p.track(client) {
		return
	}
	_ = client.SetDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	var prefix []byte
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		prefix = append(prefix, b...)
	} else {
		one := make([]byte, 1)
		if _, err := io.ReadFull(client, one); err != nil {
			return // the sandbox opened the tunnel and sent nothing
		}
		prefix = one
	}
	var conn net.Conn = &prefixConn{Conn: client, prefix: prefix}
	var batch *batchConn
	if prefix[0] == 0x16 { // a TLS handshake record
		t.scheme = "https"
		batch = &batchConn{Conn: &bulkConn{Conn: conn}}
		tc := tls.Server(batch, p.tlsConfig(t))
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			rec.Status = http.StatusOK
			rec.Reason = "the TLS handshake with the sandbox failed: " + err.Error() + " (does the sandbox trust the session CA?)"
			p.log.Debug("egress: TLS handshake with the sandbox failed", "host", t.host, "err", err)
			p.finish(rec, start)
			return
		}
		conn = tc
	} else {
		t.scheme = "http"
	}
	_ = client.SetDeadline(time.Time{})
	if p.queue.push(&innerConn{Conn: conn, target: t, batch: batch}) {
		handed = true
	}
}

func (p *Proxy) tlsConfig(t target) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.ca.leaf(t.host)
		},
	}
}
