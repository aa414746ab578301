package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

func TestExitReasonUsesTheWordsTheModelMaySee(t *testing.T) {
	// The toolset shows the model only reasons of these forms.
	safe := regexp.MustCompile(`^(exit status -?[0-9]{1,5}|killed by signal (SIG[A-Z0-9]{2,8}|signal [0-9]{1,3})|` + sandbox.ReasonOOM + `)$`)
	tests := []struct {
		state container.State
		want  string
	}{
		{container.State{ExitCode: 0}, "exit status 0"},
		{container.State{ExitCode: 2}, "exit status 2"},
		{container.State{ExitCode: 137}, "killed by signal SIGKILL"},
		{container.State{ExitCode: 143}, "killed by signal SIGTERM"},
		{container.State{ExitCode: 129}, "killed by signal SIGHUP"},
		{container.State{ExitCode: 128 + 40}, "killed by signal signal 40"},
		{container.State{ExitCode: 255}, "exit status 255"},
		{container.State{ExitCode: 137, OOMKilled: true}, sandbox.ReasonOOM},
		// An earlier OOM kill of a tool does not explain a later clean exit.
		{container.State{ExitCode: 0, OOMKilled: true}, "exit status 0"},
	}
	for _, tc := range tests {
		got := exitReason(&tc.state)
		if got != tc.want {
			t.Errorf("exitReason(%+v) = %q, want %q", tc.state, got, tc.want)
		}
		if !safe.MatchString(got) {
			t.Errorf("exitReason(%+v) = %q, which the toolset would not show", tc.state, got)
		}
	}
}

func TestEnvArgsRefusesWhatEnvWouldMisread(t *testing.T) {
	got, err := envArgs(map[string]string{"PATH": "/bin", "A": "x=y", "EMPTY": ""})
	if err != nil || strings.Join(got, " ") != "A=x=y EMPTY= PATH=/bin" {
		t.Errorf("envArgs = %q, %v", got, err)
	}
	for _, bad := range []map[string]string{{"": "x"}, {"A=B": "x"}, {"-i": "x"}, {"A": "x\x00y"}, {"A\x00": "x"}} {
		if _, err := envArgs(bad); err == nil {
			t.Errorf("envArgs(%q) succeeded", bad)
		}
	}
}

