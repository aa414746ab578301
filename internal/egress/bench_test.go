package egress

import (
	"crypto/tls"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"testing"
)

// BenchmarkSmallGET is one small GET on a kept-alive connection to a
// loopback server, directly and through the proxy (over a unix socket):
// the difference is what the proxy adds to a request.
func BenchmarkSmallGET(b *testing.B) {
	up := newUpstream(b, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	e := startProxy(b, Options{Rules: []Rule{{Name: "plain", Hosts: []string{"plain.test"}, Ports: []int{up.port}, AllowPrivate: true}}}, onUnixSocket)
	direct := &http.Client{Transport: &http.Transport{}}
	b.Cleanup(direct.CloseIdleConnections)
	for _, bc := range []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"direct", direct, up.URL + "/"},
		{"proxy", e.client(nil), fmt.Sprintf("http://plain.test:%d/", up.port)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := bc.client.Get(bc.url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// BenchmarkDownload is an 8 MiB HTTPS download, directly and through the
// proxy with TLS interception, a credential substituted in the request
// and the response redacted as it streams.
func BenchmarkDownload(b *testing.B) {
	const size = 8 << 20
	// Random bytes, like the compressed archives most large downloads are.
	payload := make([]byte, size)
	_, _ = mrand.NewChaCha8([32]byte{}).Read(payload)
	pki := newTestPKI(b)
	up := newUpstream(b, pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		w.Write(payload)
	}))
	ph := NewPlaceholder("token")
	e := startProxy(b, Options{
		RootCAs:     pki.pool,
		Rules:       []Rule{{Name: "dl", Hosts: []string{"dl.test"}, Ports: []int{up.port}, AllowPrivate: true}},
		Credentials: []Credential{{Name: "token", Placeholder: ph, Hosts: []string{"dl.test"}}},
		Secrets:     &staticSecrets{values: map[string]string{"token": "tok_" + newCanary()}},
	}, onUnixSocket)
	// Set up like the proxied client (testEnv.client), so that the two compare.
	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: pki.pool, ServerName: "dl.test"},
		DisableCompression: true,
	}}
	b.Cleanup(direct.CloseIdleConnections)
	for _, bc := range []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"direct", direct, up.URL + "/"},
		{"intercepted", e.client(nil), fmt.Sprintf("https://dl.test:%d/", up.port)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				req, _ := http.NewRequest("GET", bc.url, nil)
				req.Header.Set("Authorization", "Bearer "+ph)
				resp, err := bc.client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != size {
					b.Fatalf("read %d bytes", n)
				}
			}
		})
	}
}

// BenchmarkRedaction scans random bytes, like those of the compressed
// archives most large downloads are, for every form of one value.
func BenchmarkRedaction(b *testing.B) {
	text := make([]byte, 1<<20)
	_, _ = mrand.NewChaCha8([32]byte{}).Read(text)
	for _, bc := range []struct{ name, value string }{
		{"token", "tok_" + newCanary()},
		// Characters that escape make more forms: AWS secret keys have them.
		{"escaping", "wJalr/XUtnFEMI+K7MDENG=bPxR" + newCanary()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var pats []pattern
			for _, f := range secretForms([]byte(bc.value)) {
				pats = append(pats, pattern{text: f, repl: []byte("[redacted:token]")})
			}
			m := newMatcher(pats)
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				if _, _, matched, _ := m.scan(nil, text, true, nil); matched {
					b.Fatal("matched random bytes")
				}
			}
		})
	}
}
