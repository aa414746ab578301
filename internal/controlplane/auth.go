package controlplane

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// credential is the kind of credential a request carried.
type credential int

const (
	// credOperator is the API key: environments, agents, sessions, user
	// events, work retrieve/update/stop/stats.
	credOperator credential = iota + 1
	// credEnvironment is the environment key: poll, ack, work list, and the
	// SDK's fallback for every per-item call.
	credEnvironment
	// credItem is a work item's sessions token: that item's heartbeat and
	// stop, and its session's GET and events.
	credItem
)

func (c credential) String() string {
	switch c {
	case credOperator:
		return "the API key"
	case credEnvironment:
		return "the environment key"
	case credItem:
		return "a work item's sessions token"
	}
	return "no credential"
}

// principal is who is calling.
type principal struct {
	cred credential
	work *workRow // the item a sessions token belongs to (credItem)
}

// authenticate identifies the caller. A missing or unknown credential is a
// 401; whether the credential may make this call is the handler's check.
func (s *Server) authenticate(ctx context.Context, r *http.Request) (*principal, error) {
	var cred string
	apiKeyHeader := false
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return nil, errUnauthenticated("malformed Authorization header: send \"Authorization: Bearer <credential>\"")
		}
		cred = tok
	} else if k := r.Header.Get("X-Api-Key"); k != "" {
		cred, apiKeyHeader = k, true
	} else {
		return nil, errUnauthenticated("missing credential: send X-Api-Key: <API key> for operator calls, or Authorization: Bearer <environment key> (or the work item's sessions token) for worker calls")
	}
	switch {
	case equalSecret(cred, s.opts.APIKey):
		return &principal{cred: credOperator}, nil
	case apiKeyHeader:
		return nil, errUnauthenticated("invalid X-Api-Key: it is not this control plane's API key (the environment key and sessions tokens go in Authorization: Bearer)")
	case equalSecret(cred, s.opts.EnvironmentKey):
		return &principal{cred: credEnvironment}, nil
	}
	w, err := workByToken(ctx, s.db, cred)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, errUnauthenticated("invalid credential: the bearer value is not this control plane's API key, environment key or any work item's sessions token")
	case err != nil:
		return nil, fmt.Errorf("look up sessions token: %w", err)
	}
	return &principal{cred: credItem, work: w}, nil
}

// allow returns a 403 unless the caller holds one of the credential kinds;
// what names the call for the message.
func (p *principal) allow(what string, kinds ...credential) error {
	for _, k := range kinds {
		if p.cred == k {
			return nil
		}
	}
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.String()
	}
	hint := ""
	switch {
	case len(kinds) == 1 && kinds[0] == credOperator:
		hint = " (send it as X-Api-Key)"
	case p.cred == credOperator:
		hint = "; the API key is for operator calls and should not be on the worker host"
	}
	return errForbidden("%s takes %s%s, not %s", what, strings.Join(names, " or "), hint, p.cred)
}

// forSession returns a 403 when a sessions token tries to act on another
// session.
func (p *principal) forSession(sessionID string) error {
	if p.cred == credItem && p.work.SessionID != sessionID {
		return errForbidden("this sessions token belongs to work item %s of session %s; it cannot act on session %s", p.work.ID, p.work.SessionID, sessionID)
	}
	return nil
}

// forWork returns a 403 when a sessions token tries to act on another work
// item.
func (p *principal) forWork(workID string) error {
	if p.cred == credItem && p.work.ID != workID {
		return errForbidden("this sessions token belongs to work item %s; it cannot act on work item %s", p.work.ID, workID)
	}
	return nil
}