func TestContainerNameIsValidAndReadable(t *testing.T) {
	valid := regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)
	for _, session := range []string{"sesn_01ABC", "", "../../etc", strings.Repeat("x", 100), "-.-", "sesn with spaces"} {
		name := containerName(session)
		if !valid.MatchString(name) || len(name) > 64 {
			t.Errorf("containerName(%q) = %q, not a valid container name", session, name)
		}
	}
	if a, b := containerName("s"), containerName("s"); a == b {
		t.Errorf("two sandboxes of one session got the same name %q", a)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/bad\09`: `/bad\09`, `/end\04`: `/end\04`} {
		if got := sandbox.UnescapeMountinfo(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOOMWatchBlamesOnlyKillsSandboxdDidNotOutlive(t *testing.T) {
	const answeredAt = 1 // the counter when sandboxd last answered
	newKill := func(w *oomWatch, counter string) {
		writeOOMKills(t, counter, answeredAt+1)
		w.oomEvent()
	}
	tests := []struct {
		name    string
		counted bool
		events  func(w *oomWatch, counter string)
		late    bool // the events come after the die event
		want    bool
	}{
		{"NoEvent", true, func(w *oomWatch, _ string) {}, false, false},
		{"LateEventOfAnAnsweredKill", true, func(w *oomWatch, _ string) { w.oomEvent(); w.oomEvent() }, false, false},
		{"NewKill", true, newKill, false, true},
		// The engine may relay the exit before the OOM (gVisor).
		{"NewKillAfterTheDieEvent", true, newKill, true, true},
		{"KillAsTheCgroupWentAway", true, func(w *oomWatch, counter string) {
			os.Remove(counter)
			w.oomEvent()
		}, false, true},
		{"UncountedEarlierEvent", false, func(w *oomWatch, _ string) {}, false, false},
		{"UncountedNewEvent", false, func(w *oomWatch, _ string) { w.oomEvent() }, false, true},
		{"UncountedNewEventAfterTheDieEvent", false, func(w *oomWatch, _ string) { w.oomEvent() }, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			counter := filepath.Join(t.TempDir(), "memory.oom_control")
			writeOOMKills(t, counter, 0)
			w := newOOMWatch()
			if tc.counted {
				w.setCounter(&oomCounter{file: counter})
			} else {
				w.setCounter(nil)
			}
			writeOOMKills(t, counter, answeredAt)
			w.oomEvent()
			w.callReturned((&oomCounter{file: counter}).count())
			// As watch does: the die event, then events for lateOOM.
			if tc.late {
				w.end(false)
				go func() {
					time.Sleep(20 * time.Millisecond)
					tc.events(w, counter)
					close(w.settled)
				}()
			} else {
				tc.events(w, counter)
				w.end(false)
				close(w.settled)
			}
			if got, known := w.killedSinceAnswer(t.Context()); got != tc.want || !known {
				t.Errorf("killedSinceAnswer = %v, %v; want %v, known", got, known, tc.want)
			}
		})
	}
	t.Run("NoVerdictBeforeTheContextEnds", func(t *testing.T) {
		w := newOOMWatch()
		w.setCounter(nil)
		w.end(false) // the die event; the watch still listens
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		if _, known := w.killedSinceAnswer(ctx); known {
			t.Error("killedSinceAnswer gave a verdict before the watch settled; want the engine's flag to decide")
		}
	})
	t.Run("EventsLost", func(t *testing.T) {
		w := newOOMWatch()
		w.setCounter(nil)
		w.end(true)
		close(w.settled)
		if _, known := w.killedSinceAnswer(t.Context()); known {
			t.Error("with the events lost, killedSinceAnswer claims to know; want the engine's flag to decide")
		}
	})
}

func writeOOMKills(t *testing.T, file string, n int) {
	t.Helper()
	if err := os.WriteFile(file, fmt.Appendf(nil, "oom_kill_disable 0\nunder_oom 0\noom_kill %d\n", n), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The reason given for a stopped container: the watch's verdict on a
// SIGKILL, the engine's flag only when the watch cannot tell.
func TestOOMWatchExplainsADeathFromTheContainersState(t *testing.T) {
	sigkill := 128 + int(syscall.SIGKILL)
	tests := []struct {
		name    string
		st      container.State
		watch   func(w *oomWatch) // after sandboxd's last answer
		wantWhy string
	}{
		{"AnOOMEventAfterTheExitBeforeTheEngineSetItsFlag", container.State{ExitCode: sigkill},
			func(w *oomWatch) {
				w.end(false)
				go func() { w.oomEvent(); close(w.settled) }()
			}, sandbox.ReasonOOM},
		{"AKillAfterAToolsOOMThatSandboxdOutlived", container.State{ExitCode: sigkill, OOMKilled: true},
			func(w *oomWatch) { w.end(false); close(w.settled) }, "killed by signal SIGKILL"},
		{"TheEventsLostLeaveItToTheFlag", container.State{ExitCode: sigkill, OOMKilled: true},
			func(w *oomWatch) { w.end(true); close(w.settled) }, sandbox.ReasonOOM},
		{"NotASIGKILL", container.State{ExitCode: 128 + int(syscall.SIGTERM), OOMKilled: true},
			func(w *oomWatch) { w.end(false); close(w.settled) }, "killed by signal SIGTERM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newOOMWatch()
			w.setCounter(nil)
			w.oomEvent() // a tool's memory bomb, which sandboxd outlived
			w.callReturned(0, false)
			tc.watch(w)
			st := tc.st
			w.explain(t.Context(), &st)
			if got := exitReason(&st); got != tc.wantWhy {
				t.Errorf("reason %q, want %q", got, tc.wantWhy)
			}
		})
	}
}
