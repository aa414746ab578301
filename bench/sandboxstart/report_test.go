package main

import (
	"strings"
	"testing"
	"time"
)

// Each backend's p50 is given against the baseline of what it is built on,
// from the same run; a backend whose baseline did not run has no ratio.
func TestReportRatiosAreToTheirOwnBaseline(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	rows := []result{
		{name: baseProcess, samples: ms(10, 10, 10)},
		{name: "process", samples: ms(30, 30, 30)},
		{name: baseBwrap, samples: ms(20, 20, 20)},
		{name: "bwrap", samples: ms(40, 40, 40)},
		{name: "bwrap + warm pool", samples: ms(10, 10, 10)},
		{name: "bwrap, session with egress", samples: ms(50, 50, 50)},
		{name: baseRunc, samples: ms(400, 400, 400)},
		{name: "docker", samples: ms(200, 200, 200)},
		{name: baseRunsc, skipped: "no runsc"},
		{name: "docker-runsc", samples: ms(900, 900, 900)},
	}
	out := report(rows, 3)
	for _, want := range []string{
		"| process | 30.0 ms | 30.0 ms | 3.00× |",
		"| bwrap | 40.0 ms | 40.0 ms | 2.00× | p50 ≤ 50.0 ms: **met** |",
		"| bwrap + warm pool | 10.0 ms | 10.0 ms | 0.50× | p50 ≤ 50.0 ms: **met** |",
		"| bwrap, session with egress | 50.0 ms | 50.0 ms | 2.50× |",
		"| docker | 200.0 ms | 200.0 ms | 0.50× | p50 ≤ 1.5× baseline: **met** |",
		"| docker-runsc | 900.0 ms | 900.0 ms |  |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
