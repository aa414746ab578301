package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/anthropics/anthropic-sdk-go/v2/packages/param"
)

const (
	noHeartbeat      = "NO_HEARTBEAT"
	heartbeatDefault = 30 * time.Second
	heartbeatFloor   = time.Second
	// heartbeatRetry is the first pause before retrying a failed beat; it
	// doubles with each failure in a row, up to the beat interval.
	heartbeatRetry = 250 * time.Millisecond
)

// leaseEnd is why heartbeating a work item ended.
type leaseEnd int

const (
	leaseHeld leaseEnd = iota
	// leaseDone: the session finished (or was released) with the lease held.
	leaseDone
	// leaseStopping: the control plane reported stopping/stopped or did not
	// extend the lease; the worker force-stops the item.
	leaseStopping
	// leaseLost: a heartbeat met 412 — the item was re-queued or another
	// worker holds it. The worker must neither serve nor stop it.
	leaseLost
	// leaseRejected: a heartbeat met a permanent 4xx (e.g. 401).
	leaseRejected
	// leaseExpired: no heartbeat succeeded for a whole TTL; the lease is
	// presumed lapsed server-side.
	leaseExpired
)

func (e leaseEnd) String() string {
	return [...]string{"held", "done", "stopping", "lost", "rejected", "expired"}[e]
}

// released reports whether the item now belongs to the queue or another
// worker, so this one must not stop it.
func (e leaseEnd) released() bool { return e == leaseLost || e == leaseExpired }

// heartbeat keeps a work item's lease until ctx ends or the lease does, with
// the compare-token protocol: the first beat sends NO_HEARTBEAT, later ones
// echo the previous last_heartbeat. The interval is ttl/2 clamped to
// [1s, 30s]. A transient failure is retried after a short pause that grows
// with each failure in a row (never more than the interval): two intervals
// are a whole ttl, so retrying only at the next interval would let one blip
// lapse the lease. A run of transient failures longer than one ttl means the
// lease is presumed lost. onTTL receives each server-reported ttl.
func heartbeat(ctx context.Context, client anthropic.Client, work *anthropic.BetaSelfHostedWork, reqOpts []option.RequestOption, log *slog.Logger, onTTL func(time.Duration)) leaseEnd {
	interval, ttl := heartbeatDefault, heartbeatDefault
	last := noHeartbeat
	lastSuccess := time.Now()
	failures := 0 // transient failures in a row

	beat := func() leaseEnd {
		opts := append(reqOpts[:len(reqOpts):len(reqOpts)], option.WithRequestTimeout(interval), option.WithMaxRetries(0))
		resp, err := client.Beta.Environments.Work.Heartbeat(ctx, work.ID, anthropic.BetaEnvironmentWorkHeartbeatParams{
			EnvironmentID:         work.EnvironmentID,
			ExpectedLastHeartbeat: param.NewOpt(last),
		}, opts...)
		if err != nil {
			switch {
			case statusIs(err, 412):
				log.Error("lease lost: heartbeat precondition failed; releasing the item without stopping it")
				return leaseLost
			case ctx.Err() != nil:
				return leaseDone
			case fatal4xx(err):
				log.Error("heartbeat rejected", slog.Any("error", err))
				return leaseRejected
			case time.Since(lastSuccess) > ttl:
				log.Error("no heartbeat succeeded for a whole lease; presuming it lost",
					slog.Duration("ttl", ttl), slog.Any("error", err))
				return leaseExpired
			}
			failures++
			log.Warn("transient heartbeat failure", slog.Int("failures", failures), slog.Any("error", err))
			return leaseHeld
		}
		last, lastSuccess, failures = resp.LastHeartbeat, time.Now(), 0
		if resp.TTLSeconds > 0 {
			ttl = max(time.Duration(resp.TTLSeconds)*time.Second, heartbeatFloor)
			interval = min(max(ttl/2, heartbeatFloor), heartbeatDefault)
			if onTTL != nil {
				onTTL(ttl)
			}
		}
		switch {
		case resp.State == anthropic.BetaSelfHostedWorkHeartbeatResponseStateStopping,
			resp.State == anthropic.BetaSelfHostedWorkHeartbeatResponseStateStopped:
			log.Info("control plane asked the item to stop", slog.String("state", string(resp.State)))
			return leaseStopping
		case !resp.LeaseExtended:
			log.Warn("lease not extended; stopping the session")
			return leaseStopping
		}
		return leaseHeld
	}

	for {
		if end := beat(); end != leaseHeld {
			return end
		}
		wait := interval
		if failures > 0 {
			wait = min(interval, heartbeatRetry<<min(failures-1, 7))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return leaseDone
		case <-t.C:
		}
	}
}

// sessionsToken extracts the per-item sessions token from a work item's
// secret (URL-safe base64 of a JSON object, padding optional). It returns ""
// when there is none. Never log the secret or the token.
func sessionsToken(secret string) string {
	if secret == "" {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(secret, "="))
	if err != nil {
		return ""
	}
	var v struct {
		SessionsToken string `json:"sessions_token"`
	}
	if json.Unmarshal(raw, &v) != nil {
		return ""
	}
	return v.SessionsToken
}

// bearer authorises a request with cred alone: no API key rides along.
func bearer(cred string) []option.RequestOption {
	return []option.RequestOption{option.WithHeaderDel("X-Api-Key"), option.WithAuthToken(cred)}
}

func statusIs(err error, code int) bool {
	var apiErr *anthropic.Error
	return errors.As(err, &apiErr) && apiErr.StatusCode == code
}

// fatal4xx reports a client error that retrying will not fix; 408, 409 and
// 429 are retried.
func fatal4xx(err error) bool {
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) {
		return false
	}
	c := apiErr.StatusCode
	return c >= 400 && c < 500 && c != 408 && c != 409 && c != 429
}
