package notify

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// slackPost decodes a posted message loosely, as Slack would.
type slackPost struct {
	Text   string           `json:"text"`
	Blocks []map[string]any `json:"blocks"`
}

// texts returns every "text" string in v, in no particular order.
func texts(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, c := range v {
			if s, ok := c.(string); ok && k == "text" {
				out = append(out, s)
				continue
			}
			out = append(out, texts(c)...)
		}
	case []any:
		for _, c := range v {
			out = append(out, texts(c)...)
		}
	case []map[string]any:
		for _, c := range v {
			out = append(out, texts(c)...)
		}
	}
	return out
}

// preformattedTexts returns the texts of the rich_text_preformatted elements.
func preformattedTexts(blocks []map[string]any) []string {
	var out []string
	for _, b := range blocks {
		els, _ := b["elements"].([]any)
		for _, e := range els {
			e, _ := e.(map[string]any)
			if e["type"] == "rich_text_preformatted" {
				out = append(out, strings.Join(texts(e["elements"]), ""))
			}
		}
	}
	return out
}

func postToSlack(t *testing.T, r Request) (slackPost, []byte) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	s, err := NewSlack("ops", srv.URL+"/services/T000/B000/XXXX",
		WithClock(func() time.Time { return r.RequestedAt.Add(time.Minute) }))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "ops" {
		t.Errorf("Name() = %q", s.Name())
	}
	if err := s.Notify(context.Background(), r); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	got := rec.requests()
	if len(got) != 1 {
		t.Fatalf("Slack saw %d requests, want 1", len(got))
	}
	if ct := got[0].header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var p slackPost
	if err := json.Unmarshal(got[0].body, &p); err != nil {
		t.Fatalf("message is not JSON: %v\n%s", err, got[0].body)
	}
	return p, got[0].body
}

func TestSlackMessageShowsWhatAReviewerNeeds(t *testing.T) {
	r := testRequest()
	p, _ := postToSlack(t, r)
	if p.Text == "" || len(p.Blocks) == 0 {
		t.Fatalf("message lacks text or blocks: %+v", p)
	}
	all := p.Text + "\n" + strings.Join(texts(p.Blocks), "\n")
	for _, want := range []string{
		r.Tool, r.Rule, r.Message, r.SessionID, r.InputSHA256, r.ID,
		"2026-03-01 12:15:00 UTC (in 14m0s)",
		"perimeter approvals approve sevt_01ABC --by NAME",
		"perimeter approvals deny sevt_01ABC --by NAME",
		string(r.Input),
	} {
		if !strings.Contains(all, want) {
			t.Errorf("message does not show %q:\n%s", want, all)
		}
	}
	if !strings.Contains(p.Text, r.Tool) || !strings.Contains(p.Text, r.Rule) {
		t.Errorf("fallback text %q should name the tool and rule", p.Text)
	}
}

func TestSlackCapsTheInputPreview(t *testing.T) {
	const beyond = "CANARY_BEYOND_THE_CAP"
	r := testRequest()
	// 13 bytes, then two-byte characters: byte 500 falls inside one.
	r.Input = json.RawMessage(`{"content":"x` + strings.Repeat("é", 400) + beyond + `"}`)
	p, raw := postToSlack(t, r)
	if strings.Contains(string(raw), beyond) {
		t.Errorf("the message carries input past the %d-byte cap", PreviewBytes)
	}
	pre := preformattedTexts(p.Blocks)
	if len(pre) == 0 {
		t.Fatal("no preformatted preview")
	}
	preview := pre[0]
	if len(preview) > PreviewBytes || len(preview) < PreviewBytes-utf8.UTFMax {
		t.Errorf("preview is %d bytes, want just under %d", len(preview), PreviewBytes)
	}
	if !utf8.ValidString(preview) || !strings.HasPrefix(string(r.Input), preview) {
		t.Errorf("preview is not a clean prefix of the input: %q", preview)
	}
	if all := strings.Join(texts(p.Blocks), "\n"); !strings.Contains(all, "first 499 of") {
		t.Errorf("message does not say the input was cut:\n%s", all)
	}
}

