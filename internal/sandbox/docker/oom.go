package docker

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// oomCounter reads how many processes the kernel has killed in a
// container's memory cgroup (cgroup v1 memory.oom_control or v2
// memory.events, both "oom_kill N"). Under runc the kernel kills the
// biggest process, usually the tool's, and sandboxd lives on; the counter
// lets Exec tell the model why its command died. It needs the worker to see
// the host's cgroup file system; without it, results are not annotated.
type oomCounter struct {
	file string
}

// newOOMCounter finds the memory cgroup of the started container, or
// returns nil.
func (s *Sandbox) newOOMCounter(ctx context.Context) *oomCounter {
	ins, err := s.rt.cli.ContainerInspect(ctx, s.id)
	if err != nil || ins.State == nil || ins.State.Pid <= 0 {
		return nil
	}
	file, err := memoryEventsFile(ins.State.Pid)
	if err != nil {
		s.log.Debug("out-of-memory kills in the sandbox will not be reported in tool results", slog.Any("reason", err))
		return nil
	}
	c := &oomCounter{file: file}
	if _, ok := c.count(); !ok {
		return nil
	}
	return c
}

// memoryEventsFile is the file of pid's memory cgroup that counts OOM kills.
func memoryEventsFile(pid int) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var v2 string
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case hasController(parts[1], "memory"):
			p := filepath.Join("/sys/fs/cgroup/memory", filepath.Clean("/"+parts[2]), "memory.oom_control")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	if v2 != "" {
		p := filepath.Join("/sys/fs/cgroup", filepath.Clean("/"+v2), "memory.events")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no readable memory cgroup for pid %d", pid)
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// count returns the number of OOM kills so far; ok is false when it cannot
// be read (or c is nil).
func (c *oomCounter) count() (n uint64, ok bool) {
	if c == nil {
		return 0, false
	}
	b, err := os.ReadFile(c.file)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, found := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); found {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// oomWatch tells whether the kernel killed a process of the container for
// memory since sandboxd last answered a call. The engine's State.OOMKilled
// cannot: it stays set once any process of the container was OOM-killed,
// so after a tool's memory bomb that sandboxd survived, a later SIGKILL of
// sandboxd (`docker kill`, `kill -9` from inside) would be reported to the
// model as "out of memory".
//
// It follows the engine's oom and die events for the container, which the
// engine sends under runc and runsc alike. When the memory cgroup's counter
// can be read (oomCounter), each oom event is weighed by the counter: the
// engine may send an event late or more than once for one kill, and the
// counter, read when a call returns, says exactly which kills sandboxd
// outlived. Without the counter the events themselves are counted, so a
// kill whose event arrives after the call that caused it has returned
// counts as a later one.
type oomWatch struct {
	died    chan struct{} // closed on the engine's die event, or when the events are lost
	settled chan struct{} // closed when the watch stops listening (lateOOM after the die event)

	mu         sync.Mutex  // guards the fields below
	counter    *oomCounter // nil until sandboxd answers, or when the cgroup cannot be read
	events     int         // oom events so far
	kills      uint64      // the counter's highest value read
	gone       bool        // an oom event came when the counter could no longer be read: the container was ending
	seenEvents int         // events when sandboxd last answered
	seenKills  uint64      // kills when sandboxd last answered
	lost       bool        // the event stream failed: only the engine's flag is left
	diedOnce   sync.Once
}

// lateOOM is how long the watch still listens after the die event. The
// engine relays containerd's out-of-memory and exit events as each comes,
// and under gVisor, whose kernel is the one process the host's OOM killer
// kills, the exit can come first.
const lateOOM = time.Second

func newOOMWatch() *oomWatch {
	return &oomWatch{died: make(chan struct{}), settled: make(chan struct{})}
}

// watch follows the container's events until its die event or ctx's end.
// since is a time before the container was created, so no event is missed
// between the creation and the subscription.
func (w *oomWatch) watch(ctx context.Context, cli *client.Client, id string, since time.Time, log *slog.Logger) {
	defer close(w.settled)
	msgs, errs := cli.Events(ctx, events.ListOptions{
		Since: strconv.FormatInt(since.Unix()-1, 10),
		Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("container", id),
			filters.Arg("event", string(events.ActionOOM)),
			filters.Arg("event", string(events.ActionDie)),
		),
	})
	var late <-chan time.Time // after the die event: the rest of lateOOM
	for {
		select {
		case m := <-msgs:
			switch m.Action {
			case events.ActionOOM:
				w.oomEvent()
			case events.ActionDie:
				w.end(false)
				if late == nil {
					late = time.After(lateOOM)
				}
			}
		case <-late:
			return
		case err := <-errs:
			if late != nil {
				return // the sandbox is being closed after its death
			}
			if ctx.Err() == nil {
				log.Debug("lost the engine's events for the sandbox: an out-of-memory death will be told from another only by the engine's flag", slog.Any("error", err))
			}
			w.end(true)
			return
		}
	}
}

func (w *oomWatch) end(lost bool) {
	w.mu.Lock()
	w.lost = w.lost || lost
	w.mu.Unlock()
	w.diedOnce.Do(func() { close(w.died) })
}

func (w *oomWatch) oomEvent() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	if w.counter == nil {
		return
	}
	if n, ok := w.counter.count(); ok {
		w.kills = max(w.kills, n)
	} else {
		w.gone = true
	}
}

// setCounter starts weighing events by c (nil: counting them) once
// sandboxd has answered its hello.
func (w *oomWatch) setCounter(c *oomCounter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counter = c
	w.answered(c.count())
}

// callReturned records that sandboxd answered a call; kills is the
// counter's value read after the answer, if ok.
func (w *oomWatch) callReturned(kills uint64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.answered(kills, ok)
}

func (w *oomWatch) answered(kills uint64, ok bool) {
	w.seenEvents = w.events
	if ok {
		w.kills = max(w.kills, kills)
		w.seenKills = w.kills
		w.gone = false
	}
}

// explain sets st.OOMKilled, for a stopped container, to whether an
// out-of-memory kill explains its death. The engine's flag stays set once
// anything in the container was OOM-killed, and is set only when the
// engine has the OOM event, which may come after the exit: the watch says
// whether a kill came after sandboxd last answered, and the flag decides
// only when the watch cannot tell. An OOM kill is a SIGKILL; no other
// death waits for the watch.
func (w *oomWatch) explain(ctx context.Context, st *container.State) {
	if st.ExitCode != 128+int(syscall.SIGKILL) {
		return
	}
	if killed, known := w.killedSinceAnswer(ctx); known {
		st.OOMKilled = killed
	}
}

// killedSinceAnswer reports whether a process of the stopped container
// was OOM-killed after sandboxd last answered. It waits, within ctx, for
// the engine's die event and, while no kill is known, for an oom event
// that trails it (lateOOM). known is false when it cannot tell (the
// events were lost, or ctx ended first): the engine's flag decides then.
func (w *oomWatch) killedSinceAnswer(ctx context.Context) (killed, known bool) {
	select {
	case <-w.died:
	case <-ctx.Done():
		return false, false
	}
	if killed, known := w.killed(); killed || !known {
		return killed, known
	}
	select {
	case <-w.settled:
	case <-ctx.Done():
		return false, false
	}
	return w.killed()
}

func (w *oomWatch) killed() (killed, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.lost:
		return false, false
	case w.counter != nil:
		return w.kills > w.seenKills || w.gone, true
	default:
		return w.events > w.seenEvents, true
	}
}
