package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testSecret is a whsec_ secret; its key is the 24 decoded bytes.
const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func testRequest() Request {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return Request{
		ID:           "sevt_01ABC",
		SessionID:    "sesn_01XYZ",
		WorkID:       "work_01",
		WorkerID:     "worker-a",
		Tool:         "bash",
		Input:        json.RawMessage(`{"command":"rm -rf /tmp/build && echo <done>"}`),
		InputSHA256:  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Decision:     "ask",
		Rule:         "destructive-shell",
		Message:      "deletes files",
		Deadline:     at.Add(15 * time.Minute),
		AllowEdit:    true,
		RequestedAt:  at,
		Instructions: "perimeter approvals approve sevt_01ABC --by NAME\nperimeter approvals deny sevt_01ABC --by NAME",
	}
}

// specSignature computes webhook-signature from the Standard Webhooks
// specification alone, without the package's code: HMAC-SHA256 keyed with
// the base64-decoded part of the whsec_ secret, over "id.timestamp.body",
// base64 encoded and prefixed "v1,".
func specSignature(t *testing.T, secret, id, ts string, body []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		t.Fatalf("decode secret: %v", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// received is one request a test server saw.
type received struct {
	header http.Header
	body   []byte
}

// recorder is a test receiver: it records each request and answers with the
// next scripted status (200 once the script runs out).
type recorder struct {
	mu       sync.Mutex // guards got and statuses
	got      []received
	statuses []int
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.got = append(rec.got, received{header: r.Header.Clone(), body: body})
	status := http.StatusOK
	if len(rec.statuses) > 0 {
		status, rec.statuses = rec.statuses[0], rec.statuses[1:]
	}
	rec.mu.Unlock()
	w.WriteHeader(status)
}

func (rec *recorder) requests() []received {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]received(nil), rec.got...)
}

func TestSignReproducesTheSpecificationTestVector(t *testing.T) {
	got, err := Sign(testSecret, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("Sign = %q, want %q", got, want)
	}
}

func TestWebhookPostsAnEventTheReceiverVerifies(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	now := time.Date(2026, 3, 1, 12, 0, 5, 0, time.UTC)
	w, err := NewWebhook("audit", srv.URL+"/hooks/perimeter", testSecret, WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if w.Name() != "audit" {
		t.Errorf("Name() = %q", w.Name())
	}
	r := testRequest()
	if err := w.Notify(context.Background(), r); err != nil {
		t.Fatalf("Notify: %v", err)
	}

	got := rec.requests()
	if len(got) != 1 {
		t.Fatalf("receiver saw %d requests, want 1", len(got))
	}
	h, body := got[0].header, got[0].body
	for k, want := range map[string]string{
		"Content-Type":  "application/json",
		"User-Agent":    "perimeter",
		HeaderID:        r.ID,
		HeaderTimestamp: strconv.FormatInt(now.Unix(), 10),
		HeaderSignature: specSignature(t, testSecret, r.ID, strconv.FormatInt(now.Unix(), 10), body),
	} {
		if h.Get(k) != want {
			t.Errorf("header %s = %q, want %q", k, h.Get(k), want)
		}
	}
	if err := Verify(testSecret, h, body, time.Minute, now.Add(30*time.Second)); err != nil {
		t.Errorf("Verify: %v", err)
	}

	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, body)
	}
	want := map[string]any{
		"type":      "perimeter.approval.requested",
		"timestamp": "2026-03-01T12:00:00Z",
		"data": map[string]any{
			"id":           r.ID,
			"session_id":   r.SessionID,
			"work_id":      r.WorkID,
			"worker_id":    r.WorkerID,
			"tool":         r.Tool,
			"input":        map[string]any{"command": "rm -rf /tmp/build && echo <done>"},
			"input_sha256": r.InputSHA256,
			"decision":     "ask",
			"rule":         r.Rule,
			"message":      r.Message,
			"deadline":     "2026-03-01T12:15:00Z",
			"allow_edit":   true,
			"requested_at": "2026-03-01T12:00:00Z",
			"instructions": r.Instructions,
		},
	}
	if diff := cmp.Diff(want, ev); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	// The input is embedded as sent, not re-escaped.
	if !bytes.Contains(body, r.Input) {
		t.Errorf("body does not embed the input verbatim:\n%s", body)
	}
}

