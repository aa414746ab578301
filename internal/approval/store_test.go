package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/testenv"
)

// eachStore runs test against a SQLite and a PostgreSQL store.
func eachStore(t *testing.T, test func(t *testing.T, s *Store)) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			location := t.TempDir()
			if backend == "postgres" {
				location = testenv.Postgres(t)
			}
			s, err := OpenAt(context.Background(), location)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			test(t, s)
		})
	}
}

func pending(id string, deadline time.Time) Record {
	input := json.RawMessage(`{"file_path":"a.txt","content":"x"}`)
	return Record{
		ToolUseID: id, SessionID: "sesn_1", WorkID: "work_1", WorkerID: "w1", Tool: "write",
		Input: input, InputSHA256: sha256Hex(input), Policy: "defer", Rule: "writes", AllowEdit: true,
		Channels: []string{"ops", "slack"}, State: Pending, RequestedAt: time.Now(), Deadline: deadline,
	}
}

func TestCreateKeepsTheFirstRecordOfACall(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		first := pending("sevt_1", time.Now().Add(time.Hour))
		got, created, err := s.Create(ctx, first)
		if err != nil || !created || got.State != Pending || len(got.Channels) != 2 || string(got.Input) != string(first.Input) {
			t.Fatalf("first create: %+v, %v, %v", got, created, err)
		}
		second := first
		second.State, second.DecidedBy = Allowed, "rule:other"
		got, created, err = s.Create(ctx, second)
		if err != nil || created || got.State != Pending {
			t.Fatalf("second create replaced the record: %+v, created=%v, %v", got, created, err)
		}
	})
}

func TestADecisionIsBoundToItsInputAndUsedOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		r := pending("sevt_1", time.Now().Add(time.Hour))
		if _, _, err := s.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if err := s.Use(ctx, r.ToolUseID, r.InputSHA256, time.Now()); !errors.Is(err, ErrNotPending) {
			t.Fatalf("using an undecided request: %v, want ErrNotPending", err)
		}
		if _, err := s.Decide(ctx, r.ToolUseID, true, "human:alice", "ok", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.Use(ctx, r.ToolUseID, sha256Hex([]byte(`{"other":1}`)), time.Now()); !errors.Is(err, ErrInputMismatch) {
			t.Fatalf("using it for another input: %v, want ErrInputMismatch", err)
		}
		if err := s.Use(ctx, r.ToolUseID, r.InputSHA256, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.Use(ctx, r.ToolUseID, r.InputSHA256, time.Now()); !errors.Is(err, ErrUsed) {
			t.Fatalf("second use: %v, want ErrUsed", err)
		}
		if _, err := s.Decide(ctx, r.ToolUseID, false, "human:bob", "", nil, time.Now()); !errors.Is(err, ErrNotPending) {
			t.Fatalf("deciding again: %v, want ErrNotPending", err)
		}
	})
}

func TestEditsNeedARuleThatAllowsThemAndAJSONObject(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		noEdit := pending("sevt_noedit", time.Now().Add(time.Hour))
		noEdit.AllowEdit = false
		for _, r := range []Record{pending("sevt_edit", time.Now().Add(time.Hour)), noEdit} {
			if _, _, err := s.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		edit := json.RawMessage(`{"file_path":"b.txt","content":"y"}`)
		if _, err := s.Decide(ctx, "sevt_noedit", true, "human:alice", "", edit, time.Now()); !errors.Is(err, ErrEditNotAllowed) {
			t.Errorf("edit where the rule forbids it: %v", err)
		}
		if _, err := s.Decide(ctx, "sevt_edit", true, "human:alice", "", json.RawMessage(`[1]`), time.Now()); err == nil {
			t.Error("a non-object edit was accepted")
		}
		if _, err := s.Decide(ctx, "sevt_edit", false, "human:alice", "", edit, time.Now()); err == nil {
			t.Error("an edit with a denial was accepted")
		}
		r, err := s.Decide(ctx, "sevt_edit", true, "human:alice", "fixed the path", edit, time.Now())
		if err != nil || string(r.EditedInput) != string(edit) || r.EditedSHA256 != sha256Hex(edit) || r.DecidedBy != "human:alice" {
			t.Fatalf("edited approval: %+v, %v", r, err)
		}
		// The approval is still bound to the model's input.
		if err := s.Use(ctx, "sevt_edit", pending("x", time.Time{}).InputSHA256, time.Now()); err != nil {
			t.Errorf("use with the original hash: %v", err)
		}
	})
}

