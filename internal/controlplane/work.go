package controlplane

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// Work item states.
const (
	stateQueued   = "queued"
	stateStarting = "starting"
	stateActive   = "active"
	stateStopping = "stopping"
	stateStopped  = "stopped"
)

const (
	// noHeartbeat is the expected_last_heartbeat of a lease's first beat.
	noHeartbeat = "NO_HEARTBEAT"
	// defaultReclaim re-hands out items polled but not acked for this long.
	defaultReclaim = 5 * time.Second
	// pollerWindow is how recent a poll must be to count in workers_polling.
	pollerWindow = 30 * time.Second
	// maxPollers bounds the worker ids an environment remembers.
	maxPollers = 10000
)

// workerKey is the SHA-256 of an Anthropic-Worker-ID.
type workerKey [sha256.Size]byte

type workJSON struct {
	ID                string            `json:"id"`
	Type              string            `json:"type"`
	EnvironmentID     string            `json:"environment_id"`
	Data              map[string]string `json:"data"`
	State             string            `json:"state"`
	Secret            *string           `json:"secret"`
	Metadata          map[string]string `json:"metadata"`
	CreatedAt         string            `json:"created_at"`
	AcknowledgedAt    *string           `json:"acknowledged_at"`
	StartedAt         *string           `json:"started_at"`
	LatestHeartbeatAt *string           `json:"latest_heartbeat_at"`
	StopRequestedAt   *string           `json:"stop_requested_at"`
	StoppedAt         *string           `json:"stopped_at"`
}

// renderWork shows a work item; the secret only on the poll that hands it out.
func renderWork(w *workRow, withSecret bool) workJSON {
	var secret *string
	if withSecret {
		s := workSecret(w.Token)
		secret = &s
	}
	md := w.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return workJSON{
		ID: w.ID, Type: "work", EnvironmentID: w.EnvironmentID,
		Data:  map[string]string{"type": "session", "id": w.SessionID},
		State: w.State, Secret: secret, Metadata: md,
		CreatedAt:         formatTime(w.CreatedAt),
		AcknowledgedAt:    timeJSON(w.AcknowledgedAt),
		StartedAt:         timeJSON(w.StartedAt),
		LatestHeartbeatAt: timeJSON(w.LatestHeartbeatAt),
		StopRequestedAt:   timeJSON(w.StopRequestedAt),
		StoppedAt:         timeJSON(w.StoppedAt),
	}
}

// queueWork adds a queued work item for a session. Callers hold s.mu and
// call notifyQueue after the commit.
func (s *Server) queueWork(ctx context.Context, tx *sql.Tx, sess *sessionRow) (*workRow, error) {
	w := &workRow{
		ID: newID("work"), EnvironmentID: sess.EnvironmentID, SessionID: sess.ID, State: stateQueued,
		Token: newToken(), Metadata: map[string]string{}, TTLSeconds: s.ttl, CreatedAt: s.stamp(),
	}
	if err := insertWork(ctx, tx, w); err != nil {
		return nil, err
	}
	s.log.Info("work queued", slog.String("work_id", w.ID), slog.String("session_id", sess.ID), slog.String("environment_id", sess.EnvironmentID))
	return w, nil
}

