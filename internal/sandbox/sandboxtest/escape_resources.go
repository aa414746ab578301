package sandboxtest

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// The resource attacks first measure, within a bound of their own, whether
// the limit holds: they ask for a few times the limit and no more. Only
// when it held do they go all out (the fork bomb), so a runtime without the
// limit is never bombed for real — the host it would take down is the one
// running the test.

// forkBomb: a fork bomb in one sandbox must exhaust that sandbox's PID
// limit, not the host's process table, or one session denies service to
// the worker and every other session on the machine.
func forkBomb(t *testing.T, s *escapeSuite, a *attempt) {
	rt := s.newRuntime(t)
	b := s.create(t, rt)
	probe := min(4*s.limits.PIDs, 2048)
	b.put(t, "fork-probe", forkProbeScript, forkProbePy)
	res, err := callBounded(t, b, "bash", bashInput(scriptCommand("fork-probe", strconv.FormatInt(probe, 10), strconv.FormatInt(s.limits.PIDs, 10))))
	switch {
	case err != nil:
		// The sandbox died (or hung) under the probe: bounded, if bluntly.
		a.record("fork probe", blocked, "the sandbox did not survive %d processes: %v", probe, err)
		hostStillWorks(t)
		sandboxOrFreshOneAnswers(t, s, rt, b)
		return
	case !a.parse(res.Text, false):
		t.Fatalf("the fork probe did not run to its end: %q", clip(res.Text, 500))
	}
	if f := a.find("fork probe"); f == nil || f.verdict != blocked {
		return // no limit (or no python3): a real bomb would hit the host
	}

	// The limit held: now a real bomb, which the driver kills after a while.
	b.put(t, "fork-bomb", forkBombScript, forkBombPy)
	res, err = callBounded(t, b, "bash", bashInput(scriptCommand("fork-bomb", "10")))
	switch {
	case err != nil:
		a.record("fork bomb", blocked, "the call ended with an error, as it may: %v", err)
	case !a.parse(res.Text, false) || a.find("fork bomb") == nil:
		a.record("fork bomb", blocked, "the call ended with a tool error, as it may: %s", clip(res.Text, 200))
	}
	hostStillWorks(t)
	sandboxOrFreshOneAnswers(t, s, rt, b)
}

const forkProbeScript = `if have python3; then
  python3 "$PY" "$1" "$2"
else
  unavailable "fork probe" "no python3 to count forks without tripping bash's fork retries"
fi
done_
`

const forkProbePy = `import errno, os, signal, sys, time

want, limit = int(sys.argv[1]), int(sys.argv[2])
kids, err = [], ""
try:
    for _ in range(want):
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(60)
            finally:
                os._exit(0)
        kids.append(pid)
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
finally:
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in kids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
if len(kids) >= want:
    print(f"@escape escaped fork probe: started {len(kids)} processes with a limit of {limit}", flush=True)
else:
    print(f"@escape blocked fork probe: fork failed with {err} after {len(kids)} processes (limit {limit})", flush=True)
`

const forkBombScript = `if have python3; then
  python3 "$PY" "$1"
else
  unavailable "fork bomb" "no python3 to drive and stop the bomb"
fi
done_
`

// forkBombPy runs the classic bomb in a session of its own for argv[1]
// seconds, then kills that session's process group until no member is
// left alive. Killing needs no new process, so it works with the PID limit
// exhausted; the dead are for the sandbox's init to reap.
const forkBombPy = `import os, signal, sys, time

secs = float(sys.argv[1])
leader = os.fork()
if leader == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.execvp("bash", ["bash", "-c", "f() { f | f & }; f"])


def members():
    """Counts the bomb's processes: (alive, zombies)."""
    alive = zombies = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == leader:  # the process group
            if fields[0] in "ZX":
                zombies += 1
            else:
                alive += 1
    return alive, zombies


time.sleep(secs)
deadline = time.monotonic() + 20
while True:
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(leader, os.WNOHANG)
    except ChildProcessError:
        pass
    alive, zombies = members()
    if alive == 0 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(f"@escape blocked fork bomb: ran {secs:.0f}s inside the limit; then {alive} of its processes were alive and {zombies} left for init to reap", flush=True)
`

// memoryBomb: memory is the one resource whose exhaustion makes the
// kernel kill somebody; without a limit that may be the worker, or any
// other process on the host. The sandbox must die alone, and its death
// must reach the model as a tool error (invariant 4), not crash anything.
func memoryBomb(t *testing.T, s *escapeSuite, a *attempt) {
	rt := s.newRuntime(t)
	b := s.create(t, rt)
	want := min(3*s.limits.MemoryBytes, 4<<30)
	b.put(t, "memory-bomb", memoryBombScript, "")
	// tail keeps everything it reads while no newline comes: one process
	// holding want bytes of touched memory, with no python3 needed.
	res, err := callBounded(t, b, "bash", bashInput(scriptCommand("memory-bomb",
		strconv.FormatInt(want, 10), strconv.FormatInt(s.limits.MemoryBytes>>20, 10))))
	switch {
	case err != nil && isOutOfMemoryOrKilled(err):
		a.record("memory", blocked, "sandboxd was killed: %v", err)
	case err != nil:
		a.record("memory", blocked, "the call failed with %v", err)
		t.Errorf("the memory bomb's call failed with %v; want a tool error, or an ExitError that says out of memory or killed", err)
	default:
		a.parse(res.Text, false)
		if a.find("memory") == nil {
			if !res.IsError {
				t.Fatalf("the memory bomb gave no verdict and no tool error: %q", clip(res.Text, 500))
			}
			a.record("memory", blocked, "the shell died as a tool error: %s", clip(res.Text, 200))
		}
	}
	hostStillWorks(t)
	sandboxOrFreshOneAnswers(t, s, rt, b)
}

const memoryBombScript = `if head -c "$1" /dev/zero | tail -n 1 >/dev/null 2>&1; then
  escaped memory "one process held $(($1 >> 20)) MiB over a $2 MiB limit"
else
  rc=$?
  blocked memory "the process holding $(($1 >> 20)) MiB failed with status $rc (limit $2 MiB)"
fi
done_
`

// fillTheDisk: a sandbox whose scratch space is the host's disk can fill
// it, and a full disk stops the worker from writing its audit log,
// snapshots and state. Its scratch areas must be sized (tmpfs with
// Limits.TmpBytes) and everything else read-only.
func fillTheDisk(t *testing.T, s *escapeSuite, a *attempt) {
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "fill-disk", fillDiskScript, "", strconv.FormatInt(2*s.limits.TmpBytes, 10), randomHex(4))
}

const fillDiskScript = `N=$1 R=$2
fill() {
  local v=$1 dir=$2 f="$2/.perimeter-escape-fill-$R" err rc size
  err=$(head -c "$N" /dev/zero 2>&1 >"$f")
  rc=$?
  size=$(stat -c %s "$f" 2>/dev/null || echo 0)
  rm -f -- "$f"
  if [ "$rc" = 0 ] && [ "$size" -ge "$N" ]; then
    escaped "$v" "wrote $((size >> 20)) MiB to $dir, twice its limit"
  else
    blocked "$v" "$dir took $((size >> 20)) of $((N >> 20)) MiB: $err"
  fi
}
fill /tmp /tmp
home=""
for h in "$HOME" /home/sandbox "$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6)"; do
  if [ -n "$h" ] && [ "$h" != / ] && [ -d "$h" ]; then home=$h; break; fi
done
if [ -n "$home" ]; then fill "home directory" "$home"; else unavailable "home directory" "there is none (HOME=${HOME:-unset})"; fi
made="" first=""
for d in / /usr /etc /var /opt; do
  p="${d%/}/.perimeter-escape-$R"
  if err=$( (: >"$p") 2>&1 ); then rm -f -- "$p"; made=$p; break; fi
  first=${first:-$err}
done
if [ -n "$made" ]; then escaped "root file system" "created $made"; else blocked "root file system" "$first"; fi
done_
`