func TestExpiryAndADecisionRacingItHaveOneWinner(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now()
		if _, _, err := s.Create(ctx, pending("sevt_future", now.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Expire(ctx, "sevt_future", now); !errors.Is(err, ErrDeadlineNotPast) {
			t.Errorf("expiring before the deadline: %v", err)
		}
		for i := range 20 {
			id := "sevt_race_" + string(rune('a'+i))
			if _, _, err := s.Create(ctx, pending(id, now.Add(-time.Second))); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var decideErr, expireErr error
			wg.Add(2)
			go func() { defer wg.Done(); _, decideErr = s.Decide(ctx, id, true, "human:alice", "", nil, now) }()
			go func() { defer wg.Done(); _, expireErr = s.Expire(ctx, id, now) }()
			wg.Wait()
			r, _ := s.Get(ctx, id)
			switch {
			case decideErr == nil && r.State != Allowed, decideErr != nil && (r.State != Denied || r.DecidedBy != "timeout"):
				t.Fatalf("%s ended %s by %s (decide: %v, expire: %v)", id, r.State, r.DecidedBy, decideErr, expireErr)
			}
		}
	})
}

func TestNotifiedIsRecordedOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if _, _, err := s.Create(ctx, pending("sevt_1", time.Now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		if first, err := s.Notified(ctx, "sevt_1", time.Now()); err != nil || !first {
			t.Fatalf("first: %v %v", first, err)
		}
		if again, err := s.Notified(ctx, "sevt_1", time.Now()); err != nil || again {
			t.Fatalf("second: %v %v", again, err)
		}
		r, _ := s.Get(ctx, "sevt_1")
		if r.NotifiedAt.IsZero() {
			t.Error("notified_at not recorded")
		}
		if _, err := s.Get(ctx, "sevt_nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown id: %v", err)
		}
	})
}

// Nobody answering before the deadline means deny, also when nothing was
// waiting to expire the request: a decision that comes later is refused
// and the request ends denied by the timeout.
func TestADecisionAfterTheDeadlineIsRefused(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now()
		for _, allow := range []bool{true, false} {
			id := fmt.Sprintf("sevt_late_%v", allow)
			if _, _, err := s.Create(ctx, pending(id, now.Add(-time.Second))); err != nil {
				t.Fatal(err)
			}
			r, err := s.Decide(ctx, id, allow, "human:alice", "", nil, now)
			if !errors.Is(err, ErrNotPending) || !strings.Contains(err.Error(), "deadline") {
				t.Errorf("deciding (allow=%v) after the deadline: %v, want ErrNotPending naming the deadline", allow, err)
			}
			if r.State != Denied || r.DecidedBy != "timeout" {
				t.Errorf("after a late decision (allow=%v) the request is %s by %q, want denied by timeout", allow, r.State, r.DecidedBy)
			}
			if err := s.Use(ctx, id, r.InputSHA256, now); err == nil {
				t.Errorf("a late approval (allow=%v) could be used", allow)
			}
		}
	})
}

func TestPagesFollowOneAnotherInRequestOrder(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		at := time.Now()
		// sevt_c and sevt_a are made in the same instant; sevt_d is decided.
		for id, ms := range map[string]int{"sevt_c": 0, "sevt_a": 0, "sevt_b": 1, "sevt_d": 2, "sevt_e": 3} {
			r := pending(id, at.Add(time.Hour))
			r.RequestedAt = at.Add(time.Duration(ms) * time.Millisecond)
			if _, _, err := s.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Decide(ctx, "sevt_d", false, "human:alice", "", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		ids := func(recs []Record) string {
			var out []string
			for _, r := range recs {
				out = append(out, r.ToolUseID)
			}
			return strings.Join(out, ",")
		}
		for _, tc := range []struct {
			state State
			want  string
		}{{"", "sevt_a,sevt_c,sevt_b,sevt_d,sevt_e"}, {Pending, "sevt_a,sevt_c,sevt_b,sevt_e"}, {Denied, "sevt_d"}} {
			all, err := s.List(ctx, tc.state)
			if err != nil || ids(all) != tc.want {
				t.Fatalf("list %q: %s, %v; want %s", tc.state, ids(all), err, tc.want)
			}
			var paged []Record
			after := ""
			for {
				page, more, err := s.Page(ctx, tc.state, after, 2)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > 2 {
					t.Fatalf("a page of 2 held %d", len(page))
				}
				paged = append(paged, page...)
				if !more {
					break
				}
				if len(paged) > 10 {
					t.Fatal("pages do not end")
				}
				after = page[len(page)-1].ToolUseID
			}
			if ids(paged) != tc.want {
				t.Errorf("pages of %q: %s, want %s", tc.state, ids(paged), tc.want)
			}
		}
		if _, _, err := s.Page(ctx, "", "sevt_nope", 2); !errors.Is(err, ErrNotFound) {
			t.Errorf("a page after an unknown id: %v, want ErrNotFound", err)
		}
	})
}
