package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/audit"
)

func entries(t *testing.T, dir string) []audit.Entry {
	t.Helper()
	var out []audit.Entry
	if err := audit.Read(dir, func(e audit.Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func verifyOK(t *testing.T, dir string) audit.Report {
	t.Helper()
	r, err := audit.Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(r.Warnings) > 0 {
		t.Fatalf("Verify warns: %q", r.Warnings)
	}
	return r
}

func TestAppendWritesTheDocumentedRecord(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{})
	mustAppend(t, w, audit.Record{SessionID: "sesn_1", WorkID: "work_1", ToolUseID: "sevt_1",
		Data: audit.ToolDecision{Tool: "bash", InputSHA256: sha("x"), Decision: "ask", DecidedBy: "rule:ask-bash", Rule: "ask-bash"}})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ls := lines(t, file(dir, 1))
	if len(ls) != 1 {
		t.Fatalf("%d lines, want 1", len(ls))
	}
	h := field(t, ls[0], "hash").(string)
	want := `{"seq":1,"time":"2026-03-01T12:00:01Z","kind":"tool_decision","session_id":"sesn_1","work_id":"work_1","tool_use_id":"sevt_1",` +
		`"data":{"tool":"bash","input_sha256":"` + sha("x") + `","decision":"ask","decided_by":"rule:ask-bash","rule":"ask-bash"},` +
		`"prev":"` + audit.Genesis + `","hash":"` + h + `"}`
	if diff := cmp.Diff(want, string(ls[0])); diff != "" {
		t.Errorf("line (-want +got):\n%s", diff)
	}
	for path, mode := range map[string]os.FileMode{dir: 0o700, file(dir, 1): 0o600, filepath.Join(dir, "head"): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
}

func TestAppendRefusesBadRecords(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{MaxRecordBytes: 500})
	defer w.Close()
	for name, r := range map[string]audit.Record{
		"NoKind":            {},
		"BadKind":           {Kind: "Tool Decision"},
		"KindDisagrees":     {Kind: audit.KindToolResult, Data: audit.ToolDecision{}},
		"DataNotAnObject":   {Kind: "x", Data: []string{"a"}},
		"ReservedKind":      {Kind: audit.KindLogRepaired},
		"OverMaxRecordSize": {Kind: "x", Data: map[string]string{"a": strings.Repeat("a", 500)}},
	} {
		if err := w.Append(context.Background(), r); err == nil {
			t.Errorf("%s: Append accepted %+v", name, r)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Append(ctx, audit.Record{Kind: "x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a cancelled context = %v, want context.Canceled", err)
	}
	if ls := lines(t, file(dir, 1)); len(ls) != 0 {
		t.Errorf("refused records were written: %s", ls)
	}
}

func TestReopenContinuesTheChain(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 3, audit.Options{})
	writeLog(t, dir, 2, audit.Options{})
	r := verifyOK(t, dir)
	if r.Records != 5 || r.Files != 1 {
		t.Errorf("report = %+v, want 5 records in 1 file", r)
	}
}

func TestOpenLocksTheDirectory(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{})
	if _, err := audit.Open(dir, audit.Options{}); !errors.Is(err, audit.ErrLocked) {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
	w.Close()
	open(t, dir, audit.Options{}).Close()
}

func TestAppendAfterCloseFails(t *testing.T) {
	w := open(t, t.TempDir(), audit.Options{})
	w.Close()
	if err := w.Append(context.Background(), audit.Record{Kind: "x"}); !errors.Is(err, audit.ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestOpenRepairsATornLastLine simulates a crash in the middle of a write:
// the file ends in part of a line. Open cuts it off and records the repair.
func TestOpenRepairsATornLastLine(t *testing.T) {
	tests := []struct {
		name, torn, reason string
		rotated            bool
	}{
		{"NoNewline", `{"seq":6,"time":"2026-03-01T12:00:06Z","kind":"tool_res`, "incomplete last line", false},
		{"ZeroFilled", "\x00\x00\x00\x00\x00\x00\x00\x00", "incomplete last line", false},
		{"NotJSON", "{\"seq\":6,\"time\x00\x00\n", "last line is not JSON", false},
		{"FirstLineOfARotatedFile", `{"seq":6,"ti`, "incomplete last line", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, 5, audit.Options{})
			last := file(dir, 1)
			if tt.rotated {
				last = file(dir, 2)
				if err := os.WriteFile(last, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(last)
			appendBytes(t, last, tt.torn)

			w := open(t, dir, audit.Options{})
			mustAppend(t, w, audit.Record{Kind: "after_repair"})
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			r := verifyOK(t, dir)
			if r.Records != 7 {
				t.Errorf("%d records, want 5 + repair + 1", r.Records)
			}
			es := entries(t, dir)
			rep := es[5]
			var d audit.LogRepaired
			if err := rep.Decode(&d); err != nil {
				t.Fatal(err)
			}
			want := audit.LogRepaired{File: filepath.Base(last), Offset: int64(len(before)), DroppedBytes: int64(len(tt.torn)), DroppedSHA256: sha(tt.torn), Reason: d.Reason}
			if rep.Kind != audit.KindLogRepaired || rep.Seq != 6 || d != want || !strings.HasPrefix(d.Reason, tt.reason) {
				t.Errorf("repair record %+v %+v, want seq 6 %+v with reason %q…", rep, d, want, tt.reason)
			}
			if es[6].Kind != "after_repair" || es[6].Seq != 7 {
				t.Errorf("record after the repair = %+v", es[6])
			}
		})
	}
}

func TestOpenContinuesAfterAnEmptyLastFile(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 4, audit.Options{})
	if err := os.WriteFile(file(dir, 2), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeLog(t, dir, 2, audit.Options{})
	r := verifyOK(t, dir)
	if r.Records != 6 || r.Files != 2 || len(lines(t, file(dir, 2))) != 2 {
		t.Errorf("report %+v: want 6 records, the last 2 in file 2", r)
	}
}

func TestOpenRefusesATamperedLog(t *testing.T) {
	tests := map[string]func(t *testing.T, dir string){
		"LastRecordEdited": func(t *testing.T, dir string) {
			ls := lines(t, file(dir, 1))
			ls[len(ls)-1] = bytes.Replace(ls[len(ls)-1], []byte("allow"), []byte("deny!"), 1)
			writeLines(t, file(dir, 1), ls)
		},
		"TailCut": func(t *testing.T, dir string) {
			writeLines(t, file(dir, 1), lines(t, file(dir, 1))[:3])
		},
		"TwoGarbageLines": func(t *testing.T, dir string) {
			appendBytes(t, file(dir, 1), "garbage\ngarbage\n")
		},
	}
	for name, tamper := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, 5, audit.Options{})
			tamper(t, dir)
			before, _ := os.ReadFile(file(dir, 1))
			if w, err := audit.Open(dir, audit.Options{}); !errors.Is(err, audit.ErrTampered) {
				if err == nil {
					w.Close()
				}
				t.Fatalf("Open = %v, want ErrTampered", err)
			}
			if after, _ := os.ReadFile(file(dir, 1)); !bytes.Equal(before, after) {
				t.Error("Open changed a tampered log")
			}
		})
	}
}

func TestRotationContinuesTheChain(t *testing.T) {
	dir := t.TempDir()
	const max = 2000
	w := open(t, dir, audit.Options{MaxFileBytes: max})
	for i := range 40 {
		mustAppend(t, w, audit.Record{SessionID: "sesn_1", ToolUseID: fmt.Sprint("sevt_", i), Data: audit.ToolResult{Status: "ok", DurationMS: int64(i)}})
	}
	w.Close()
	writeLog(t, dir, 5, audit.Options{MaxFileBytes: max}) // reopening keeps rotating
	r := verifyOK(t, dir)
	if r.Records != 45 || r.Files < 5 || r.Files != files(t, dir) {
		t.Fatalf("report = %+v, want 45 records in several files", r)
	}
	for n := 1; n <= r.Files; n++ {
		st, err := os.Stat(file(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > max || st.Size() == 0 {
			t.Errorf("%s has %d bytes, want 1..%d", file(dir, n), st.Size(), max)
		}
		if n > 1 {
			prev := lines(t, file(dir, n-1))
			first := lines(t, file(dir, n))[0]
			if got, want := field(t, first, "prev"), field(t, prev[len(prev)-1], "hash"); got != want {
				t.Errorf("file %d starts with prev %v, want the last hash of file %d, %v", n, got, n-1, want)
			}
		}
	}
}

func TestConcurrentAppendsMakeOneChain(t *testing.T) {
	// Fewer records when each is fsynced: a few milliseconds apiece.
	for _, tc := range []struct {
		opts             audit.Options
		goroutines, each int
	}{
		{audit.Options{MaxFileBytes: 8 << 10}, 16, 8},
		{audit.Options{MaxFileBytes: 16 << 10, SyncInterval: time.Millisecond}, 32, 25},
	} {
		t.Run(fmt.Sprintf("SyncInterval=%v", tc.opts.SyncInterval), func(t *testing.T) {
			dir := t.TempDir()
			w := open(t, dir, tc.opts)
			goroutines, each := tc.goroutines, tc.each
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range each {
						if err := w.Append(context.Background(), audit.Record{SessionID: fmt.Sprint("sesn_", g), ToolUseID: fmt.Sprint("sevt_", i),
							Data: audit.EgressRequest{Method: "GET", Host: "example.com", BytesIn: int64(i)}}); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			r := verifyOK(t, dir)
			if r.Records != uint64(goroutines*each) || r.Files < 2 {
				t.Errorf("report = %+v, want %d records over several files", r, goroutines*each)
			}
			seen := map[string]int{}
			for _, e := range entries(t, dir) {
				seen[e.SessionID+"/"+e.ToolUseID]++
			}
			if len(seen) != goroutines*each {
				t.Errorf("%d distinct records, want %d", len(seen), goroutines*each)
			}
		})
	}
}

// TestEachRecordIsSyncedByDefault observes the fsync through the head
// anchor, which moves after every fsync.
func TestEachRecordIsSyncedByDefault(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{})
	defer w.Close()
	for i := 1; i <= 3; i++ {
		mustAppend(t, w, audit.Record{Kind: "x"})
		b, err := os.ReadFile(filepath.Join(dir, "head"))
		if err != nil {
			t.Fatal(err)
		}
		_, hash := w.Last()
		want := fmt.Sprintf(`{"seq":%d,"hash":"%s","file":"audit-000001.jsonl"}`+"\n", i, hash)
		if string(b) != want {
			t.Errorf("head after record %d = %s, want %s", i, b, want)
		}
	}
}

func TestBatchedSyncMovesTheHead(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{SyncInterval: 5 * time.Millisecond})
	defer w.Close()
	mustAppend(t, w, audit.Record{Kind: "x"})
	mustAppend(t, w, audit.Record{Kind: "x"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, "head"))
		if bytes.Contains(b, []byte(`"seq":2,`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("head is %s after 5s, want seq 2", b)
		}
		time.Sleep(time.Millisecond)
	}
	seq, hash := w.Last()
	r := verifyOK(t, dir)
	if seq != 2 || r.Head.Hash != hash || r.LastHash != hash {
		t.Errorf("Last = %d %s; report %+v", seq, hash, r)
	}
}

func TestAppendRefusesForbiddenValues(t *testing.T) {
	const secret = `sk-ant-<secret>&"quoted"-é`
	tests := map[string]audit.Record{
		"InData":               {Kind: "x", Data: map[string]string{"note": "token " + secret + " here"}},
		"InKeptPayload":        {Kind: "x", Payload: map[string]any{"command": "curl -H 'x-api-key: " + secret + "'"}},
		"InID":                 {Kind: "x", SessionID: secret},
		"HTMLEscapedInRawJSON": {Kind: "x", Data: htmlEscaped(t, map[string]string{"v": secret})},
	}
	for name, r := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			w := open(t, dir, audit.Options{KeepPayload: []string{"command"}})
			w.Forbid([]byte(secret))
			mustAppend(t, w, audit.Record{Kind: "before"})
			err := w.Append(context.Background(), r)
			if !errors.Is(err, audit.ErrSecret) {
				t.Fatalf("Append = %v, want ErrSecret", err)
			}
			if strings.Contains(err.Error(), "sk-ant") {
				t.Errorf("the error repeats the secret: %v", err)
			}
			mustAppend(t, w, audit.Record{Kind: "after"})
			w.Close()
			b, _ := os.ReadFile(file(dir, 1))
			if bytes.Contains(b, []byte("sk-ant")) {
				t.Errorf("the secret reached the file:\n%s", b)
			}
			if r := verifyOK(t, dir); r.Records != 2 {
				t.Errorf("%d records, want the 2 around the refused one", r.Records)
			}
		})
	}
	t.Run("InDroppedPayload", func(t *testing.T) {
		dir := t.TempDir()
		w := open(t, dir, audit.Options{})
		w.Forbid([]byte(secret))
		// Not kept, so not written, so not refused.
		mustAppend(t, w, audit.Record{Kind: "x", Payload: map[string]any{"command": secret}})
		w.Close()
		if b, _ := os.ReadFile(file(dir, 1)); bytes.Contains(b, []byte("sk-ant")) {
			t.Errorf("the secret reached the file:\n%s", b)
		}
	})
}

// htmlEscaped encodes v as json.Marshal does, with <, > and & escaped.
func htmlEscaped(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPayloadIsWrittenOnlyWhenKept(t *testing.T) {
	payload := map[string]any{"command": "cat /etc/shadow", "path": "/workspace/a.txt"}
	tests := []struct {
		keep []string
		want map[string]any // the payload member, nil for none
	}{
		{nil, nil},
		{[]string{"other"}, nil},
		{[]string{"path"}, map[string]any{"path": "/workspace/a.txt"}},
		{[]string{"path", "command"}, payload},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.keep), func(t *testing.T) {
			dir := t.TempDir()
			w := open(t, dir, audit.Options{KeepPayload: tt.keep})
			mustAppend(t, w, audit.Record{Kind: "x", Data: map[string]int{"n": 1}, Payload: payload})
			w.Close()
			l := lines(t, file(dir, 1))[0]
			got, _ := field(t, l, "payload").(map[string]any)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("payload (-want +got):\n%s\nline: %s", diff, l)
			}
			if tt.want == nil && bytes.Contains(l, []byte("payload")) {
				t.Errorf("line has a payload member: %s", l)
			}
		})
	}
}
