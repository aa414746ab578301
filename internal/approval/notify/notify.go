// Package notify tells reviewers that a tool call is waiting for approval.
// Each channel (a signed Standard Webhooks POST, a Slack incoming webhook)
// delivers one message per request; the decision itself is never taken here.
// Reviewers decide through the approvals API or CLI, so a forged or replayed
// notification can at worst draw attention, never approve anything.
//
// Trust model. A Request carries text the model chose (the tool input, and
// for custom and MCP tools the tool name): channels render it so it cannot
// pose as Perimeter's own text. Slack shows it in literal rich-text blocks
// and escaped mrkdwn, so it cannot mention people, add links, or break out
// of the preview; the preview is capped, and the input's SHA-256 is the
// identity a reviewer checks. Webhook secrets and Slack URLs (which are
// themselves credentials) are kept out of every error: errors name the
// channel, the URL's host and the HTTP status, nothing else.
//
// Delivery is at least once: an attempt that failed on the network, with 429
// or with 5xx is retried with backoff, and every attempt of a request (across
// retries and worker restarts) carries the request's ID as webhook-id, so a
// receiver can drop duplicates.
package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// Request is one approval request as reviewers see it.
type Request struct {
	// ID is the tool-use event id. Webhooks send it as webhook-id; it is
	// stable across retries and worker restarts so receivers can drop
	// duplicates. It must be non-empty printable ASCII without spaces.
	ID        string
	SessionID string
	WorkID    string
	WorkerID  string
	Tool      string
	// Input is the exact input the model sent, a JSON value.
	Input json.RawMessage
	// InputSHA256 is the hex SHA-256 the approval binds to.
	InputSHA256 string
	// Decision is "ask" or "defer".
	Decision string
	// Rule names the policy rule that asked; Message is its reason.
	Rule    string
	Message string
	// Deadline is when the call is denied if nobody decides.
	Deadline  time.Time
	AllowEdit bool
	// RequestedAt is when the call started waiting. Webhooks use it as the
	// event timestamp, so a redelivered event has the same body.
	RequestedAt time.Time
	// Instructions say how to decide, for example
	// "perimeter approvals approve <id> --by NAME". The caller fills them.
	Instructions string
}

// Notifier is one configured channel.
type Notifier interface {
	// Name is the channel's configured name.
	Name() string
	// Notify delivers r, retrying transient failures until it succeeds,
	// the attempts run out or ctx ends. Errors are *DeliveryError or a
	// problem with r itself; a cancelled ctx is reported wrapped, so
	// errors.Is(err, context.Canceled) holds.
	Notify(ctx context.Context, r Request) error
}

var (
	_ Notifier = (*Webhook)(nil)
	_ Notifier = (*Slack)(nil)
)

const (
	defaultAttempts = 3
	defaultBackoff  = 500 * time.Millisecond
	// maxBackoff bounds one wait, including a server's Retry-After.
	maxBackoff = 30 * time.Second
	// attemptTimeout bounds one HTTP exchange, so a receiver that accepts
	// the connection and never answers costs one attempt, not the deadline.
	attemptTimeout = 10 * time.Second
	userAgent      = "perimeter"
)

// Option configures a channel.
type Option func(*options)

type options struct {
	client   *http.Client
	attempts int
	backoff  time.Duration
	now      func() time.Time
}

func buildOptions(opts []Option) options {
	o := options{attempts: defaultAttempts, backoff: defaultBackoff, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	// The channel never follows redirects: a 301/302 would turn the POST
	// into a bodiless GET, and a receiver that moved is a configuration
	// error to fix, not to paper over. The caller's client is copied, not
	// changed.
	c := http.Client{}
	if o.client != nil {
		c = *o.client
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.client = &c
	return o
}

// WithHTTPClient sends through c (its transport, proxy and TLS settings).
// Redirects are never followed whatever c's CheckRedirect says; per-attempt
// timeouts come from the request context, so c.Timeout may be zero.
// A nil c keeps the default client.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.client = c }
}

// WithRetries sets the number of attempts n (the first one included; values
// below 1 mean 1) and the wait before the first retry, which doubles for
// each further retry up to 30s. base <= 0 keeps the default. The default is
// 3 attempts, waiting 500ms then 1s.
func WithRetries(n int, base time.Duration) Option {
	return func(o *options) {
		o.attempts = max(n, 1)
		if base > 0 {
			o.backoff = base
		}
	}
}

// WithClock sets the clock for webhook timestamps (tests). Nil keeps
// time.Now. Waits between attempts always use real time.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}