// expireLeases ends the leases nobody renewed within their TTL: a starting
// or active item goes back to the queue with its lease token cleared (so
// another worker can claim it and the old holder's next heartbeat gets
// 412); a stopping item, whose worker is gone, is stopped. It reports
// whether anything was re-queued. Callers hold s.mu.
func (s *Server) expireLeases(ctx context.Context, tx *sql.Tx, now time.Time) (bool, error) {
	items, err := workWhere(ctx, tx, `state IN (?, ?, ?) ORDER BY seq`, stateStarting, stateActive, stateStopping)
	if err != nil {
		return false, err
	}
	requeued := false
	for _, w := range items {
		if now.Sub(w.LeaseUpdatedAt) <= time.Duration(w.TTLSeconds)*time.Second {
			continue
		}
		if w.State == stateStopping {
			w.State, w.StoppedAt = stateStopped, now
		} else {
			w.State = stateQueued
			w.Heartbeat = ""
			w.PolledAt, w.AcknowledgedAt, w.StartedAt, w.LatestHeartbeatAt, w.LeaseUpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
			requeued = true
		}
		if err := saveWork(ctx, tx, w); err != nil {
			return false, err
		}
		s.log.Warn("work lease expired", slog.String("work_id", w.ID), slog.String("session_id", w.SessionID),
			slog.String("now", w.State), slog.Int64("ttl_seconds", w.TTLSeconds))
	}
	return requeued, nil
}

// workOr404 loads a work item of an environment.
func (s *Server) workOr404(ctx context.Context, q querier, envID, workID string) (*workRow, error) {
	w, err := getWork(ctx, q, workID)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && w.EnvironmentID != envID) {
		return nil, errNotFound("work item %s not found in environment %s", workID, envID)
	}
	return w, err
}

// selfHostedOr404 checks the environment of a work route.
func (s *Server) selfHostedOr404(ctx context.Context, q querier, envID string) error {
	e, err := s.environmentOr404(ctx, q, envID)
	if err != nil {
		return err
	}
	if e.ConfigType != "self_hosted" {
		return errInvalid("environment %s is %s; only self_hosted environments have a work queue", envID, e.ConfigType)
	}
	return nil
}

func (s *Server) pollWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("polling for work", credEnvironment); err != nil {
		return err
	}
	envID := r.PathValue("env")
	q := r.URL.Query()
	var block time.Duration
	if v := q.Get("block_ms"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 999 {
			return errInvalid("block_ms is %q; use 1 to 999, or omit it for a non-blocking poll", v)
		}
		block = time.Duration(n) * time.Millisecond
	}
	reclaim := defaultReclaim
	if v := q.Get("reclaim_older_than_ms"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errInvalid("reclaim_older_than_ms is %q; use a whole number of milliseconds, or omit it for %d", v, defaultReclaim.Milliseconds())
		}
		reclaim = time.Duration(n) * time.Millisecond
	}
	workerID := r.Header.Get("Anthropic-Worker-ID")

	var timeout <-chan time.Time
	if block > 0 {
		t := time.NewTimer(block)
		defer t.Stop()
		timeout = t.C
	}
	for {
		s.mu.Lock()
		item, err := s.claim(ctx, envID, workerID, reclaim)
		wake := s.queueChanged
		s.mu.Unlock()
		if err != nil {
			return err
		}
		if item != nil {
			s.log.Info("work handed out", slog.String("work_id", item.ID), slog.String("session_id", item.SessionID), slog.String("worker_id", workerID))
			writeJSON(w, http.StatusOK, renderWork(item, true))
			return nil
		}
		if timeout == nil {
			break
		}
		select {
		case <-wake:
			continue
		case <-timeout:
		case <-ctx.Done():
			return nil
		case <-s.closing:
		}
		break
	}
	// An empty queue is 200 with a JSON null: the Go SDK reads a 204 as a
	// failed poll and backs off.
	writeJSON(w, http.StatusOK, nil)
	return nil
}

// claim hands out the oldest claimable item of an environment, marking it
// pending, or returns nil. Callers hold s.mu.
func (s *Server) claim(ctx context.Context, envID, workerID string, reclaim time.Duration) (*workRow, error) {
	var item *workRow
	err := s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := s.selfHostedOr404(ctx, tx, envID); err != nil {
			return err
		}
		now := s.stamp()
		s.notePoller(envID, workerID, now)
		requeued, err := s.expireLeases(ctx, tx, now)
		if err != nil {
			return err
		}
		if requeued {
			defer s.notifyQueue()
		}
		queued, err := workWhere(ctx, tx, `environment_id = ? AND state = ? ORDER BY seq`, envID, stateQueued)
		if err != nil {
			return err
		}
		for _, w := range queued {
			if w.PolledAt.IsZero() || now.Sub(w.PolledAt) >= reclaim {
				w.PolledAt = now
				item = w
				return saveWork(ctx, tx, w)
			}
		}
		return nil
	})
	return item, err
}

