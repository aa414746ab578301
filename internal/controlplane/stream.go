package controlplane

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// subscriberBuffer is how many events a stream may fall behind before it is
// dropped; the client reconnects and reads the log to catch up, as the SDK
// runner does after any disconnect.
const subscriberBuffer = 1024

// subscriber is one open SSE stream.
type subscriber struct {
	session string
	ch      chan *eventRow
	done    chan struct{}
	once    sync.Once
}

// drop ends the stream.
func (s *subscriber) drop() { s.once.Do(func() { close(s.done) }) }

// hub fans appended events out to the open streams of their session.
type hub struct {
	mu   sync.Mutex // guards subs
	subs map[string]map[*subscriber]struct{}
}

func newHub() *hub { return &hub{subs: map[string]map[*subscriber]struct{}{}} }

func (h *hub) subscribe(session string) *subscriber {
	sub := &subscriber{session: session, ch: make(chan *eventRow, subscriberBuffer), done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[session] == nil {
		h.subs[session] = map[*subscriber]struct{}{}
	}
	h.subs[session][sub] = struct{}{}
	return sub
}

func (h *hub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[sub.session], sub)
	if len(h.subs[sub.session]) == 0 {
		delete(h.subs, sub.session)
	}
}

// publish hands events to every stream of their session without blocking;
// a stream too far behind is dropped. The caller holds Server.mu, so streams
// see events in log order.
func (h *hub) publish(evs []*eventRow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range evs {
		for sub := range h.subs[ev.SessionID] {
			select {
			case sub.ch <- ev:
			default:
				sub.drop()
			}
		}
	}
}

func (h *hub) dropAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, subs := range h.subs {
		for sub := range subs {
			sub.drop()
		}
	}
}

// streamEvents serves GET /v1/sessions/{session}/events/stream: every event
// appended after the stream opened, as `event: <type>` + `data: <json>`,
// with pings while idle, until the client leaves or the server drops it.
// Accept is not checked: the SDK worker sends application/json here.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	id := r.PathValue("session")
	if err := p.allow("the event stream", credOperator, credEnvironment, credItem); err != nil {
		return err
	}
	if err := p.forSession(id); err != nil {
		return err
	}
	// Subscribe under the write lock, so every event committed after this
	// point reaches the stream and everything before is in the log.
	s.mu.Lock()
	_, err = s.sessionOr404(ctx, s.db, id)
	var sub *subscriber
	if err == nil {
		sub = s.hub.subscribe(id)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	defer s.hub.unsubscribe(sub)

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil // the client is gone
	}
	ping := time.NewTicker(s.opts.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.closing:
			return nil
		case <-sub.done:
			return nil
		case ev := <-sub.ch:
			if writeFrame(w, rc, ev.Type, ev.Body) != nil {
				return nil
			}
		case <-ping.C:
			if writeFrame(w, rc, "ping", []byte(`{"type":"ping"}`)) != nil {
				return nil
			}
		}
	}
}

func writeFrame(w http.ResponseWriter, rc *http.ResponseController, typ string, data []byte) error {
	if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, data); err != nil {
		return err
	}
	return rc.Flush()
}
