// Command egress measures what the session egress proxy (internal/egress)
// costs a sandbox, against direct connections measured in the same run:
//
//  1. Latency of a small GET to a loopback HTTP server, direct and through
//     the proxy over its unix socket (plain-HTTP proxying, kept-alive
//     connections): p50 and p95, and the p50 the proxy adds. Target: at most
//     1 ms added.
//  2. Throughput of a large download (100 MiB of random bytes by default)
//     from a loopback HTTPS server, direct and through the proxy with TLS
//     interception, a credential substituted in the request and the
//     response redacted as it streams. Target: at least 0.7× direct. Two
//     diagnostic rows take one cost out each: interception with nothing to
//     redact, and a CONNECT tunnel the proxy does not touch. Each row also
//     gives the CPU time the whole process (client, proxy and server) spent
//     per MiB: on a machine shared with other work, throughput swings with
//     that work, and CPU per byte much less.
//
// Everything runs in this process on 127.0.0.1; the proxy resolves the test
// host names to it. Contenders alternate (blocks of requests for latency,
// reversed order every round for throughput) so that noise on the machine
// falls on all of them. A download's ratio to direct is the median over the
// rounds of its ratio to the direct download of the same round: the host's
// load changes from second to second, and downloads measured within a few
// seconds of each other share more of it. It prints a markdown table (and
// writes it to -out); a missed target never fails the run.
//
// Usage:
//
//	go run ./bench/egress [-requests 5000] [-size-mib 100] [-rounds 7] [-out results.md]
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
	"github.com/perimeterhq/perimeter/internal/egress"
)

// Targets.
const (
	maxAddedP50    = time.Millisecond
	minThroughputX = 0.7
)

// latencyBlock is how many requests one contender makes before the other.
const latencyBlock = 100

func main() {
	requests := flag.Int("requests", 5000, "small GETs to time per contender")
	sizeMiB := flag.Int("size-mib", 100, "size of the download, MiB")
	rounds := flag.Int("rounds", 7, "downloads per contender")
	out := flag.String("out", "", "also write the markdown results to this file")
	flag.Parse()
	if *requests < 1 || *sizeMiB < 1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "egress: -requests, -size-mib and -rounds must be at least 1")
		os.Exit(2)
	}
	md, err := run(*requests, *sizeMiB<<20, *rounds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "egress:", err)
		os.Exit(1)
	}
	fmt.Print(md)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "egress:", err)
			os.Exit(1)
		}
	}
}

// resolver answers every name with 127.0.0.1.
type resolver struct{}

func (resolver) LookupIPAddr(context.Context, string) ([]net.IPAddr, error) {
	return []net.IPAddr{{IP: net.IPv4(127, 0, 0, 1)}}, nil
}

type secrets map[string]string

func (s secrets) Get(_ context.Context, name string) ([]byte, error) {
	v, ok := s[name]
	if !ok {
		return nil, fmt.Errorf("secret %q is not configured", name)
	}
	return []byte(v), nil
}

// contender is one way to reach the servers.
type contender struct {
	name   string
	client *http.Client
	host   func(port int) string // the URL host for a server port
	header http.Header           // sent with every request
}