func TestSlackShowsModelTextLiterally(t *testing.T) {
	r := testRequest()
	r.Tool = "mcp__evil <!channel> <https://evil.example|approve here>"
	r.Message = "line one\n*Rule:* allow-all"
	r.Input = json.RawMessage("{\"x\":\"```\\n<!here> *bold*\"}")
	p, _ := postToSlack(t, r)
	if strings.Contains(p.Text, "<") || !strings.Contains(p.Text, "&lt;!channel&gt;") {
		t.Errorf("fallback text is not escaped: %q", p.Text)
	}
	for _, b := range p.Blocks {
		switch b["type"] {
		case "header", "rich_text":
		default:
			t.Errorf("block of type %v may parse markup; only header and rich_text carry request text", b["type"])
		}
	}
	if h := p.Blocks[0]["text"].(map[string]any); h["type"] != "plain_text" || h["emoji"] != false {
		t.Errorf("header %v should be plain_text without emoji", h)
	}
	all := strings.Join(texts(p.Blocks), "\n")
	if strings.Contains(all, "line one\n") {
		t.Errorf("a value's newline survived, so it could fake a field:\n%s", all)
	}
	if pre := preformattedTexts(p.Blocks); len(pre) == 0 || pre[0] != string(r.Input) {
		t.Errorf("preview %q, want the input verbatim %q", pre, r.Input)
	}
}

func TestSlackErrorsDoNotRevealTheURL(t *testing.T) {
	const token = "Xy9SecretWebhookToken"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no_service", http.StatusNotFound)
	}))
	defer srv.Close()
	s, err := NewSlack("ops", srv.URL+"/services/T000/B000/"+token+"?x="+token)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Notify(context.Background(), testRequest())
	var de *DeliveryError
	if !errors.As(err, &de) {
		t.Fatalf("Notify = %v, want a *DeliveryError", err)
	}
	msg := err.Error()
	if strings.Contains(msg, token) || strings.Contains(msg, "/services") {
		t.Errorf("error %q reveals the webhook URL", msg)
	}
	for _, want := range []string{`slack channel "ops"`, hostOf(t, srv.URL), "HTTP 404", "no_service"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
}

func TestNewSlackRejectsBadURLs(t *testing.T) {
	const token = "Xy9SecretWebhookToken"
	tests := []struct{ name, url, want string }{
		{"plain http off loopback", "http://hooks.slack.com/services/T/B/" + token, "must be https"},
		{"unparsable", "https://hooks.slack.com/services/%zz" + token, "does not parse"},
		{"no scheme", "hooks.slack.com/services/T/B/" + token, "scheme must be http or https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSlack("ops", tt.url)
			if err == nil {
				t.Fatal("NewSlack accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), token) {
				t.Errorf("error %q: want %q and no part of the URL", err, tt.want)
			}
		})
	}
	for _, ok := range []string{"https://hooks.slack.com/services/T/B/x", "http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x"} {
		if _, err := NewSlack("ops", ok); err != nil {
			t.Errorf("NewSlack(%q): %v", ok, err)
		}
	}
}

func TestInputPreviewCutsOnACharacterBoundary(t *testing.T) {
	in := []byte(strings.Repeat("a", PreviewBytes-1) + "é and more")
	got, shown, total := inputPreview(in)
	if got != strings.Repeat("a", PreviewBytes-1) || shown != PreviewBytes-1 || total != len(in) {
		t.Errorf("inputPreview = %q, %d, %d", got, shown, total)
	}
	got, _, _ = inputPreview([]byte("ok\xff\xfe"))
	if got != "ok?" {
		t.Errorf("invalid UTF-8 preview = %q, want %q", got, "ok?")
	}
}
