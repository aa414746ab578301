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

// Decode takes a known body and refuses unknown fields, bad JSON, anything
// after the value and bodies over the limit, saying which.
func TestDecode(t *testing.T) {
	for body, want := range map[string]string{
		`{"by": "ann"}`:                  "",
		"{\"by\": \"ann\"}\n\t ":         "",
		`{"by": "ann", "extra": 1}`:      `unknown field "extra"`,
		`{"by": `:                        "unexpected EOF",
		`{"by": "ann"}{"by": "mallory"}`: "more after its JSON value",
		`{"by": "ann"} 5`:                "more after its JSON value",
		`{"by": "ann"}}`:                 "more after its JSON value",
		`{"by": "` + strings.Repeat("x", maxBody) + `"}`:     "over 1048576 bytes",
		`{"by": "ann"}` + strings.Repeat(" ", maxBody) + `x`: "over 1048576 bytes",
	} {
		var v struct{ By string }
		err := Decode(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v)
		switch {
		case want == "" && err != nil:
			t.Errorf("body %.40q: %v", body, err)
		case want == "" && v.By != "ann":
			t.Errorf("body %.40q: decoded %+v", body, v)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("body %.40q: error %v, want one containing %q", body, err, want)
		}
	}
}
