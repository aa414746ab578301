package sandbox

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
)

const (
	// stderrLines is how many lines of a sandbox's stderr are logged, each
	// clipped to stderrLineBytes; the rest are counted.
	stderrLines     = 200
	stderrLineBytes = 1024
	// stderrTail is how many recent stderr lines a start failure quotes.
	stderrTail = 5
)

// StderrLog logs a sandbox's standard error, bounded: it is written on the
// hostile side and must not be able to flood the worker's log.
type StderrLog struct {
	log *slog.Logger

	mu      sync.Mutex // guards the fields below
	logged  int
	dropped int
	last    []string // the last stderrTail lines
}

// NewStderrLog logs to log.
func NewStderrLog(log *slog.Logger) *StderrLog { return &StderrLog{log: log} }

// Copy logs r line by line until it ends.
func (l *StderrLog) Copy(r io.Reader) {
	br := bufio.NewReaderSize(r, 4096)
	for {
		line, err := ReadLine(br, stderrLineBytes)
		if errors.Is(err, ErrLineTooLong) {
			line, err = []byte("(line too long, dropped)"), nil
		}
		if err != nil {
			break
		}
		l.add(strings.ToValidUTF8(string(line), "\uFFFD"))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped > 0 {
		l.log.Warn("sandbox stderr lines not logged", slog.Int("count", l.dropped))
	}
}

func (l *StderrLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = append(l.last, line)
	if len(l.last) > stderrTail {
		l.last = l.last[1:]
	}
	if l.logged >= stderrLines {
		l.dropped++
		return
	}
	l.logged++
	l.log.Warn("sandbox stderr", slog.String("line", line))
}

// Tail is the last lines the sandbox wrote to stderr; nil-safe.
func (l *StderrLog) Tail() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, " | ")
}