// pollerSet is the workers that polled an environment lately, for
// workers_polling.
type pollerSet struct {
	seen map[workerKey]time.Time // worker → last poll
	// prune is when the oldest poll in seen leaves the window, so a full
	// set is scanned only when that frees room.
	prune time.Time
}

// notePoller records a poll for workers_polling. The caller picks the
// worker id, so it is kept as a fixed-size digest, and an environment
// remembers at most maxPollers of them: once full, workers that have not
// polled within the window are forgotten, and if none has, a new id is not
// counted. Callers hold s.mu.
func (s *Server) notePoller(envID, workerID string, now time.Time) {
	if workerID == "" {
		return
	}
	ps := s.pollers[envID]
	if ps == nil {
		ps = &pollerSet{seen: map[workerKey]time.Time{}}
		s.pollers[envID] = ps
	}
	key := workerKey(sha256.Sum256([]byte(workerID)))
	if _, ok := ps.seen[key]; !ok && len(ps.seen) >= maxPollers {
		if now.Before(ps.prune) {
			return
		}
		oldest := now
		for k, at := range ps.seen {
			switch {
			case now.Sub(at) > pollerWindow:
				delete(ps.seen, k)
			case at.Before(oldest):
				oldest = at
			}
		}
		ps.prune = oldest.Add(pollerWindow)
		if len(ps.seen) >= maxPollers {
			return
		}
	}
	ps.seen[key] = now
}

func (s *Server) ackWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("acknowledging work", credEnvironment); err != nil {
		return err
	}
	envID, workID := r.PathValue("env"), r.PathValue("work")
	s.mu.Lock()
	defer s.mu.Unlock()
	var item *workRow
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := s.stamp()
		if _, err := s.expireLeases(ctx, tx, now); err != nil {
			return err
		}
		var err error
		if item, err = s.workOr404(ctx, tx, envID, workID); err != nil {
			return err
		}
		switch {
		case item.State != stateQueued:
			return errConflict("work item %s is %s; only a queued item you just polled can be acknowledged", workID, item.State)
		case item.PolledAt.IsZero():
			return errConflict("work item %s has not been polled; poll for it before acknowledging it", workID)
		}
		item.State = stateStarting
		item.PolledAt = time.Time{}
		item.AcknowledgedAt, item.LeaseUpdatedAt = now, now
		return saveWork(ctx, tx, item)
	})
	if err != nil {
		return err
	}
	s.log.Info("work acknowledged", slog.String("work_id", workID), slog.String("session_id", item.SessionID))
	writeJSON(w, http.StatusOK, renderWork(item, false))
	return nil
}

type heartbeatJSON struct {
	Type          string  `json:"type"`
	LastHeartbeat *string `json:"last_heartbeat"`
	LeaseExtended bool    `json:"lease_extended"`
	State         string  `json:"state"`
	TTLSeconds    int64   `json:"ttl_seconds"`
}

