package audit_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/perimeterhq/perimeter/internal/audit"
)

func TestVerifyAcceptsAnUntouchedLog(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 10, audit.Options{})
	r, err := audit.Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if r.Records != 10 || r.Files != 1 || r.LastSeq != 10 || r.Problem != nil || len(r.Warnings) != 0 {
		t.Errorf("report = %+v, want 10 records in 1 file, no problem or warning", r)
	}
	if r.Head == nil || r.Head.Seq != 10 || r.Head.Hash != r.LastHash {
		t.Errorf("head = %+v, want seq 10 hash %s", r.Head, r.LastHash)
	}
}

// TestVerifyNamesTheFirstBadRecord tampers with a closed 10-record log in
// every way and checks Verify names the first record that shows it.
func TestVerifyNamesTheFirstBadRecord(t *testing.T) {
	f1 := "audit-000001.jsonl"
	tests := []struct {
		name   string
		tamper func(t *testing.T, ls [][]byte) [][]byte
		want   audit.Problem // Reason is a substring
	}{
		{"EditedField", func(t *testing.T, ls [][]byte) [][]byte {
			ls[3] = bytes.Replace(ls[3], []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1)
			return ls
		}, audit.Problem{File: f1, Line: 4, Seq: 4, Reason: "hash mismatch: record edited"}},
		{"EditedSeq", func(t *testing.T, ls [][]byte) [][]byte {
			ls[3] = setField(t, ls[3], "seq", 40)
			return ls
		}, audit.Problem{File: f1, Line: 4, Seq: 40, Reason: "hash mismatch: record edited"}},
		{"EditedAndHashRecomputed", func(t *testing.T, ls [][]byte) [][]byte {
			ls[3] = rehash(bytes.Replace(ls[3], []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1))
			return ls
		}, audit.Problem{File: f1, Line: 5, Seq: 5, Reason: "prev does not match the hash of seq 4"}},
		{"DeletedRecord", func(t *testing.T, ls [][]byte) [][]byte {
			return append(ls[:3], ls[4:]...)
		}, audit.Problem{File: f1, Line: 4, Seq: 5, Reason: "seq 5 follows 3"}},
		{"DeletedRecordRenumbered", func(t *testing.T, ls [][]byte) [][]byte {
			ls = append(ls[:3], ls[4:]...)
			for i := 3; i < len(ls); i++ {
				ls[i] = rehash(setField(t, ls[i], "seq", i+1))
			}
			return ls
		}, audit.Problem{File: f1, Line: 4, Seq: 4, Reason: "prev does not match the hash of seq 3"}},
		{"DeletedFirstRecord", func(t *testing.T, ls [][]byte) [][]byte {
			return ls[1:]
		}, audit.Problem{File: f1, Line: 1, Seq: 2, Reason: "seq 2 follows 0"}},
		{"InsertedForgedRecord", func(t *testing.T, ls [][]byte) [][]byte {
			// A record that is valid on its own: seq 5, prev = hash of 4.
			forged := rehash(bytes.Replace(ls[4], []byte(`"sevt_05"`), []byte(`"sevt_99"`), 1))
			return append(ls[:4], append([][]byte{forged}, ls[4:]...)...)
		}, audit.Problem{File: f1, Line: 6, Seq: 5, Reason: "seq 5 follows 5"}},
		{"InsertedCopy", func(t *testing.T, ls [][]byte) [][]byte {
			return append(ls[:4], append([][]byte{bytes.Clone(ls[1])}, ls[4:]...)...)
		}, audit.Problem{File: f1, Line: 5, Seq: 2, Reason: "seq 2 follows 4"}},
		{"ReorderedRecords", func(t *testing.T, ls [][]byte) [][]byte {
			ls[3], ls[4] = ls[4], ls[3]
			return ls
		}, audit.Problem{File: f1, Line: 4, Seq: 5, Reason: "seq 5 follows 3"}},
		{"TruncatedTail", func(t *testing.T, ls [][]byte) [][]byte {
			return ls[:7]
		}, audit.Problem{File: f1, Line: 8, Seq: 8, Reason: "the log ends at seq 7 but the head anchor says seq 10"}},
		{"TailRewrittenUpToTheAnchor", func(t *testing.T, ls [][]byte) [][]byte {
			// Edit record 8 and recompute the chain after it: consistent,
			// but record 10 no longer has the hash the anchor holds.
			ls[7] = bytes.Replace(ls[7], []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1)
			for i := 7; i < len(ls); i++ {
				if i > 7 {
					prev := field(t, ls[i-1], "hash").(string)
					ls[i] = setField(t, ls[i], "prev", prev)
				}
				ls[i] = rehash(ls[i])
			}
			return ls
		}, audit.Problem{File: f1, Line: 10, Seq: 10, Reason: "hash differs from the head anchor's for seq 10"}},
		{"NotARecord", func(t *testing.T, ls [][]byte) [][]byte {
			ls[2] = []byte(`{"hello":"world"}`)
			return ls
		}, audit.Problem{File: f1, Line: 3, Reason: "not a record"}},
		{"GarbageInTheMiddle", func(t *testing.T, ls [][]byte) [][]byte {
			ls[2] = []byte(`{"seq":3,"ti`)
			return ls
		}, audit.Problem{File: f1, Line: 3, Reason: "line does not parse as JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, 10, audit.Options{})
			path := filepath.Join(dir, f1)
			writeLines(t, path, tt.tamper(t, lines(t, path)))
			checkProblem(t, dir, tt.want)
		})
	}
}

