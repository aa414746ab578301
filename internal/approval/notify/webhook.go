package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// EventType is the webhook event's type.
const EventType = "perimeter.approval.requested"

// DefaultTolerance is how far a webhook timestamp may be from the receiver's
// clock when Verify is given no tolerance (the specification's five minutes).
const DefaultTolerance = 5 * time.Minute

// Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// ErrUnverified is the class of every error Verify returns.
var ErrUnverified = errors.New("webhook not verified")

// Webhook posts a signed JSON event per the Standard Webhooks specification
// (https://www.standardwebhooks.com/). Each attempt carries webhook-id (the
// request's ID), webhook-timestamp (unix seconds, taken at that attempt) and
// webhook-signature ("v1,<base64 HMAC-SHA256 of id.timestamp.body>").
//
// The body is
//
//	{"type":"perimeter.approval.requested","timestamp":"<RFC 3339>","data":{...}}
//
// where timestamp is the request's RequestedAt and data holds the Request's
// fields in snake_case, with input embedded as JSON. The body is the same on
// every attempt; only the timestamp header and signature change.
type Webhook struct {
	s   *sender
	key []byte
}

// NewWebhook returns a webhook channel that posts to rawURL (http or https),
// signed with secret. The secret is either "whsec_" followed by base64 (the
// key is the decoded bytes, as in the specification and its libraries), or
// any other string, whose bytes are the key. A receiver using a Standard
// Webhooks library must be given the whsec_ form: those libraries base64-
// decode whatever follows the optional prefix. Secrets with leading or
// trailing white space are refused, since a stray newline from a file would
// otherwise sign with a different key.
func NewWebhook(name, rawURL, secret string, opts ...Option) (*Webhook, error) {
	key, err := parseSecret(secret)
	if err != nil {
		return nil, fmt.Errorf("notify: webhook channel %q: %w", name, err)
	}
	s, err := newSender("webhook", name, rawURL, opts)
	if err != nil {
		return nil, err
	}
	return &Webhook{s: s, key: key}, nil
}

// Name returns the channel's configured name.
func (w *Webhook) Name() string { return w.s.name }

// Notify posts r's event.
func (w *Webhook) Notify(ctx context.Context, r Request) error {
	if err := checkID(r.ID); err != nil {
		return fmt.Errorf("notify: webhook channel %q: %w", w.s.name, err)
	}
	body, err := eventBody(r, w.s.opts.now)
	if err != nil {
		return fmt.Errorf("notify: webhook channel %q: %w", w.s.name, err)
	}
	return w.s.post(ctx, body, func(h http.Header) {
		ts := w.s.opts.now().Unix()
		h.Set(HeaderID, r.ID)
		h.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderSignature, "v1,"+base64.StdEncoding.EncodeToString(mac(w.key, r.ID, ts, body)))
	})
}

// event is the webhook body.
type event struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      eventData `json:"data"`
}

type eventData struct {
	ID           string          `json:"id"`
	SessionID    string          `json:"session_id"`
	WorkID       string          `json:"work_id"`
	WorkerID     string          `json:"worker_id"`
	Tool         string          `json:"tool"`
	Input        json.RawMessage `json:"input"`
	InputSHA256  string          `json:"input_sha256"`
	Decision     string          `json:"decision"`
	Rule         string          `json:"rule"`
	Message      string          `json:"message"`
	Deadline     time.Time       `json:"deadline,omitzero"`
	AllowEdit    bool            `json:"allow_edit"`
	RequestedAt  time.Time       `json:"requested_at,omitzero"`
	Instructions string          `json:"instructions"`
}