func (s *Server) heartbeatWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	envID, workID := r.PathValue("env"), r.PathValue("work")
	if err := p.allow("a heartbeat", credItem, credEnvironment); err != nil {
		return err
	}
	if err := p.forWork(workID); err != nil {
		return err
	}
	q := r.URL.Query()
	expected := q.Get("expected_last_heartbeat")
	if expected == "" {
		return errInvalid("expected_last_heartbeat is required: send %s on a lease's first beat, then the last_heartbeat of the previous response", noHeartbeat)
	}
	var desired int64
	if v := q.Get("desired_ttl_seconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > 3600 {
			return errInvalid("desired_ttl_seconds is %q; use 1 to 3600", v)
		}
		desired = n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var resp heartbeatJSON
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := s.stamp()
		requeued, err := s.expireLeases(ctx, tx, now)
		if err != nil {
			return err
		}
		if requeued {
			defer s.notifyQueue()
		}
		item, err := s.workOr404(ctx, tx, envID, workID)
		if err != nil {
			return err
		}
		resp = heartbeatJSON{Type: "work_heartbeat", State: item.State, TTLSeconds: item.TTLSeconds}
		if item.Heartbeat != "" {
			resp.LastHeartbeat = &item.Heartbeat
		}
		if item.State == stateStopping || item.State == stateStopped {
			// The worker must wind down; the token is not compared.
			return nil
		}
		leased := item.State == stateStarting || item.State == stateActive
		match := expected == item.Heartbeat || (expected == noHeartbeat && item.Heartbeat == "")
		if !leased || !match {
			return preconditionFailed(item, expected)
		}
		token := formatTime(now)
		item.Heartbeat, item.State, item.LatestHeartbeatAt, item.LeaseUpdatedAt = token, stateActive, now, now
		if item.StartedAt.IsZero() {
			item.StartedAt = now
		}
		if desired > 0 {
			item.TTLSeconds = desired
		}
		resp = heartbeatJSON{Type: "work_heartbeat", LastHeartbeat: &token, LeaseExtended: true, State: stateActive, TTLSeconds: item.TTLSeconds}
		return saveWork(ctx, tx, item)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// preconditionFailed is the 412 of a heartbeat whose token does not match:
// the lease was lost (re-queued, or another worker holds it).
func preconditionFailed(item *workRow, expected string) *apiError {
	var last any
	actual := "NULL"
	if item.Heartbeat != "" {
		last, actual = item.Heartbeat, item.Heartbeat
	}
	e := newAPIError(http.StatusPreconditionFailed, "invalid_request_error",
		"Heartbeat precondition failed: expected %s, actual was %s (work item %s is %s); this worker no longer holds the lease and must stop serving the item without stopping it",
		expected, actual, item.ID, item.State)
	e.details = map[string]any{
		"error_code":       "heartbeat_precondition_failed",
		"error_visibility": "user_facing",
		"current_state": map[string]any{
			"state":            item.State,
			"last_heartbeat":   last,
			"lease_updated_at": timeJSON(item.LeaseUpdatedAt),
			"lease_extended":   false,
			"ttl_seconds":      item.TTLSeconds,
		},
	}
	return e
}

func (s *Server) stopWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	envID, workID := r.PathValue("env"), r.PathValue("work")
	if err := p.allow("stopping work", credOperator, credEnvironment, credItem); err != nil {
		return err
	}
	if err := p.forWork(workID); err != nil {
		return err
	}
	var body struct {
		Force *bool `json:"force"`
	}
	if err := decodeBody(r, &body, true); err != nil {
		return err
	}
	force := body.Force != nil && *body.Force
	s.mu.Lock()
	defer s.mu.Unlock()
	var from, to string
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := s.stamp()
		if _, err := s.expireLeases(ctx, tx, now); err != nil {
			return err
		}
		item, err := s.workOr404(ctx, tx, envID, workID)
		if err != nil {
			return err
		}
		from = item.State
		if item.State == stateStopped {
			return errConflict("work item %s is already stopped", workID)
		}
		if item.StopRequestedAt.IsZero() {
			item.StopRequestedAt = now
		}
		// A graceful stop from the operator lets the worker holding the lease
		// wind down: it sees "stopping" on its next heartbeat and force-stops.
		// Anything else — force, or the worker itself — stops at once.
		graceful := p.cred == credOperator && !force
		switch {
		case graceful && (item.State == stateStarting || item.State == stateActive):
			item.State = stateStopping
		case graceful && item.State == stateStopping:
		default:
			item.State, item.StoppedAt = stateStopped, now
			item.PolledAt = time.Time{}
		}
		to = item.State
		return saveWork(ctx, tx, item)
	})
	if err != nil {
		return err
	}
	s.log.Info("work stop", slog.String("work_id", workID), slog.String("by", p.cred.String()), slog.Bool("force", force),
		slog.String("from", from), slog.String("to", to))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) getWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("retrieving a work item", credOperator); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var item *workRow
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := s.expireLeases(ctx, tx, s.stamp()); err != nil {
			return err
		}
		var err error
		item, err = s.workOr404(ctx, tx, r.PathValue("env"), r.PathValue("work"))
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderWork(item, false))
	return nil
}

