package worker

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/anthropics/anthropic-sdk-go/v2/option"
)

// The SDK's runner enforces the platform's evaluated_permission itself (a
// deny never runs; an ask runs only once a user.tool_confirmation allowed
// it) but does not hand it to the tool. The gate records who decided, so
// the session learns each tool use's permission from the event list and
// stream as the runner reads them.

// maxListBytes bounds how much of one event list is kept to learn
// permissions from; a bigger page is passed through unread.
const maxListBytes = 32 << 20

// permissions maps tool-use event ids to their evaluated_permission.
type permissions struct {
	mu sync.Mutex
	m  map[string]string
}

func (p *permissions) note(events []eventHead) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range events {
		if (e.Type == "agent.tool_use" || e.Type == "agent.custom_tool_use") && e.ID != "" {
			if p.m == nil {
				p.m = map[string]string{}
			}
			p.m[e.ID] = e.EvaluatedPermission
		}
	}
}

// take returns and forgets the permission of a tool use.
func (p *permissions) take(id string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.m[id]
	delete(p.m, id)
	return v
}

// eventHead is the part of an event the worker reads.
type eventHead struct {
	Type                string `json:"type"`
	ID                  string `json:"id"`
	EvaluatedPermission string `json:"evaluated_permission"`
}

// learnPermissions is runner middleware: it reads along the session's
// event list and stream, unchanged for the runner.
func (s *session) learnPermissions(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	resp, err := next(req)
	if err != nil || resp == nil || resp.StatusCode != http.StatusOK || req.Method != http.MethodGet {
		return resp, err
	}
	switch {
	case strings.HasSuffix(req.URL.Path, "/events/stream"):
		resp.Body = &streamTee{ReadCloser: resp.Body, note: s.perms.note}
	case strings.HasSuffix(req.URL.Path, "/events"):
		resp.Body = &listTee{ReadCloser: resp.Body, note: s.perms.note}
	}
	return resp, nil
}

// streamTee parses server-sent events as they pass. Each event's data is
// noted before the runner can have decoded it: the runner dispatches an
// event at the blank line that ends it, which passes here first.
type streamTee struct {
	io.ReadCloser
	note    func([]eventHead)
	partial []byte // an unfinished line
	data    []byte // the data lines of the event being read
}

func (t *streamTee) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.partial = append(t.partial, p[:n]...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimRight(t.partial[:i], "\r")
		t.partial = t.partial[i+1:]
		switch {
		case len(line) == 0:
			t.flush()
		case bytes.HasPrefix(line, []byte("data:")):
			if len(t.data) > 0 {
				t.data = append(t.data, '\n')
			}
			t.data = append(t.data, bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))...)
		}
	}
	if len(t.partial) > maxListBytes { // no line ends: not an event stream
		t.partial, t.data = nil, nil
	}
	if err != nil {
		t.flush()
	}
	return n, err
}

func (t *streamTee) flush() {
	if len(t.data) == 0 {
		return
	}
	var e eventHead
	if json.Unmarshal(t.data, &e) == nil {
		t.note([]eventHead{e})
	}
	t.data = t.data[:0]
}

// listTee keeps an event list page and parses it once it is read whole.
type listTee struct {
	io.ReadCloser
	note func([]eventHead)
	buf  bytes.Buffer
	over bool
}

func (t *listTee) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if !t.over {
		if t.buf.Len()+n > maxListBytes {
			t.over, t.buf = true, bytes.Buffer{}
		} else {
			t.buf.Write(p[:n])
		}
	}
	if err == io.EOF && !t.over {
		var page struct {
			Data []eventHead `json:"data"`
		}
		if json.Unmarshal(t.buf.Bytes(), &page) == nil {
			t.note(page.Data)
		}
		t.buf = bytes.Buffer{}
	}
	return n, err
}
