package worker

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkCapText caps tool results: one under the 100 KiB cap (returned
// as is) and one of 1 MiB of multi-byte text (cut on a rune boundary).
func BenchmarkCapText(b *testing.B) {
	const limit = 100 * 1024
	for _, bc := range []struct {
		name string
		text string
	}{
		{"under", strings.Repeat("x", 4*1024)},
		{"over", strings.Repeat("héllo wörld\n", 1<<20/14)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if out := capText(bc.text, limit); len(out) > limit {
					b.Fatalf("capped to %d bytes", len(out))
				}
			}
		})
	}
}

// BenchmarkJournalCall is the journal's share of one tool call: the begin
// and finish records, each a durable (synchronous=FULL) SQLite commit in
// the state directory, which is under $TMPDIR: put it on the disk a real
// state directory would be on.
func BenchmarkJournalCall(b *testing.B) {
	j, err := openJournal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = j.close() })
	ctx := context.Background()
	i := 0
	for b.Loop() {
		id := "sevt_" + strconv.Itoa(i)
		i++
		r := record{ToolUseID: id, SessionID: "sesn_1", WorkID: "work_1", WorkerID: "bench", Tool: "bash",
			InputSHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", StartedAt: time.Now()}
		if _, ok, err := j.begin(ctx, r); err != nil || !ok {
			b.Fatalf("begin: ok=%t err=%v", ok, err)
		}
		if err := j.finish(ctx, id, "", false, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
