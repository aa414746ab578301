package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DeliveryError is a notification that was not delivered. Its text names the
// channel, the URL's host and the last HTTP status; it never holds the URL's
// path or query, a secret, or the request body.
type DeliveryError struct {
	Kind     string // "webhook" or "slack"
	Channel  string // the configured name
	Host     string // the URL's host[:port]
	Status   int    // the last HTTP status; 0 if no response arrived
	Attempts int    // attempts made
	// Retryable is true when the last failure was transient (network, 429,
	// 5xx): the attempts or ctx ran out, a later try may succeed.
	Retryable bool
	// Err is the last cause: a network error with the URL removed, an HTTP
	// status, or ctx's error.
	Err error
}

func (e *DeliveryError) Error() string {
	s := fmt.Sprintf("notify: %s channel %q (%s): %v", e.Kind, e.Channel, e.Host, e.Err)
	var se *statusError
	if e.Status != 0 && !errors.As(e.Err, &se) {
		s += fmt.Sprintf(" (last response HTTP %d)", e.Status)
	}
	if e.Attempts == 1 {
		s += " after 1 attempt"
	} else {
		s += fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	if !e.Retryable {
		s += ", not retried"
	}
	return s
}

func (e *DeliveryError) Unwrap() error { return e.Err }

// statusError is a response outside 2xx.
type statusError struct {
	code int
	// reason is the body when it is a short error token such as Slack's
	// "invalid_payload"; anything else is not shown, since a receiver may
	// echo the request (and so the tool input) back.
	reason string
}

func (e *statusError) Error() string {
	s := fmt.Sprintf("HTTP %d %s", e.code, http.StatusText(e.code))
	if e.code >= 300 && e.code < 400 {
		s += " (redirects are not followed)"
	}
	if e.reason != "" {
		s += ": " + e.reason
	}
	return s
}

// sender posts one body to one URL with retries, for every channel.
type sender struct {
	kind, name string
	url        string // a credential for Slack: never put it in an error
	host       string
	// private is the URL past the host (path and query), withheld from
	// errors even if a transport quotes it.
	private string
	opts    options
}

func newSender(kind, name, rawURL string, opts []Option) (*sender, error) {
	if name == "" {
		return nil, fmt.Errorf("notify: %s channel: name is empty", kind)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the URL; say only that it failed.
		return nil, fmt.Errorf("notify: %s channel %q: URL does not parse", kind, name)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("notify: %s channel %q: URL scheme must be http or https", kind, name)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("notify: %s channel %q: URL has no host", kind, name)
	}
	private := u.EscapedPath()
	if u.RawQuery != "" {
		private += "?" + u.RawQuery
	}
	if len(private) < 2 {
		private = ""
	}
	return &sender{kind: kind, name: name, url: rawURL, host: u.Host, private: private, opts: buildOptions(opts)}, nil
}

// post delivers body. header, if set, adds each attempt's own headers.
func (s *sender) post(ctx context.Context, body []byte, header func(http.Header)) error {
	var backoff time.Duration
	for attempt := 1; ; attempt++ {
		status, retryAfter, err := s.attempt(ctx, body, header)
		if err == nil {
			return nil
		}
		fail := &DeliveryError{Kind: s.kind, Channel: s.name, Host: s.host, Status: status, Attempts: attempt, Err: err}
		if ctx.Err() != nil {
			fail.Err, fail.Retryable = ctx.Err(), true
			return fail
		}
		fail.Retryable = retryable(status)
		if !fail.Retryable || attempt >= s.opts.attempts {
			return fail
		}
		if backoff == 0 {
			backoff = min(s.opts.backoff, maxBackoff)
		} else {
			backoff = min(2*backoff, maxBackoff)
		}
		wait := max(backoff, min(retryAfter, maxBackoff))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			fail.Err = ctx.Err()
			return fail
		case <-t.C:
		}
	}
}

// retryable reports whether a failure with this status (0: no response) may
// succeed later.
func retryable(status int) bool {
	return status == 0 || status == http.StatusTooManyRequests || status >= 500
}

// attempt makes one POST. It returns the status (0 without a response), the
// server's Retry-After, and an error that does not contain the URL.
func (s *sender) attempt(ctx context.Context, body []byte, header func(http.Header)) (int, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, errors.New("cannot build the request")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if header != nil {
		header(req.Header)
	}
	resp, err := s.opts.client.Do(req)
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			// Not the caller's deadline: keep it from reading as one.
			return 0, 0, fmt.Errorf("no response within %s", attemptTimeout)
		}
		return 0, 0, s.redact(stripURL(err))
	}
	defer resp.Body.Close()
	// Read a little so the connection can be reused and a short error token
	// can be reported; the rest is not wanted.
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, 0, nil
	}
	return resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		&statusError{code: resp.StatusCode, reason: errorToken(head)}
}

// stripURL removes the URL that net/http puts in its errors (url.Error
// prints `Post "https://hooks.slack.com/services/...": ...`).
func stripURL(err error) error {
	var ue *url.Error
	for errors.As(err, &ue) {
		err = ue.Err
	}
	if err == nil {
		return errors.New("request failed")
	}
	return err
}

// redact replaces err if its text still contains the URL's path or query.
func (s *sender) redact(err error) error {
	if s.private != "" && strings.Contains(err.Error(), s.private) {
		return errors.New("request failed (details withheld: they quote the URL)")
	}
	return err
}

// errorToken returns body if it is a short machine-readable error such as
// "invalid_payload" or "no_service", else "".
func errorToken(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" || len(s) > 64 {
		return ""
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == ' ') {
			return ""
		}
	}
	return s
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date; 0 if absent
// or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0
		}
		return min(time.Duration(n)*time.Second, maxBackoff)
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxBackoff)
	}
	return 0
}
