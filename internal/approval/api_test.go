package approval

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestTheAPIAuthenticatesAndDecides(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	srv := httptest.NewServer(Handler(g, "tok-right"))
	defer srv.Close()
	ctx := context.Background()
	done := asking(t, g)

	for _, tok := range []string{"", "tok-wrong"} {
		c := &Client{BaseURL: srv.URL, Token: tok}
		if _, err := c.List(ctx, Pending); err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("token %q: %v, want 401", tok, err)
		}
	}
	c := &Client{BaseURL: srv.URL, Token: "tok-right"}
	recs, err := c.List(ctx, Pending)
	if err != nil || len(recs) != 1 || recs[0].ToolUseID != "sevt_w" || string(recs[0].Input) == "" {
		t.Fatalf("list: %+v, %v", recs, err)
	}
	if _, err := c.Get(ctx, "sevt_nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown id: %v", err)
	}
	if _, err := c.Decide(ctx, "sevt_w", true, Decision{}); err == nil || !strings.Contains(err.Error(), "by") {
		t.Errorf("decision without an approver: %v", err)
	}
	if _, err := c.Decide(ctx, "sevt_w", false, Decision{By: "alice", Input: json.RawMessage(`{"x":1}`)}); err == nil {
		t.Error("a denial with an edited input was accepted")
	}
	r, err := c.Decide(ctx, "sevt_w", true, Decision{By: "alice", Reason: "looks right"})
	if err != nil || r.State != Allowed || r.DecidedBy != "human:alice" || r.Reason != "looks right" {
		t.Fatalf("approve: %+v, %v", r, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("approved call: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the approval did not wake the call")
	}
	if _, err := c.Decide(ctx, "sevt_w", false, Decision{By: "bob"}); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("deciding twice: %v, want 409", err)
	}
	resp, err := http.Get(srv.URL + "/v1/approvals?state=bogus")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated bad request: %d, want 401 first", resp.StatusCode)
	}
}

func TestTheListComesInPages(t *testing.T) {
	g := newGate(t, t.TempDir(), "1h", newReceiver(t))
	srv := httptest.NewServer(Handler(g, "tok"))
	defer srv.Close()
	ctx := context.Background()
	at := time.Now()
	var want []string
	for i := range 5 {
		r := pending(fmt.Sprintf("sevt_%d", i), at.Add(time.Hour))
		r.RequestedAt = at.Add(time.Duration(i) * time.Millisecond)
		if _, _, err := g.Store().Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r.ToolUseID)
	}

	get := func(query string) (int, []Record, bool) {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/approvals"+query, nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page struct {
			Data    []Record `json:"data"`
			HasMore *bool    `json:"has_more"`
		}
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || page.HasMore == nil {
				t.Fatalf("%s: %v, has_more %v", query, err, page.HasMore)
			}
			return resp.StatusCode, page.Data, *page.HasMore
		}
		return resp.StatusCode, nil, false
	}
	code, recs, more := get("?limit=2")
	if code != 200 || len(recs) != 2 || !more || recs[0].ToolUseID != "sevt_0" {
		t.Fatalf("first page: %d, %d records, has_more %v", code, len(recs), more)
	}
	code, recs, more = get("?limit=2&after_id=sevt_3")
	if code != 200 || len(recs) != 1 || more || recs[0].ToolUseID != "sevt_4" {
		t.Fatalf("last page: %d, %+v, has_more %v", code, recs, more)
	}
	if code, recs, more := get(""); code != 200 || len(recs) != 5 || more {
		t.Errorf("default page: %d, %d records, has_more %v", code, len(recs), more)
	}
	for _, q := range []string{"?limit=0", "?limit=1001", "?limit=x", "?after_id=sevt_nope"} {
		if code, _, _ := get(q); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}

	c := &Client{BaseURL: srv.URL, Token: "tok"}
	all, err := c.list(ctx, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range all {
		got = append(got, r.ToolUseID)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the client read %v across pages, want %v", got, want)
	}
}
