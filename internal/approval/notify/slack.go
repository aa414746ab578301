package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// PreviewBytes caps the input preview in a Slack message. The input's
// SHA-256, not the preview, is what a reviewer matches against.
const PreviewBytes = 500

// Caps on other fields, in bytes, far below Slack's block limits so a long
// value cannot get the whole message refused.
const (
	maxLine         = 200
	maxMessage      = 1000
	maxInstructions = 2000
)

// Slack posts an incoming-webhook message ({"text": ..., "blocks": [...]})
// with the tool, rule, reason, session, deadline, a capped input preview,
// the input's SHA-256 and the instructions to decide.
//
// Text the request carries is put in rich_text elements and a plain_text
// header, which Slack shows literally, so it can neither mention anyone nor
// add links or formatting; the notification fallback text is mrkdwn and is
// escaped. The URL is a credential and appears in no error.
type Slack struct {
	s *sender
}

// NewSlack returns a Slack channel posting to the incoming-webhook rawURL.
// The URL must be https, except for a loopback host (a local relay or a
// test): over plain http the URL, which is the credential, would cross the
// network readable.
func NewSlack(name, rawURL string, opts ...Option) (*Slack, error) {
	s, err := newSender("slack", name, rawURL, opts)
	if err != nil {
		return nil, err
	}
	if u, _ := url.Parse(rawURL); u.Scheme != "https" && !loopback(u.Hostname()) {
		return nil, fmt.Errorf("notify: slack channel %q: URL must be https (http only for a loopback host)", name)
	}
	return &Slack{s: s}, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Name returns the channel's configured name.
func (s *Slack) Name() string { return s.s.name }

// Notify posts r's message.
func (s *Slack) Notify(ctx context.Context, r Request) error {
	body, err := json.Marshal(slackMessage(r, s.s.opts.now()))
	if err != nil {
		return fmt.Errorf("notify: slack channel %q: encode message: %w", s.s.name, err)
	}
	return s.s.post(ctx, body, nil)
}

// Block Kit, only the parts used here.
type (
	slackPayload struct {
		Text   string `json:"text"`
		Blocks []any  `json:"blocks"`
	}
	plainText struct {
		Type  string `json:"type"` // "plain_text"
		Text  string `json:"text"`
		Emoji bool   `json:"emoji"`
	}
	headerBlock struct {
		Type string    `json:"type"` // "header"
		Text plainText `json:"text"`
	}
	richTextBlock struct {
		Type     string         `json:"type"` // "rich_text"
		Elements []richTextPart `json:"elements"`
	}
	// richTextPart is a rich_text_section or rich_text_preformatted.
	richTextPart struct {
		Type     string     `json:"type"`
		Elements []textSpan `json:"elements"`
	}
	textSpan struct {
		Type  string     `json:"type"` // "text"
		Text  string     `json:"text"`
		Style *textStyle `json:"style,omitempty"`
	}
	textStyle struct {
		Bold bool `json:"bold,omitempty"`
		Code bool `json:"code,omitempty"`
	}
)

func span(text string) textSpan { return textSpan{Type: "text", Text: text} }

func bold(text string) textSpan {
	return textSpan{Type: "text", Text: text, Style: &textStyle{Bold: true}}
}

func code(text string) textSpan {
	return textSpan{Type: "text", Text: text, Style: &textStyle{Code: true}}
}

func section(s ...textSpan) richTextPart {
	return richTextPart{Type: "rich_text_section", Elements: s}
}

// preformatted is a literal code block. Slack refuses empty text elements.
func preformatted(text string) richTextPart {
	if text == "" {
		text = " "
	}
	return richTextPart{Type: "rich_text_preformatted", Elements: []textSpan{span(text)}}
}

// slackMessage renders r; now is when it is sent, for the time left.
func slackMessage(r Request, now time.Time) slackPayload {
	tool := orNone(oneLine(r.Tool, maxLine))
	rule := orNone(oneLine(r.Rule, maxLine))
	session := orNone(oneLine(r.SessionID, maxLine))
	deadline := "none"
	if !r.Deadline.IsZero() {
		deadline = r.Deadline.UTC().Format("2006-01-02 15:04:05 UTC")
		if left := r.Deadline.Sub(now).Round(time.Second); left > 0 {
			deadline += fmt.Sprintf(" (in %s)", left)
		} else {
			deadline += " (passed)"
		}
	}
	edits := "not allowed"
	if r.AllowEdit {
		edits = "allowed"
	}

	details := []textSpan{
		bold("Tool: "), code(tool), span("\n"),
		bold("Rule: "), span(rule), span("\n"),
		bold("Reason: "), span(orNone(oneLine(r.Message, maxMessage))), span("\n"),
		bold("Session: "), code(session), span("\n"),
		bold("Work: "), code(orNone(oneLine(r.WorkID, maxLine))), span("  "),
		bold("Worker: "), code(orNone(oneLine(r.WorkerID, maxLine))), span("\n"),
		bold("Decision: "), span(orNone(oneLine(r.Decision, maxLine))), span("  "),
		bold("Edits: "), span(edits), span("\n"),
		bold("Deadline: "), span(deadline), span("\n"),
		bold("Request: "), code(orNone(oneLine(r.ID, maxLine))),
	}

	preview, shown, total := inputPreview(r.Input)
	inputLabel := fmt.Sprintf(" (%d bytes)", total)
	if shown < total {
		inputLabel = fmt.Sprintf(" (first %d of %d bytes)", shown, total)
	}
	parts := []richTextPart{
		section(details...),
		section(bold("Input"), span(inputLabel)),
		preformatted(preview),
		section(bold("Input SHA-256: "), code(orNone(oneLine(r.InputSHA256, maxLine)))),
	}
	if r.Instructions != "" {
		parts = append(parts, section(bold("To decide:")), preformatted(clip(r.Instructions, maxInstructions)))
	}

	header := clip("Approval needed: "+tool, 150)
	fallback := fmt.Sprintf("Approval needed: %s (rule %s) in session %s; denied at %s unless decided",
		escape(tool), escape(rule), escape(session), escape(deadline))
	return slackPayload{
		Text: fallback,
		Blocks: []any{
			headerBlock{Type: "header", Text: plainText{Type: "plain_text", Text: header}},
			richTextBlock{Type: "rich_text", Elements: parts},
		},
	}
}

// inputPreview returns at most PreviewBytes of input, cut on a character
// boundary, how many input bytes it shows, and the input's full length.
// Invalid UTF-8 becomes "?", which never lengthens the preview.
func inputPreview(input json.RawMessage) (preview string, shown, total int) {
	cut := len(input)
	if cut > PreviewBytes {
		cut = PreviewBytes
		for i := 0; i < utf8.UTFMax && cut > 0 && !utf8.RuneStart(input[cut]); i++ {
			cut--
		}
	}
	return strings.ToValidUTF8(string(input[:cut]), "?"), cut, len(input)
}

// oneLine collapses control characters (newlines included) to spaces, so a
// value cannot lay out lines that look like other fields, and clips it.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return clip(strings.TrimSpace(s), n)
}

// clip cuts s to at most n bytes on a character boundary, marking the cut
// with an ellipsis, and makes it valid UTF-8.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := max(n-len(ellipsis), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// escape makes text safe in Slack mrkdwn: no <!channel>, <@user> or links.
var escape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace
