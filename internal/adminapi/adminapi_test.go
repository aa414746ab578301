package adminapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The token guards the handler; an error answer reaches the client's
// caller as its message and status, a good one as the decoded body.
func TestClientAndServerAgree(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) { JSON(w, map[string]int{"n": 7}) })
	mux.HandleFunc("GET /gone", func(w http.ResponseWriter, r *http.Request) {
		Error(w, http.StatusNotFound, "not_found_error", "no such thing")
	})
	srv := httptest.NewServer(RequireToken("tok", mux))
	defer srv.Close()
	ctx := context.Background()

	good := Client{Name: "test API", BaseURL: srv.URL + "/", Token: "tok"}
	var out struct{ N int }
	if err := good.Do(ctx, http.MethodGet, "/ok", nil, &out); err != nil || out.N != 7 {
		t.Fatalf("Do: %+v, %v", out, err)
	}
	if err := good.Do(ctx, http.MethodGet, "/gone", nil, &out); err == nil || err.Error() != "test API: no such thing (HTTP 404)" {
		t.Fatalf("Do of an error answer: %v", err)
	}
	for _, token := range []string{"", "wrong"} {
		bad := Client{Name: "test API", BaseURL: srv.URL, Token: token}
		if err := bad.Do(ctx, http.MethodGet, "/ok", nil, &out); err == nil || !strings.Contains(err.Error(), "admin token") || !strings.Contains(err.Error(), "HTTP 401") {
			t.Fatalf("token %q: %v, want a 401 naming the admin token", token, err)
		}
	}
	// An empty token on the server admits nobody.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/ok", nil)
	req.Header.Set("Authorization", "Bearer ")
	RequireToken("", mux).ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("empty server token: %d, want 401", rec.Code)
	}
}

// Decode takes a known body and refuses unknown fields, bad JSON and
// bodies over the limit.
func TestDecode(t *testing.T) {
	var v struct{ By string }
	for body, ok := range map[string]bool{
		`{"by": "ann"}`:             true,
		`{"by": "ann", "extra": 1}`: false,
		`{"by": `:                   false,
		`{"by": "` + strings.Repeat("x", maxBody) + `"}`: false,
	} {
		err := Decode(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v)
		if (err == nil) != ok {
			t.Errorf("body %.40q: %v, want ok=%v", body, err, ok)
		}
	}
	if v.By != "ann" {
		t.Errorf("decoded %+v", v)
	}
}
