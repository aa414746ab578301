package notify

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// steppingClock returns start, start+step, start+2*step, ... on each call.
func steppingClock(start time.Time, step time.Duration) func() time.Time {
	var n atomic.Int64
	return func() time.Time { return start.Add(time.Duration(n.Add(1)-1) * step) }
}

func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func TestWebhookRetriesTransientFailuresWithTheSameID(t *testing.T) {
	rec := &recorder{statuses: []int{http.StatusServiceUnavailable, http.StatusServiceUnavailable}}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	start := time.Unix(1_800_000_000, 0)
	w, err := NewWebhook("audit", srv.URL, testSecret,
		WithRetries(3, time.Millisecond), WithClock(steppingClock(start, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	r := testRequest()
	if err := w.Notify(context.Background(), r); err != nil {
		t.Fatalf("Notify: %v", err)
	}

	got := rec.requests()
	if len(got) != 3 {
		t.Fatalf("receiver saw %d attempts, want 3", len(got))
	}
	seen := map[string]bool{}
	for i, a := range got {
		if id := a.header.Get(HeaderID); id != r.ID {
			t.Errorf("attempt %d: webhook-id %q, want %q", i+1, id, r.ID)
		}
		if string(a.body) != string(got[0].body) {
			t.Errorf("attempt %d: body differs from the first attempt's", i+1)
		}
		ts := a.header.Get(HeaderTimestamp)
		if want := strconv.FormatInt(start.Add(time.Duration(i)*time.Minute).Unix(), 10); ts != want {
			t.Errorf("attempt %d: webhook-timestamp %s, want %s (taken per attempt)", i+1, ts, want)
		}
		sig := a.header.Get(HeaderSignature)
		if want := specSignature(t, testSecret, r.ID, ts, a.body); sig != want {
			t.Errorf("attempt %d: signature %q, want %q", i+1, sig, want)
		}
		sec, _ := strconv.ParseInt(ts, 10, 64)
		if err := Verify(testSecret, a.header, a.body, time.Minute, time.Unix(sec, 0)); err != nil {
			t.Errorf("attempt %d: Verify: %v", i+1, err)
		}
		if seen[sig] {
			t.Errorf("attempt %d reuses an earlier signature", i+1)
		}
		seen[sig] = true
	}
}

func TestRetriesTooManyRequests(t *testing.T) {
	rec := &recorder{statuses: []int{http.StatusTooManyRequests}}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	s, err := NewSlack("ops", srv.URL, WithRetries(2, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Notify(context.Background(), testRequest()); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if n := len(rec.requests()); n != 2 {
		t.Errorf("receiver saw %d attempts, want 2", n)
	}
}

func TestClientErrorsAreNotRetried(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusTemporaryRedirect} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				if status == http.StatusTemporaryRedirect {
					http.Redirect(w, r, "/elsewhere", status)
					return
				}
				http.Error(w, "invalid_signature", status)
			}))
			defer srv.Close()
			w, err := NewWebhook("audit", srv.URL+"/hook", testSecret, WithRetries(5, time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			err = w.Notify(context.Background(), testRequest())
			var de *DeliveryError
			if !errors.As(err, &de) {
				t.Fatalf("Notify = %v, want a *DeliveryError", err)
			}
			if n.Load() != 1 || de.Attempts != 1 || de.Status != status || de.Retryable {
				t.Errorf("requests %d, error %+v; want one attempt, status %d, not retryable", n.Load(), de, status)
			}
			msg := err.Error()
			for _, want := range []string{`webhook channel "audit"`, hostOf(t, srv.URL), "HTTP " + strconv.Itoa(status), "not retried"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
		})
	}
}

func TestGivesUpAfterTheConfiguredAttempts(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer srv.Close()
	w, err := NewWebhook("audit", srv.URL, testSecret, WithRetries(4, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	err = w.Notify(context.Background(), testRequest())
	var de *DeliveryError
	if !errors.As(err, &de) || de.Attempts != 4 || de.Status != http.StatusBadGateway || !de.Retryable {
		t.Fatalf("Notify = %v (%+v), want 4 attempts ending in 502, retryable", err, de)
	}
	if n.Load() != 4 {
		t.Errorf("receiver saw %d attempts, want 4", n.Load())
	}
	if !strings.Contains(err.Error(), "HTTP 502 Bad Gateway after 4 attempts") {
		t.Errorf("error %q", err)
	}
}

func TestNetworkErrorsAreRetriedAndNameTheHost(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	target := srv.URL + "/hooks/T000/B000/shhh"
	srv.Close() // nothing listens any more
	s, err := NewSlack("ops", target, WithRetries(3, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Notify(context.Background(), testRequest())
	var de *DeliveryError
	if !errors.As(err, &de) || de.Attempts != 3 || de.Status != 0 || !de.Retryable {
		t.Fatalf("Notify = %v (%+v), want 3 attempts without a response", err, de)
	}
	if msg := err.Error(); !strings.Contains(msg, hostOf(t, target)) || strings.Contains(msg, "shhh") || strings.Contains(msg, "/hooks") {
		t.Errorf("error %q should name the host and nothing of the path", msg)
	}
}

func TestCancellingStopsRetrying(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		cancel() // the worker shuts down while the first attempt is answered
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	w, err := NewWebhook("audit", srv.URL, testSecret, WithRetries(5, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = w.Notify(ctx, testRequest())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Notify took %s after cancellation", took)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Notify = %v, want context.Canceled", err)
	}
	if n.Load() != 1 {
		t.Errorf("receiver saw %d attempts, want 1", n.Load())
	}
}

func TestContextDeadlineInterruptsTheWaitBetweenAttempts(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	// The first wait is 30s (the cap); the deadline ends it.
	w, err := NewWebhook("audit", srv.URL, testSecret, WithRetries(5, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = w.Notify(ctx, testRequest())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Notify took %s, past its deadline", took)
	}
	var de *DeliveryError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &de) || de.Status != http.StatusServiceUnavailable {
		t.Errorf("Notify = %v, want the deadline, with the last status 503", err)
	}
	if n.Load() != 1 {
		t.Errorf("receiver saw %d attempts, want 1", n.Load())
	}
	if !strings.Contains(err.Error(), "last response HTTP 503") {
		t.Errorf("error %q does not give the last status", err)
	}
}

func TestCancellingInterruptsAnAttempt(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices a client going away only once the body is read.
		_, _ = io.Copy(io.Discard, r.Body)
		close(started)
		select { // a receiver that never answers
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	w, err := NewWebhook("audit", srv.URL, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	start := time.Now()
	err = w.Notify(ctx, testRequest())
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Notify took %s after cancellation", took)
	}
	var de *DeliveryError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &de) || de.Attempts != 1 {
		t.Errorf("Notify = %v, want context.Canceled after 1 attempt", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-5", 0},
		{"2", 2 * time.Second},
		{"3600", maxBackoff},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{now.Add(-10 * time.Second).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestErrorsDoNotQuoteAResponseThatEchoesTheRequest(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnprocessableEntity)
		_, _ = io.Copy(w, r.Body) // a receiver that echoes what it got
	}))
	defer srv.Close()
	w, err := NewWebhook("audit", srv.URL, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	err = w.Notify(context.Background(), testRequest())
	if err == nil {
		t.Fatal("Notify succeeded against a 422")
	}
	if strings.Contains(err.Error(), "rm -rf") || strings.Contains(err.Error(), "{") {
		t.Errorf("error %q quotes the response, and with it the tool input", err)
	}
}