// TestVerifyNamesTamperedFiles works on a log rotated into several files.
func TestVerifyNamesTamperedFiles(t *testing.T) {
	// Each record is 414 bytes: three fit in a file.
	opts := audit.Options{MaxFileBytes: 1300}
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string) audit.Problem
	}{
		{"MiddleFileDeleted", func(t *testing.T, dir string) audit.Problem {
			rm(t, file(dir, 2))
			return audit.Problem{File: "audit-000002.jsonl", Reason: "file audit-000002.jsonl missing (audit-000003.jsonl follows audit-000001.jsonl)"}
		}},
		{"FirstFileDeleted", func(t *testing.T, dir string) audit.Problem {
			rm(t, file(dir, 1))
			return audit.Problem{File: "audit-000001.jsonl", Reason: "file audit-000001.jsonl missing"}
		}},
		{"MiddleFileDeletedAndLaterRenamed", func(t *testing.T, dir string) audit.Problem {
			rm(t, file(dir, 2))
			for n := 3; n <= files(t, dir)+1; n++ {
				mv(t, file(dir, n), file(dir, n-1))
			}
			first := seqOf(t, file(dir, 2), 0)
			return audit.Problem{File: "audit-000002.jsonl", Line: 1, Seq: first,
				Reason: fmt.Sprintf("seq %d follows 3: a record before this one is missing or out of order (the first record of audit-000002.jsonl does not continue audit-000001.jsonl", first)}
		}},
		{"FilesSwapped", func(t *testing.T, dir string) audit.Problem {
			mv(t, file(dir, 2), filepath.Join(dir, "x"))
			mv(t, file(dir, 3), file(dir, 2))
			mv(t, filepath.Join(dir, "x"), file(dir, 3))
			return audit.Problem{File: "audit-000002.jsonl", Line: 1, Seq: 7, Reason: "seq 7 follows 3"}
		}},
		{"LastFileDeleted", func(t *testing.T, dir string) audit.Problem {
			n := files(t, dir)
			rm(t, file(dir, n))
			last := seqOf(t, file(dir, n-1), -1)
			return audit.Problem{File: fmt.Sprintf("audit-%06d.jsonl", n-1), Line: len(lines(t, file(dir, n-1))) + 1, Seq: last + 1,
				Reason: fmt.Sprintf("the log ends at seq %d but the head anchor says seq 10", last)}
		}},
		{"HeadAltered", func(t *testing.T, dir string) audit.Problem {
			if err := os.WriteFile(filepath.Join(dir, "head"), []byte("{"), 0o600); err != nil {
				t.Fatal(err)
			}
			return audit.Problem{File: "head", Reason: "head anchor does not parse"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, 10, opts)
			if n := files(t, dir); n != 4 {
				t.Fatalf("the log has %d files, want 4 (3+3+3+1)", n)
			}
			checkProblem(t, dir, tt.tamper(t, dir))
		})
	}
}