func run(requests, size, rounds int) (string, error) {
	dir, err := os.MkdirTemp("", "egress-bench-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)

	small := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	defer small.Close()
	smallPort := port(small.Listener)

	roots, cert, err := upstreamPKI()
	if err != nil {
		return "", err
	}
	payload := make([]byte, size)
	_, _ = mrand.NewChaCha8([32]byte{1}).Read(payload)
	big := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		w.Write(payload)
	}))
	big.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	big.StartTLS()
	defer big.Close()
	bigPort := port(big.Listener)

	ph := egress.NewPlaceholder("token")
	value := "tok_" + rand.Text()
	rules := []egress.Rule{
		{Name: "small", Hosts: []string{"small.test"}, Ports: []int{smallPort}, AllowPrivate: true},
		{Name: "download", Hosts: []string{"dl.test"}, Ports: []int{bigPort}, AllowPrivate: true},
	}
	withCredential := egress.Options{
		SessionID:   "sesn_bench",
		Rules:       rules,
		Credentials: []egress.Credential{{Name: "token", Placeholder: ph, Hosts: []string{"dl.test"}}},
		Secrets:     secrets{"token": value},
		Resolver:    resolver{},
		RootCAs:     roots,
	}
	plain := withCredential
	plain.Credentials, plain.Secrets = nil, nil

	// One proxy per contender: once a session has substituted a value,
	// it redacts every response, so sessions must not be shared.
	proxies := map[string]*proxy{}
	for name, opts := range map[string]egress.Options{"latency": plain, "redact": withCredential, "intercept": withCredential, "tunnel": plain} {
		p, err := startProxy(filepath.Join(dir, name+".sock"), opts)
		if err != nil {
			return "", err
		}
		defer p.close()
		proxies[name] = p
	}

	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: roots, ServerName: "dl.test"},
		DisableCompression: true,
	}}
	defer direct.CloseIdleConnections()
	directHost := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	viaName := func(name string) func(int) string {
		return func(port int) string { return net.JoinHostPort(name, strconv.Itoa(port)) }
	}

	// Latency.
	fmt.Fprintf(os.Stderr, "latency: %d small GETs per contender\n", requests)
	lat := []*contender{
		{name: "direct", client: direct, host: directHost},
		{name: "through the proxy", client: proxies["latency"].client(nil), host: viaName("small.test")},
	}
	samples := make([][]time.Duration, len(lat))
	for i, c := range lat { // warm-up
		for range 200 {
			if _, err := get(c, "http", smallPort, nil); err != nil {
				return "", fmt.Errorf("%s: %w", lat[i].name, err)
			}
		}
	}
	for done := 0; done < requests; done += latencyBlock {
		n := min(latencyBlock, requests-done)
		for i, c := range lat {
			for range n {
				d, err := get(c, "http", smallPort, nil)
				if err != nil {
					return "", fmt.Errorf("%s: %w", c.name, err)
				}
				samples[i] = append(samples[i], d)
			}
		}
	}

	// Throughput.
	sessionRoots := func(p *proxy) *x509.CertPool {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(p.p.CACertPEM())
		return pool
	}
	auth := http.Header{"Authorization": {"Bearer " + ph}}
	dl := []*contender{
		{name: "direct", client: direct, host: directHost},
		{name: "proxy, intercepted, credential substituted, response redacted", client: proxies["redact"].client(sessionRoots(proxies["redact"])), host: viaName("dl.test"), header: auth},
		{name: "proxy, intercepted, nothing to redact (diagnostic)", client: proxies["intercept"].client(sessionRoots(proxies["intercept"])), host: viaName("dl.test")},
		{name: "proxy, CONNECT tunnel, untouched (diagnostic)", client: proxies["tunnel"].client(roots), host: viaName("dl.test")},
	}
	rates := make([][]float64, len(dl))
	cpus := make([][]float64, len(dl)) // ms per MiB

	for _, c := range dl { // warm-up: connections, leaves, the secret
		if _, err := get(c, "https", bigPort, payload[:0]); err != nil {
			return "", fmt.Errorf("%s: %w", c.name, err)
		}
	}
	for r := range rounds {
		order := make([]int, len(dl))
		for i := range order {
			order[i] = i
		}
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			fmt.Fprintf(os.Stderr, "download round %d: %s\n", r+1, dl[i].name)
			c0 := stats.CPU(syscall.RUSAGE_SELF)
			d, err := get(dl[i], "https", bigPort, payload)
			if err != nil {
				return "", fmt.Errorf("%s: %w", dl[i].name, err)
			}
			c1 := stats.CPU(syscall.RUSAGE_SELF)
			rates[i] = append(rates[i], float64(size)/d.Seconds())
			cpus[i] = append(cpus[i], float64(c1-c0)/float64(time.Millisecond)/(float64(size)/(1<<20)))
		}
	}
	return report(requests, size, rounds, lat, samples, dl, rates, cpus), nil
}

