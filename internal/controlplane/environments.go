package controlplane

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

type environmentJSON struct {
	ID          string            `json:"id"`
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Config      map[string]string `json:"config"`
	Metadata    map[string]string `json:"metadata"`
	Scope       string            `json:"scope"`
	CreatedAt   string            `json:"created_at"`
	UpdatedAt   string            `json:"updated_at"`
	ArchivedAt  *string           `json:"archived_at"`
}

func renderEnvironment(e *environment) environmentJSON {
	md := e.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return environmentJSON{
		ID: e.ID, Type: "environment", Name: e.Name, Description: e.Description,
		Config: map[string]string{"type": e.ConfigType}, Metadata: md, Scope: e.Scope,
		CreatedAt: formatTime(e.CreatedAt), UpdatedAt: formatTime(e.UpdatedAt),
	}
}

func (s *Server) ensureDefaultEnvironment(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := getEnvironment(ctx, tx, DefaultEnvironmentID)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		now := s.stamp()
		return insertEnvironment(ctx, tx, &environment{
			ID: DefaultEnvironmentID, Name: "default", Description: "The Perimeter control plane's built-in self-hosted environment",
			ConfigType: "self_hosted", Scope: "organization", Metadata: map[string]string{}, CreatedAt: now, UpdatedAt: now,
		})
	})
}

// environmentOr404 loads an environment or explains that it does not exist.
func (s *Server) environmentOr404(ctx context.Context, q querier, id string) (*environment, error) {
	e, err := getEnvironment(ctx, q, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound("environment %s not found; GET /v1/environments lists them (%s always exists)", id, DefaultEnvironmentID)
	}
	return e, err
}

type environmentBody struct {
	Name        *string            `json:"name"`
	Description *string            `json:"description"`
	Config      *environmentConfig `json:"config"`
	Metadata    map[string]*string `json:"metadata"`
	Scope       *string            `json:"scope"`
}

type environmentConfig struct {
	Type string `json:"type"`
}

func (s *Server) createEnvironment(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("creating an environment", credOperator); err != nil {
		return err
	}
	var body environmentBody
	if err := decodeBody(r, &body, false); err != nil {
		return err
	}
	if body.Name == nil || strings.TrimSpace(*body.Name) == "" {
		return errInvalid("name is required")
	}
	e := &environment{ID: newID("env"), Name: *body.Name, ConfigType: "self_hosted", Scope: "organization", Metadata: map[string]string{}}
	if body.Config != nil {
		switch body.Config.Type {
		case "self_hosted":
		case "cloud":
			return errInvalid("config.type cloud is not supported by the Perimeter control plane; use {\"type\":\"self_hosted\"}")
		default:
			return errInvalid("config.type is %q; use self_hosted", body.Config.Type)
		}
	}
	if body.Description != nil {
		e.Description = *body.Description
	}
	if body.Scope != nil {
		if *body.Scope != "organization" && *body.Scope != "account" {
			return errInvalid("scope is %q; use organization or account", *body.Scope)
		}
		e.Scope = *body.Scope
	}
	for k, v := range body.Metadata {
		if v != nil {
			e.Metadata[k] = *v
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.update(r.Context(), func(ctx context.Context, tx *sql.Tx) error {
		e.CreatedAt = s.stamp()
		e.UpdatedAt = e.CreatedAt
		return insertEnvironment(ctx, tx, e)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderEnvironment(e))
	return nil
}

func (s *Server) updateEnvironment(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("updating an environment", credOperator); err != nil {
		return err
	}
	var body environmentBody
	if err := decodeBody(r, &body, false); err != nil {
		return err
	}
	if body.Config != nil && body.Config.Type != "self_hosted" {
		return errInvalid("config.type cannot change from self_hosted")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var e *environment
	err = s.update(r.Context(), func(ctx context.Context, tx *sql.Tx) error {
		var err error
		if e, err = s.environmentOr404(ctx, tx, r.PathValue("env")); err != nil {
			return err
		}
		if body.Name != nil {
			e.Name = *body.Name
		}
		if body.Description != nil {
			e.Description = *body.Description
		}
		for k, v := range body.Metadata {
			if v == nil {
				delete(e.Metadata, k)
			} else {
				e.Metadata[k] = *v
			}
		}
		e.UpdatedAt = s.stamp()
		return updateEnvironment(ctx, tx, e)
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderEnvironment(e))
	return nil
}

func (s *Server) getEnvironment(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("reading an environment", credOperator); err != nil {
		return err
	}
	e, err := s.environmentOr404(r.Context(), s.db, r.PathValue("env"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderEnvironment(e))
	return nil
}

func (s *Server) listEnvironments(w http.ResponseWriter, r *http.Request) error {
	p, err := s.authenticate(r.Context(), r)
	if err != nil {
		return err
	}
	if err := p.allow("listing environments", credOperator); err != nil {
		return err
	}
	limit, after, err := pageParams(r, 20, 100)
	if err != nil {
		return err
	}
	seqs, envs, err := listEnvironments(r.Context(), s.db, after, limit+1)
	if err != nil {
		return err
	}
	data := []environmentJSON{}
	for _, e := range envs[:min(limit, len(envs))] {
		data = append(data, renderEnvironment(e))
	}
	var next *string
	if len(envs) > limit {
		c := encodeCursor(seqs[limit-1])
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_page": next})
	return nil
}

// pageParams reads limit (default def, at most max) and the page cursor.
func pageParams(r *http.Request, def, maxLimit int) (limit int, cursor int64, err error) {
	q := r.URL.Query()
	limit = def
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			return 0, 0, errInvalid("limit is %q; use a whole number from 1 to %d", v, maxLimit)
		}
		limit = n
	}
	if v := q.Get("page"); v != "" {
		if cursor, err = decodeCursor(v); err != nil {
			return 0, 0, err
		}
	}
	return limit, cursor, nil
}

// Page cursors are opaque to clients: base64 of "seq:N".
func encodeCursor(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("seq:" + strconv.FormatInt(seq, 10)))
}

func decodeCursor(s string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		if v, ok := strings.CutPrefix(string(b), "seq:"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
				return n, nil
			}
		}
	}
	return 0, errInvalid("page %q is not a cursor this API returned; pass next_page from the previous response", s)
}
