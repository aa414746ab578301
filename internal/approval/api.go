package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/perimeterhq/perimeter/internal/adminapi"
)

// Decision is a human's answer to a request, as the API takes it.
type Decision struct {
	// By names the approver; required, recorded as "human:<by>".
	By     string `json:"by"`
	Reason string `json:"reason,omitempty"`
	// Input replaces the call's input (approvals only, where the rule
	// allows edits).
	Input json.RawMessage `json:"input,omitempty"`
}

// Decider records decisions; the [Gate] does, waking the call it holds.
type Decider interface {
	Decide(ctx context.Context, id string, allow bool, by, reason string, edited []byte) (Record, error)
	Store() *Store
}

// Handler serves the approvals API under /v1/approvals, every request
// authenticated with "Authorization: Bearer <token>":
//
//	GET  /v1/approvals[?state=pending|allowed|denied][&limit=N][&after_id=ID]
//	                                  {"data": [Record…], "has_more": bool}
//	GET  /v1/approvals/{id}                            Record
//	POST /v1/approvals/{id}/approve   Decision         Record
//	POST /v1/approvals/{id}/deny      Decision         Record
//
// A list is in the order the requests were made, a page of at most limit
// (1 to 1000, default 100) at a time: the next page starts after_id the
// last one. Errors are {"error": {"type": …, "message": …}}: 401 without the token,
// 404 for an unknown id, 409 for a request already decided, 400 for a bad
// body or an edit the rule does not allow.
func Handler(d Decider, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/approvals", func(w http.ResponseWriter, r *http.Request) {
		state := State(r.URL.Query().Get("state"))
		switch state {
		case "", Pending, Allowed, Denied:
		default:
			adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("state must be pending, allowed or denied, not %q", state))
			return
		}
		limit := defaultPage
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxPage {
				adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("limit must be a whole number from 1 to %d, not %q", maxPage, v))
				return
			}
			limit = n
		}
		after := r.URL.Query().Get("after_id")
		recs, more, err := d.Store().Page(r.Context(), state, after, limit)
		switch {
		case errors.Is(err, ErrNotFound):
			adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("after_id %q names no request; pass the last id of the previous page", after))
			return
		case err != nil:
			adminapi.Error(w, http.StatusInternalServerError, "api_error", err.Error())
			return
		}
		adminapi.JSON(w, map[string]any{"data": nonNil(recs), "has_more": more})
	})
	mux.HandleFunc("GET /v1/approvals/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, err := d.Store().Get(r.Context(), r.PathValue("id"))
		if err != nil {
			decisionError(w, err)
			return
		}
		adminapi.JSON(w, rec)
	})
	decide := func(allow bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var body Decision
			if err := adminapi.Decode(r, &body); err != nil {
				adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
				return
			}
			if strings.TrimSpace(body.By) == "" {
				adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", `"by" (who decides) is required`)
				return
			}
			rec, err := d.Decide(r.Context(), r.PathValue("id"), allow, "human:"+body.By, body.Reason, body.Input)
			if err != nil {
				decisionError(w, err)
				return
			}
			adminapi.JSON(w, rec)
		}
	}
	mux.HandleFunc("POST /v1/approvals/{id}/approve", decide(true))
	mux.HandleFunc("POST /v1/approvals/{id}/deny", decide(false))
	return adminapi.RequireToken(token, mux)
}

func decisionError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		adminapi.Error(w, http.StatusNotFound, "not_found_error", err.Error())
	case errors.Is(err, ErrNotPending):
		adminapi.Error(w, http.StatusConflict, "conflict_error", err.Error())
	case strings.Contains(err.Error(), "decide ") || strings.Contains(err.Error(), "read approvals"):
		adminapi.Error(w, http.StatusInternalServerError, "api_error", err.Error())
	default:
		adminapi.Error(w, http.StatusBadRequest, "invalid_request_error", err.Error())
	}
}

func nonNil(r []Record) []Record {
	if r == nil {
		return []Record{}
	}
	return r
}

// The list's page sizes.
const (
	defaultPage = 100
	maxPage     = 1000
)

// Client talks to a worker's approvals API.
type Client struct {
	BaseURL string // the worker's admin address, e.g. http://127.0.0.1:9464
	Token   string
	HTTP    *http.Client
}

// List returns the requests in a state ("" for all), reading every page.
func (c *Client) List(ctx context.Context, state State) ([]Record, error) {
	return c.list(ctx, state, maxPage)
}

func (c *Client) list(ctx context.Context, state State, limit int) ([]Record, error) {
	var all []Record
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if state != "" {
		q.Set("state", string(state))
	}
	for {
		var page struct {
			Data    []Record `json:"data"`
			HasMore bool     `json:"has_more"`
		}
		if err := c.do(ctx, http.MethodGet, "/v1/approvals?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Data...)
		if !page.HasMore || len(page.Data) == 0 {
			return all, nil
		}
		q.Set("after_id", page.Data[len(page.Data)-1].ToolUseID)
	}
}

// Get returns one request.
func (c *Client) Get(ctx context.Context, id string) (Record, error) {
	var r Record
	return r, c.do(ctx, http.MethodGet, "/v1/approvals/"+url.PathEscape(id), nil, &r)
}

// Decide approves or denies a request.
func (c *Client) Decide(ctx context.Context, id string, allow bool, d Decision) (Record, error) {
	verb := "deny"
	if allow {
		verb = "approve"
	}
	var r Record
	return r, c.do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(id)+"/"+verb, d, &r)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	api := adminapi.Client{Name: "approvals API", BaseURL: c.BaseURL, Token: c.Token, HTTP: c.HTTP}
	return api.Do(ctx, method, path, body, out)
}