// get makes one request and returns its time, from sending to the last
// byte of the body. With want set it checks the body's length.
func get(c *contender, scheme string, port int, want []byte) (time.Duration, error) {
	req, err := http.NewRequest("GET", scheme+"://"+c.host(port)+"/", nil)
	if err != nil {
		return 0, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	if len(want) > 0 && n != int64(len(want)) {
		return 0, fmt.Errorf("read %d bytes of %d", n, len(want))
	}
	return d, nil
}

type proxy struct {
	p      *egress.Proxy
	socket string
	served chan error
}

func startProxy(socket string, opts egress.Options) (*proxy, error) {
	p, err := egress.NewProxy(opts)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	px := &proxy{p: p, socket: socket, served: make(chan error, 1)}
	go func() { px.served <- p.Serve(l) }()
	return px, nil
}

func (p *proxy) close() {
	p.p.Close()
	<-p.served
}

// client reaches the proxy over its unix socket, as a sandbox does.
func (p *proxy) client(roots *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "egress.sock"}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.socket)
		},
		TLSClientConfig:    &tls.Config{RootCAs: roots},
		DisableCompression: true,
	}}
}

func port(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// upstreamPKI makes a CA and a certificate for the download server.
func upstreamPKI() (*x509.CertPool, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench upstream CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dl.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"dl.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// percentile returns the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

func report(requests, size, rounds int, lat []*contender, samples [][]time.Duration, dl []*contender, rates, cpus [][]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Egress proxy, %s, nproc %d, GOMAXPROCS %d, %s %s/%s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)

	fmt.Fprintf(&b, "### Small GET (%d per contender, kept-alive, plain HTTP, proxy over a unix socket)\n\n", requests)
	b.WriteString("| | p50 | p95 | Added p50 | Target | |\n| --- | ---: | ---: | ---: | --- | --- |\n")
	var p50s []time.Duration
	for i, c := range lat {
		s := slices.Clone(samples[i])
		slices.Sort(s)
		p50, p95 := percentile(s, 50), percentile(s, 95)
		p50s = append(p50s, p50)
		if i == 0 {
			fmt.Fprintf(&b, "| %s | %s | %s | | | |\n", c.name, ms(p50), ms(p95))
			continue
		}
		added := p50 - p50s[0]
		met := "met"
		if added > maxAddedP50 {
			met = "**not met**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | **%s** | ≤ %s | %s |\n", c.name, ms(p50), ms(p95), ms(added), ms(maxAddedP50), met)
	}

	fmt.Fprintf(&b, "\n### Download of %d MiB over HTTPS (medians of %d rounds)\n\n", size>>20, rounds)
	b.WriteString("| | Throughput | Each round | vs direct (each round's range) | Target | | CPU per MiB |\n| --- | ---: | --- | ---: | --- | --- | ---: |\n")
	for i, c := range dl {
		each := make([]string, len(rates[i]))
		ratios := make([]float64, len(rates[i]))
		for j, r := range rates[i] {
			each[j] = fmt.Sprintf("%.0f", r/(1<<20))
			ratios[j] = r / rates[0][j]
		}
		x := stats.Median(ratios)
		ratio, target, met := "", "", ""
		if i > 0 {
			ratio = fmt.Sprintf("%.2f×", x)
			if i == 1 {
				ratio = "**" + ratio + "**"
				target = fmt.Sprintf("≥ %.1f×", minThroughputX)
				met = "met"
				if x < minThroughputX {
					met = "**not met**"
				}
			}
			ratio += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(ratios), slices.Max(ratios))
		}
		fmt.Fprintf(&b, "| %s | %.0f MiB/s | %s | %s | %s | %s | %.2f ms |\n", c.name, stats.Median(rates[i])/(1<<20), strings.Join(each, ", "), ratio, target, met, stats.Median(cpus[i]))
	}
	b.WriteString("\nThe server, the proxy and the client share this machine's CPUs; CPU per MiB is the whole process's. " +
		"Direct, each byte is encrypted once and decrypted once; intercepted, the proxy decrypts and encrypts it again " +
		"and copies it through two more sockets, and with a value to redact it also searches it for every form of that value.\n")
	return b.String()
}