// eventBody encodes r. Input is embedded as it is, less insignificant white
// space (encoding/json compacts embedded JSON); HTML escaping is off so
// strings are not rewritten either.
func eventBody(r Request, now func() time.Time) ([]byte, error) {
	if len(r.Input) > 0 && !json.Valid(r.Input) {
		return nil, errors.New("request input is not valid JSON")
	}
	at := r.RequestedAt
	if at.IsZero() {
		at = now()
	}
	ev := event{
		Type:      EventType,
		Timestamp: at.UTC(),
		Data: eventData{
			ID:           r.ID,
			SessionID:    r.SessionID,
			WorkID:       r.WorkID,
			WorkerID:     r.WorkerID,
			Tool:         r.Tool,
			Input:        r.Input,
			InputSHA256:  r.InputSHA256,
			Decision:     r.Decision,
			Rule:         r.Rule,
			Message:      r.Message,
			Deadline:     r.Deadline.UTC(),
			AllowEdit:    r.AllowEdit,
			RequestedAt:  r.RequestedAt.UTC(),
			Instructions: r.Instructions,
		},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ev); err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// checkID enforces what a header value and the signed content need: the id
// is non-empty visible ASCII.
func checkID(id string) error {
	if id == "" {
		return errors.New("request has no ID")
	}
	if len(id) > 256 {
		return errors.New("request ID is longer than 256 bytes")
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return errors.New("request ID has a character other than visible ASCII")
		}
	}
	return nil
}

// parseSecret returns the HMAC key. Its errors never quote the secret.
func parseSecret(secret string) ([]byte, error) {
	if secret == "" {
		return nil, errors.New("secret is empty")
	}
	if strings.TrimSpace(secret) != secret {
		return nil, errors.New("secret has leading or trailing white space")
	}
	enc, ok := strings.CutPrefix(secret, "whsec_")
	if !ok {
		return []byte(secret), nil
	}
	if enc == "" {
		return nil, errors.New("secret has nothing after whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		// CorruptInputError gives only an offset, never the input.
		return nil, fmt.Errorf("secret after whsec_ is not standard base64: %w", err)
	}
	if len(key) == 0 {
		return nil, errors.New("secret decodes to no bytes")
	}
	return key, nil
}

// mac is HMAC-SHA256 over "id.timestamp.body", the specification's signed
// content.
func mac(key []byte, id string, ts int64, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, ts, 10))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Sign returns the webhook-signature header value ("v1,<base64>") for a
// message with this id, timestamp (whole seconds) and body, signed with
// secret as NewWebhook accepts it.
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := parseSecret(secret)
	if err != nil {
		return "", err
	}
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, ts.Unix(), body)), nil
}

// Verify checks a received webhook: the three headers are present, the
// timestamp is within tolerance of now (either way; tolerance <= 0 means
// DefaultTolerance, a zero now means time.Now()), and one of the v1
// signatures in the space-separated webhook-signature list matches, compared
// in constant time. Signatures of other versions are ignored. Every error is
// ErrUnverified, with the reason. Receivers should also drop a webhook-id
// they have already processed.
func Verify(secret string, h http.Header, body []byte, tolerance time.Duration, now time.Time) error {
	key, err := parseSecret(secret)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if now.IsZero() {
		now = time.Now()
	}
	id, tsText, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	for _, m := range []struct{ name, v string }{{HeaderID, id}, {HeaderTimestamp, tsText}, {HeaderSignature, sigs}} {
		if m.v == "" {
			return fmt.Errorf("%w: missing %s header", ErrUnverified, m.name)
		}
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s is not unix seconds", ErrUnverified, HeaderTimestamp)
	}
	// Compare in seconds: time.Duration overflows for absurd timestamps.
	switch age := now.Unix() - ts; {
	case age > int64(tolerance/time.Second):
		return fmt.Errorf("%w: timestamp is %ds old, beyond the %s tolerance (a replay, or a clock off)", ErrUnverified, age, tolerance)
	case -age > int64(tolerance/time.Second):
		return fmt.Errorf("%w: timestamp is %ds in the future, beyond the %s tolerance (a clock off)", ErrUnverified, -age, tolerance)
	}
	want := mac(key, id, ts, body)
	v1 := 0
	for _, f := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(f, ",")
		if !ok || version != "v1" {
			continue
		}
		v1++
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			continue
		}
		if hmac.Equal(got, want) {
			return nil
		}
	}
	if v1 == 0 {
		return fmt.Errorf("%w: %s has no v1 signature", ErrUnverified, HeaderSignature)
	}
	return fmt.Errorf("%w: no v1 signature matches (wrong secret, or the body, id or timestamp changed)", ErrUnverified)
}