func (s *Server) updateWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("updating a work item", credOperator); err != nil {
		return err
	}
	var body struct {
		Metadata map[string]*string `json:"metadata"`
	}
	if err := decodeBody(r, &body, false); err != nil {
		return err
	}
	if body.Metadata == nil {
		return errInvalid("metadata is required: {\"metadata\": {\"key\": \"value\" or null to delete}}")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var item *workRow
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		if item, err = s.workOr404(ctx, tx, r.PathValue("env"), r.PathValue("work")); err != nil {
			return err
		}
		for k, v := range body.Metadata {
			if v == nil {
				delete(item.Metadata, k)
			} else {
				item.Metadata[k] = *v
			}
		}
		return saveWork(ctx, tx, item)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderWork(item, false))
	return nil
}

// listWork takes the environment key as the SDK documents, and also the API
// key, which the self-hosted docs' operations section uses.
func (s *Server) listWork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("listing work", credEnvironment, credOperator); err != nil {
		return err
	}
	envID := r.PathValue("env")
	limit, after, err := pageParams(r, 20, 100)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var items []*workRow
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := s.selfHostedOr404(ctx, tx, envID); err != nil {
			return err
		}
		if _, err := s.expireLeases(ctx, tx, s.stamp()); err != nil {
			return err
		}
		var err error
		items, err = workWhere(ctx, tx, `environment_id = ? AND seq > ? ORDER BY seq LIMIT ?`, envID, after, limit+1)
		return err
	})
	if err != nil {
		return err
	}
	data := []workJSON{}
	for _, it := range items[:min(limit, len(items))] {
		data = append(data, renderWork(it, false))
	}
	var next *string
	if len(items) > limit {
		c := encodeCursor(items[limit-1].Seq)
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_page": next})
	return nil
}

func (s *Server) workStats(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, err := s.authenticate(ctx, r)
	if err != nil {
		return err
	}
	if err := p.allow("work queue stats", credOperator, credEnvironment); err != nil {
		return err
	}
	envID := r.PathValue("env")
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := map[string]any{"type": "work_queue_stats"}
	err = s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := s.selfHostedOr404(ctx, tx, envID); err != nil {
			return err
		}
		now := s.stamp()
		if _, err := s.expireLeases(ctx, tx, now); err != nil {
			return err
		}
		queued, err := workWhere(ctx, tx, `environment_id = ? AND state = ? ORDER BY seq`, envID, stateQueued)
		if err != nil {
			return err
		}
		var depth, pending int
		var oldest *string
		for _, it := range queued {
			if oldest == nil {
				oldest = timeJSON(it.CreatedAt)
			}
			if !it.PolledAt.IsZero() && now.Sub(it.PolledAt) < defaultReclaim {
				pending++
			} else {
				depth++
			}
		}
		polling := 0
		if ps := s.pollers[envID]; ps != nil {
			for _, at := range ps.seen {
				if now.Sub(at) <= pollerWindow {
					polling++
				}
			}
		}
		stats["depth"], stats["pending"], stats["oldest_queued_at"], stats["workers_polling"] = depth, pending, oldest, polling
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, stats)
	return nil
}