func TestWebhookRefusesRequestsItCannotSign(t *testing.T) {
	w, err := NewWebhook("audit", "http://127.0.0.1:1/", testSecret)
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Request){
		"no id":         func(r *Request) { r.ID = "" },
		"id with space": func(r *Request) { r.ID = "a b" },
		"invalid input": func(r *Request) { r.Input = json.RawMessage(`{"a":`) },
	} {
		t.Run(name, func(t *testing.T) {
			r := testRequest()
			mutate(&r)
			err := w.Notify(context.Background(), r)
			var de *DeliveryError
			if err == nil || errors.As(err, &de) {
				t.Fatalf("Notify = %v, want a request error before any delivery", err)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"type":"perimeter.approval.requested"}`)
	signed := func(ts time.Time, b []byte) http.Header {
		sig, err := Sign(testSecret, "sevt_1", ts, b)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set(HeaderID, "sevt_1")
		h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		h.Set(HeaderSignature, sig)
		return h
	}
	without := func(name string) http.Header {
		h := signed(now, body)
		h.Del(name)
		return h
	}
	with := func(name, value string) http.Header {
		h := signed(now, body)
		h.Set(name, value)
		return h
	}
	otherSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("another key, 24 bytes!!!"))

	tests := []struct {
		name   string
		secret string
		header http.Header
		body   []byte
		want   string
	}{
		{"tampered body", testSecret, signed(now, body), []byte(`{"type":"perimeter.approval.granted"}`), "no v1 signature matches"},
		{"wrong secret", otherSecret, signed(now, body), body, "no v1 signature matches"},
		{"old timestamp", testSecret, signed(now.Add(-6*time.Minute), body), body, "360s old"},
		{"future timestamp", testSecret, signed(now.Add(6*time.Minute), body), body, "in the future"},
		{"missing webhook-id", testSecret, without(HeaderID), body, "missing webhook-id header"},
		{"missing webhook-timestamp", testSecret, without(HeaderTimestamp), body, "missing webhook-timestamp header"},
		{"missing webhook-signature", testSecret, without(HeaderSignature), body, "missing webhook-signature header"},
		{"timestamp not a number", testSecret, with(HeaderTimestamp, "yesterday"), body, "not unix seconds"},
		{"only other versions", testSecret, with(HeaderSignature, "v1a,abc v2,def"), body, "no v1 signature"},
		{"changed id", testSecret, with(HeaderID, "sevt_2"), body, "no v1 signature matches"},
		{"bad secret", "whsec_%%%", signed(now, body), body, "not standard base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.secret, tt.header, tt.body, 5*time.Minute, now)
			if err == nil {
				t.Fatal("Verify accepted it")
			}
			if !errors.Is(err, ErrUnverified) {
				t.Errorf("error %v is not ErrUnverified", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestVerifyAcceptsOneGoodSignatureAmongSeveral(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{}`)
	good, err := Sign(testSecret, "sevt_1", now, body)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(HeaderID, "sevt_1")
	h.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	// A rotated-out key's signature, another scheme's, garbage, then ours.
	h.Set(HeaderSignature, "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32))+" v1a,c2ln v1,!!! "+good)
	if err := Verify(testSecret, h, body, 0, now.Add(4*time.Minute)); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestRawSecretIsUsedAsItsBytes(t *testing.T) {
	const raw = "not-base64: a plain shared secret"
	body := []byte(`{}`)
	ts := time.Unix(1_800_000_000, 0)
	got, err := Sign(raw, "id", ts, body)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, []byte(raw))
	m.Write([]byte("id.1800000000.{}"))
	if want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil)); got != want {
		t.Errorf("Sign with a raw secret = %q, want %q", got, want)
	}
}

func TestNewWebhookRejectsBadConfig(t *testing.T) {
	const canary = "Zm9vYmFyYmF6cXV4Y2FuYXJ5"
	tests := []struct {
		name, url, secret, want string
	}{
		{"empty secret", "https://example.com/h", "", "secret is empty"},
		{"prefix only", "https://example.com/h", "whsec_", "nothing after whsec_"},
		{"bad base64", "https://example.com/h", "whsec_" + canary + "!!", "not standard base64"},
		{"trailing newline", "https://example.com/h", "whsec_" + canary + "\n", "white space"},
		{"no scheme", "example.com/h", testSecret, "scheme must be http or https"},
		{"ftp", "ftp://example.com/h", testSecret, "scheme must be http or https"},
		{"no host", "https:///h", testSecret, "no host"},
		{"unparsable", "https://example.com/%zz" + canary, testSecret, "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewWebhook("audit", tt.url, tt.secret)
			if err == nil {
				t.Fatal("NewWebhook accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error %q reveals the secret or URL", err)
			}
		})
	}
	if _, err := NewWebhook("", "https://example.com/h", testSecret); err == nil {
		t.Error("NewWebhook accepted an empty name")
	}
}
