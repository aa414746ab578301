package approval

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
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
//	GET  /v1/approvals[?state=pending|allowed|denied]  {"data": [Record…]}
//	GET  /v1/approvals/{id}                            Record
//	POST /v1/approvals/{id}/approve   Decision         Record
//	POST /v1/approvals/{id}/deny      Decision         Record
//
// Errors are {"error": {"type": …, "message": …}}: 401 without the token,
// 404 for an unknown id, 409 for a request already decided, 400 for a bad
// body or an edit the rule does not allow.
func Handler(d Decider, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/approvals", func(w http.ResponseWriter, r *http.Request) {
		state := State(r.URL.Query().Get("state"))
		switch state {
		case "", Pending, Allowed, Denied:
		default:
			apiError(w, http.StatusBadRequest, "invalid_request_error", fmt.Sprintf("state must be pending, allowed or denied, not %q", state))
			return
		}
		recs, err := d.Store().List(r.Context(), state)
		if err != nil {
			apiError(w, http.StatusInternalServerError, "api_error", err.Error())
			return
		}
		writeJSON(w, map[string]any{"data": nonNil(recs)})
	})
	mux.HandleFunc("GET /v1/approvals/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, err := d.Store().Get(r.Context(), r.PathValue("id"))
		if err != nil {
			decisionError(w, err)
			return
		}
		writeJSON(w, rec)
	})
	decide := func(allow bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var body Decision
			dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				apiError(w, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error())
				return
			}
			if strings.TrimSpace(body.By) == "" {
				apiError(w, http.StatusBadRequest, "invalid_request_error", `"by" (who decides) is required`)
				return
			}
			rec, err := d.Decide(r.Context(), r.PathValue("id"), allow, "human:"+body.By, body.Reason, body.Input)
			if err != nil {
				decisionError(w, err)
				return
			}
			writeJSON(w, rec)
		}
	}
	mux.HandleFunc("POST /v1/approvals/{id}/approve", decide(true))
	mux.HandleFunc("POST /v1/approvals/{id}/deny", decide(false))
	return RequireToken(token, mux)
}

// RequireToken serves h only to requests carrying "Authorization: Bearer
// <token>" (compared in constant time); an empty token admits nobody. It
// guards every API on a worker's admin listener.
func RequireToken(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			apiError(w, http.StatusUnauthorized, "authentication_error", "missing or wrong admin token (Authorization: Bearer …)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func decisionError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		apiError(w, http.StatusNotFound, "not_found_error", err.Error())
	case errors.Is(err, ErrNotPending):
		apiError(w, http.StatusConflict, "conflict_error", err.Error())
	case strings.Contains(err.Error(), "decide ") || strings.Contains(err.Error(), "read approvals"):
		apiError(w, http.StatusInternalServerError, "api_error", err.Error())
	default:
		apiError(w, http.StatusBadRequest, "invalid_request_error", err.Error())
	}
}

func apiError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"type": typ, "message": msg}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func nonNil(r []Record) []Record {
	if r == nil {
		return []Record{}
	}
	return r
}

// Client talks to a worker's approvals API.
type Client struct {
	BaseURL string // the worker's admin address, e.g. http://127.0.0.1:9464
	Token   string
	HTTP    *http.Client
}

// List returns the requests in a state ("" for all).
func (c *Client) List(ctx context.Context, state State) ([]Record, error) {
	var out struct {
		Data []Record `json:"data"`
	}
	q := ""
	if state != "" {
		q = "?state=" + url.QueryEscape(string(state))
	}
	return out.Data, c.do(ctx, http.MethodGet, "/v1/approvals"+q, nil, &out)
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
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("approvals API at %s: %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("approvals API: %s (HTTP %d)", e.Error.Message, resp.StatusCode)
		}
		return fmt.Errorf("approvals API: HTTP %d", resp.StatusCode)
	}
	return json.Unmarshal(data, out)
}
