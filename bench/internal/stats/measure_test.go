package stats

import (
	"syscall"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{3, 1, 2}, 2},
		{[]time.Duration{4, 1, 3, 2}, 2},
	} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := Median([]float64{1, 2}); got != 1.5 {
		t.Errorf("Median([1 2]) = %v, want 1.5", got)
	}
}

func TestCPUGrowsWithWork(t *testing.T) {
	before := CPU(syscall.RUSAGE_SELF)
	for end := time.Now().Add(30 * time.Millisecond); time.Now().Before(end); {
	}
	if after := CPU(syscall.RUSAGE_SELF); after <= before {
		t.Fatalf("CPU time went from %v to %v over 30 ms of spinning", before, after)
	}
}