// fillTheWorkspace: the workspace is host storage by design, so filling it
// fills the host's disk unless the backend sizes it. Only a runtime that
// says it enforces Limits.WorkspaceBytes (a LimitsWorkspace() bool method)
// has it filled; for the others the gap is recorded, not exercised.
func fillTheWorkspace(t *testing.T, s *escapeSuite, a *attempt) {
	rt := s.newRuntime(t)
	limiter, ok := rt.(workspaceLimiter)
	switch {
	case s.limits.WorkspaceBytes <= 0:
		a.accepted = "no workspace limit was asked for (EscapeOptions.Limits.WorkspaceBytes is 0)"
		a.record("workspace", escaped, "not bounded: %s; the suite does not fill an unbounded workspace, which would fill the host's disk", a.accepted)
	case !ok || !limiter.LimitsWorkspace():
		a.accepted = rt.Name() + " does not enforce Limits.WorkspaceBytes (it has no LimitsWorkspace() method reporting true)"
		a.record("workspace", escaped, "not bounded: %s", a.accepted)
	default:
		b := s.create(t, rt)
		b.script(t, a, "fill-workspace", fillWorkspaceScript, "", strconv.FormatInt(2*s.limits.WorkspaceBytes, 10), randomHex(4))
	}
}

const fillWorkspaceScript = `f="./.perimeter-escape-fill-$2"
err=$(head -c "$1" /dev/zero 2>&1 >"$f")
rc=$?
size=$(stat -c %s "$f" 2>/dev/null || echo 0)
rm -f -- "$f"
if [ "$rc" = 0 ] && [ "$size" -ge "$1" ]; then
  escaped workspace "wrote $((size >> 20)) MiB, twice the workspace limit"
else
  blocked workspace "took $((size >> 20)) of $(($1 >> 20)) MiB: $err"
fi
done_
`

// callBounded is a call that may legitimately end in an error (the
// sandbox died) but must end: Exec must return within its deadline plus
// the cancel grace, however hostile the sandbox.
func callBounded(t *testing.T, b *escBox, tool string, input any) (sandbox.Result, error) {
	t.Helper()
	type outcome struct {
		res sandbox.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := b.call(tool, input)
		done <- outcome{res, err}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-time.After(escapeCallTimeout + sandbox.DefaultCancelGrace + 30*time.Second):
		t.Fatalf("Exec did not return within %s of its deadline", sandbox.DefaultCancelGrace+30*time.Second)
		return sandbox.Result{}, nil
	}
}

// hostStillWorks checks that the host can still start a process after a
// bomb went off in the sandbox.
func hostStillWorks(t *testing.T) {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", "echo host-alive").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "host-alive") {
		t.Errorf("after the bomb the host cannot start a process: %v %q", err, out)
	}
}

// sandboxOrFreshOneAnswers checks that the bombed sandbox answers, or else
// that a fresh one from the same runtime does (the bomb's damage stayed
// in its sandbox).
func sandboxOrFreshOneAnswers(t *testing.T, s *escapeSuite, rt sandbox.Runtime, b *escBox) {
	t.Helper()
	res, err := b.callWithin(30*time.Second, "bash", bashInput("echo sandbox-alive"))
	if err == nil && strings.Contains(res.Text, "sandbox-alive") {
		t.Log("the bombed sandbox still answers")
		return
	}
	t.Logf("the bombed sandbox no longer answers (%+v, %v); a fresh one must", res, err)
	fresh := s.create(t, rt)
	res, err = fresh.call("bash", bashInput("echo sandbox-alive"))
	if err != nil || !strings.Contains(res.Text, "sandbox-alive") {
		t.Errorf("after the bomb a fresh sandbox does not answer either: %+v, %v", res, err)
	}
}
