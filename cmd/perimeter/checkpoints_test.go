package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The checkpoints API answers nothing without the admin token.
func TestTheCheckpointsAPINeedsTheAdminToken(t *testing.T) {
	h := checkpointsAPI(nil, nil, "pat_secret")
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer pat_wrong", http.StatusUnauthorized},
		{"Bearer pat_secret", http.StatusNotFound}, // past the check: this worker keeps no store
	} {
		req := httptest.NewRequest("POST", "/v1/checkpoints/restore", strings.NewReader(`{}`))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("Authorization %q: %d %s, want %d", tc.auth, rec.Code, rec.Body, tc.want)
		}
	}
}
