package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/perimeterhq/perimeter/bench/internal/stats"
)

// timeline collects, over sessions, when each of the worker's spans started
// and ended relative to the session's claim, to show where the claim path's
// time goes.
type timeline struct {
	starts map[string][]time.Duration
	ends   map[string][]time.Duration
}

func newTimeline() *timeline {
	return &timeline{starts: map[string][]time.Duration{}, ends: map[string][]time.Duration{}}
}

// add takes the spans of the session claimed at acked, from those that
// ended since the previous session's were taken (the caller resets its
// recorder): of those that started at or after the claim (the work span
// starts a moment before acked is stamped: 5 ms of slack; a span of the
// previous session that ended late started long before), the earliest of
// each name.
func (t *timeline) add(acked time.Time, ended []sdktrace.ReadOnlySpan) {
	first := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range ended {
		if s.StartTime().Before(acked.Add(-5 * time.Millisecond)) {
			continue
		}
		if f, ok := first[s.Name()]; !ok || s.StartTime().Before(f.StartTime()) {
			first[s.Name()] = s
		}
	}
	for n, s := range first {
		st, en := s.StartTime().Sub(acked), s.EndTime().Sub(acked)
		t.starts[n] = append(t.starts[n], st)
		t.ends[n] = append(t.ends[n], en)
	}
}

func (t *timeline) String() string {
	type row struct {
		name       string
		start, end time.Duration
		n          int
	}
	rows := make([]row, 0, len(t.starts))
	for n, starts := range t.starts {
		rows = append(rows, row{n, stats.Median(starts), stats.Median(t.ends[n]), len(starts)})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(a.start, b.start) })
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "  %8.1f ms → %8.1f ms  %s (%d)\n", ms(r.start), ms(r.end), r.name, r.n)
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
