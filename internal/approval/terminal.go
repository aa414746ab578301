package approval

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Terminal asks the human at the worker's terminal about the calls a rule
// says ask for: one prompt at a time, answered with y or n (and an optional
// reason, which a denial shows the model). A request decided elsewhere, or
// past its deadline, withdraws its prompt; a line typed while no prompt
// shows answers nothing, so a "y" meant for a withdrawn prompt cannot
// approve the next one.
type Terminal struct {
	out   io.Writer
	who   string
	lines chan line
	mu    sync.Mutex // one prompt at a time
}

// line is one line typed at the terminal and when it was read.
type line struct {
	text string
	at   time.Time
}

// NewTerminal reads answers from in (the terminal) and prompts on out; who
// is recorded as the approver.
func NewTerminal(in io.Reader, out io.Writer, who string) *Terminal {
	t := &Terminal{out: out, who: who, lines: make(chan line)}
	go func() {
		defer close(t.lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			t.lines <- line{sc.Text(), time.Now()}
		}
	}()
	return t
}

// Ask prompts about r until answered; ok is false when ctx ended first (the
// request was decided elsewhere, timed out, or the session went away) or
// the terminal closed.
func (t *Terminal) Ask(ctx context.Context, r Record) (allow bool, reason string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ctx.Err() != nil {
		return false, "", false
	}
	preview := string(r.Input)
	if len(preview) > 300 {
		preview = preview[:300] + "…"
	}
	fmt.Fprintf(t.out, "\n[perimeter] %s wants to run %s %s\n  rule %q: %s\n  session %s, deadline %s\n  approve? [y/N, or n <reason>] ",
		r.SessionID, r.Tool, preview, r.Rule, r.Message, r.ToolUseID, r.Deadline.Local().Format(time.TimeOnly))
	shown := time.Now()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(t.out, "\n[perimeter] %s: no longer waiting for an answer here\n", r.ToolUseID)
			return false, "", false
		case l, open := <-t.lines:
			if !open {
				return false, "", false
			}
			if l.at.Before(shown) {
				// Typed while no prompt showed: meant for a prompt
				// withdrawn since, or for none. It answers nothing.
				continue
			}
			answer := strings.TrimSpace(l.text)
			word, rest, _ := strings.Cut(answer, " ")
			switch strings.ToLower(word) {
			case "y", "yes":
				return true, strings.TrimSpace(rest), true
			case "n", "no", "":
				return false, strings.TrimSpace(rest), true
			}
			fmt.Fprint(t.out, "  answer y or n (optionally followed by a reason): ")
		}
	}
}
