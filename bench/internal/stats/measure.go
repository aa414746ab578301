// Package stats holds what the bench commands measure and sum up with.
package stats

import (
	"slices"
	"syscall"
	"time"
)

// CPU is the user and system time getrusage(2) reports for who:
// syscall.RUSAGE_SELF (this process) or syscall.RUSAGE_CHILDREN (its
// waited-for children and theirs). Zero if the call fails.
func CPU(who int) time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(who, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Median is the middle value of xs, or the mean of the two middle ones
// when their count is even; zero for none.
func Median[T ~int | ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