func checkProblem(t *testing.T, dir string, want audit.Problem) {
	t.Helper()
	r, err := audit.Verify(dir)
	if err == nil {
		t.Fatalf("Verify passed a tampered log: %+v", r)
	}
	if !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("Verify error %v is not ErrTampered", err)
	}
	var p *audit.Problem
	if !errors.As(err, &p) || r.Problem != p {
		t.Fatalf("Verify error %v is not the report's *Problem %v", err, r.Problem)
	}
	if p.File != want.File || p.Line != want.Line || p.Seq != want.Seq || !strings.Contains(p.Reason, want.Reason) {
		t.Errorf("problem = %s line %d seq %d: %q\nwant       %s line %d seq %d: containing %q", p.File, p.Line, p.Seq, p.Reason, want.File, want.Line, want.Seq, want.Reason)
	}
}

func TestVerifyWarnsAboutATornLastLine(t *testing.T) {
	for _, torn := range []string{`{"seq":6,"time":"2026-`, "\x00\x00\x00\x00", "{\"seq\":6,\"ti\n"} {
		t.Run(fmt.Sprintf("%q", torn), func(t *testing.T) {
			dir := t.TempDir()
			writeLog(t, dir, 5, audit.Options{})
			appendBytes(t, file(dir, 1), torn)
			r, err := audit.Verify(dir)
			if err != nil {
				t.Fatalf("Verify: %v, want a warning only", err)
			}
			if r.Records != 5 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "a crash during a write") {
				t.Errorf("report = %+v, want 5 records and one warning about a crash", r)
			}
		})
	}
}

func TestVerifyTreatsATornLineInsideTheLogAsDamage(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 5, audit.Options{MaxFileBytes: 1300})
	appendBytes(t, file(dir, 1), `{"seq":4,"ti`)
	checkProblem(t, dir, audit.Problem{File: "audit-000001.jsonl", Line: 4, Reason: "incomplete line"})
}

func TestVerifyWarnsWithoutAHeadAnchor(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 3, audit.Options{})
	rm(t, filepath.Join(dir, "head"))
	r, err := audit.Verify(dir)
	if err != nil || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "no head anchor") {
		t.Errorf("Verify = %+v, %v; want one warning about the missing anchor", r, err)
	}
}

// TestCanonicalFormIsTheDocumentedOne checks each line by the procedure in
// doc.go alone, without the package.
func TestCanonicalFormIsTheDocumentedOne(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, audit.Options{KeepPayload: []string{"path"}})
	mustAppend(t, w, audit.Record{SessionID: "s", WorkID: "w", ToolUseID: "t", Data: audit.EgressBlocked{Method: "GET", Host: "evil.example", Reason: `no rule <matches> "this" & é`},
		Payload: map[string]any{"path": "/a\u2028b"}})
	mustAppend(t, w, audit.Record{Kind: "custom_kind"})
	w.Close()
	prev := audit.Genesis
	for i, l := range lines(t, file(dir, 1)) {
		if got := rehash(l); !bytes.Equal(got, l) {
			t.Errorf("line %d: recomputed\n%s\nwant\n%s", i+1, got, l)
		}
		if p := field(t, l, "prev"); p != prev {
			t.Errorf("line %d: prev %v, want %s", i+1, p, prev)
		}
		if s := field(t, l, "seq"); s != float64(i+1) {
			t.Errorf("line %d: seq %v", i+1, s)
		}
		prev = field(t, l, "hash").(string)
	}
}

func rm(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func mv(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func files(t *testing.T, dir string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// seqOf is the seq of line i of a file (negative i counts from the end).
func seqOf(t *testing.T, path string, i int) uint64 {
	t.Helper()
	ls := lines(t, path)
	if i < 0 {
		i += len(ls)
	}
	return uint64(field(t, ls[i], "seq").(float64))
}

func appendBytes(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}
