// Package plane serves the embedded control plane on 127.0.0.1 for the
// bench commands, which run Perimeter's worker in-process against it.
package plane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/perimeterhq/perimeter/internal/controlplane"
)

// The control plane's credentials. They only exist inside this process.
const (
	APIKey = "sk-ant-api-perimeter-bench"
	EnvKey = "sk-ant-oat01-perimeter-bench"
	EnvID  = controlplane.DefaultEnvironmentID
)

// Plane is an embedded control plane served on 127.0.0.1, with an operator
// client.
type Plane struct {
	CP    *controlplane.Server
	URL   string
	Op    anthropic.Client // the operator's client, with the API key
	srv   *http.Server
	polls chan struct{} // gets a token when a work poll arrives
	// pollsOpen counts work polls being served. A poll whose worker has
	// gone may still claim the next item, which then waits out the
	// control plane's reclaim delay, so a new worker starts only once the
	// last one's polls are over.
	pollsOpen atomic.Int64
}

// Start serves a control plane whose agents are the scenario files in
// scenarioDir. Its state is in memory.
func Start(scenarioDir string) (*Plane, error) {
	cp, err := controlplane.New(controlplane.Options{
		APIKey: APIKey, EnvironmentKey: EnvKey, ScenarioDir: scenarioDir,
		TTL: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cp.Close()
		return nil, err
	}
	p := &Plane{CP: cp, URL: "http://" + ln.Addr().String(), polls: make(chan struct{}, 1)}
	p.srv = &http.Server{Handler: p.notePolls(cp.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	p.Op = anthropic.NewClient(option.WithBaseURL(p.URL), option.WithAPIKey(APIKey))
	return p, nil
}

// notePolls signals p.polls when a worker's work poll arrives.
func (p *Plane) notePolls(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/work/poll") {
			p.pollsOpen.Add(1)
			defer p.pollsOpen.Add(-1)
			select {
			case p.polls <- struct{}{}:
			default:
			}
		}
		next.ServeHTTP(w, r)
	})
}

// NextPoll waits for a work poll that arrives after it is called. Work
// created right then is claimed at once: the poll is a long poll the queue
// wakes, whereas an idle SDK WorkPoller sleeps 1–3 s between empty polls.
func (p *Plane) NextPoll(ctx context.Context) error {
	select {
	case <-p.polls: // an earlier poll
	default:
	}
	select {
	case <-p.polls:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("no work poll within 30s")
	}
}

// WaitPollsOver waits until no work poll is being served (a long poll
// lasts under a second), so a stopped worker's last poll cannot claim the
// next item.
func (p *Plane) WaitPollsOver(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for p.pollsOpen.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("a work poll is still open: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// Close ends the streams, then the server.
func (p *Plane) Close() {
	_ = p.CP.Close()
	_ = p.srv.Close()
}

// WorkerClient is a client for an in-process worker, which authenticates
// with the environment key and the items' sessions tokens.
func (p *Plane) WorkerClient() anthropic.Client {
	return anthropic.NewClient(option.WithBaseURL(p.URL), option.WithMaxRetries(1))
}
