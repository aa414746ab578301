// Package adminapi is what every API on a worker's admin listener shares:
// the bearer token, JSON bodies, errors shaped like the Anthropic API's
// ({"error": {"type": …, "message": …}}), and a client for them.
package adminapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// RequireToken serves h only to requests carrying "Authorization: Bearer
// <token>" (compared in constant time); an empty token admits nobody.
func RequireToken(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			Error(w, http.StatusUnauthorized, "authentication_error", "missing or wrong admin token (Authorization: Bearer …)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// maxBody bounds a request body Decode reads.
const maxBody = 1 << 20

// Decode reads r's JSON body into v. It refuses fields v does not have,
// anything after the one JSON value (a second object could otherwise ride
// along unread), and bodies over 1 MiB, each with an error that says so.
func Decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		var syntax *json.SyntaxError
		switch _, terr := dec.Token(); {
		case terr == io.EOF:
		case terr == nil, errors.As(terr, &syntax):
			err = errors.New("the body has more after its JSON value; send exactly one object")
		default:
			err = terr
		}
	}
	if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
		return fmt.Errorf("the body is over %d bytes", maxBody)
	}
	return err
}

// JSON writes v as a 200 response.
func JSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Error writes an error response.
func Error(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"type": typ, "message": msg}})
}

// Client calls an admin API. Name says which, in its errors.
type Client struct {
	Name    string // "approvals API", "checkpoints API"
	BaseURL string // the worker's admin address, e.g. http://127.0.0.1:9464
	Token   string
	HTTP    *http.Client // nil: one with a 30 s timeout
}

// Do sends body (if not nil) as JSON and decodes the answer into out. An
// error answer becomes an error carrying its message and status.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
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
		return fmt.Errorf("%s at %s: %w", c.Name, c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s: %s (HTTP %d)", c.Name, e.Error.Message, resp.StatusCode)
		}
		return fmt.Errorf("%s: HTTP %d", c.Name, resp.StatusCode)
	}
	return json.Unmarshal(data, out)
}
