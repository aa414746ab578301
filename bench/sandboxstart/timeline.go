package main

import (
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
	seen   map[string]bool // span ids already counted
	starts map[string][]time.Duration
	ends   map[string][]time.Duration
}

func newTimeline() *timeline {
	return &timeline{seen: map[string]bool{}, starts: map[string][]time.Duration{}, ends: map[string][]time.Duration{}}
}

// add takes the spans of the session claimed at acked: of the ended spans
// not yet counted that started at or after the claim (the work span starts
// a moment before acked is stamped: 5 ms of slack), the earliest of each
// name.
func (t *timeline) add(acked time.Time, ended []sdktrace.ReadOnlySpan) {
	first := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range ended {
		id := s.SpanContext().SpanID().String()
		if t.seen[id] {
			continue
		}
		t.seen[id] = true
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
	names := make([]string, 0, len(t.starts))
	for n := range t.starts {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return int(stats.Median(t.starts[a]) - stats.Median(t.starts[b])) })
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "  %8.1f ms → %8.1f ms  %s (%d)\n", ms(stats.Median(t.starts[n])), ms(stats.Median(t.ends[n])), n, len(t.starts[n]))
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
