package sandboxtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// credentialVars are the variables the worker's environment holds secrets
// in: the SDK's API key, the environment key the worker polls with, and
// one name nobody would think to filter.
var credentialVars = []string{"ANTHROPIC_API_KEY", "ANTHROPIC_ENVIRONMENT_KEY", "PERIMETER_ESCAPE_CANARY"}

// plantEnvCanaries sets a canary in each of credentialVars in the test
// process's environment (where a worker keeps its keys) and returns the
// patterns that find them.
func plantEnvCanaries(t *testing.T, a *attempt) []string {
	var patterns []string
	for _, name := range credentialVars {
		value, pattern := canary(strings.ToLower(name))
		t.Setenv(name, value)
		a.secrets = append(a.secrets, value)
		patterns = append(patterns, pattern)
	}
	return patterns
}

// credentialFromEnvironment: invariant 1 — no credential enters the
// sandbox. The worker holds real keys in its environment; sandboxd and
// every process it starts must get the allow-list instead, whichever way
// the model looks: its own environment, sandboxd's, PID 1's.
func credentialFromEnvironment(t *testing.T, s *escapeSuite, a *attempt) {
	patterns := plantEnvCanaries(t, a)
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "env-credentials", envCredentialsScript, "", append([]string{"$PPID"}, patterns...)...)
	res, err := b.call(sandbox.ToolCommand, command(`env; tr '\0' '\n' </proc/$PPID/environ`, ""))
	if err != nil {
		t.Fatalf("%s: %v", sandbox.ToolCommand, err)
	}
	if a.leaks(res.Text) {
		a.record("custom command tool", escaped, "a canary from the worker's environment is visible to a custom tool")
	} else {
		a.record("custom command tool", blocked, "no canary in the custom tool's environment or sandboxd's")
	}
}

const envCredentialsScript = `sd=$1
shift
pats=()
for p in "$@"; do pats+=(-e "$p"); done
environ() { tr '\0' '\n' <"$1"; }
check() {
  local v=$1 out
  shift
  if out=$("$@" 2>&1); then
    if printf '%s\n' "$out" | grep -q "${pats[@]}"; then
      escaped "$v" "a canary from the worker's environment is visible"
    else
      blocked "$v" "no canary"
    fi
  else
    blocked "$v" "unreadable: $out"
  fi
}
check env env
check "/proc/self/environ" environ /proc/self/environ
check "sandboxd's /proc/PID/environ" environ "/proc/$sd/environ"
check "/proc/1/environ" environ /proc/1/environ
done_
`

// credentialFromHost: with its own environment clean, a hostile command
// looks where the worker keeps its keys: the worker process's environment
// (/proc/<worker>/environ is readable by anyone with the same uid) and
// files on disk. A decoy process started with the worker's environment
// stands in for the worker; a host file holds another canary.
func credentialFromHost(t *testing.T, s *escapeSuite, a *attempt) {
	patterns := plantEnvCanaries(t, a)
	secret, pattern := canary("file")
	a.secrets = append(a.secrets, secret)
	patterns = append(patterns, pattern)
	hostFile(t, hostDir(t, false), "credentials.json", `{"api_key": "`+secret+`"}`+"\n")
	startDecoy(t, os.Environ(), "3600")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "host-credentials", hostCredentialsScript, "", append([]string{strconv.Itoa(scanSeconds)}, patterns...)...)
}

const hostCredentialsScript = `secs=$1
shift
pats=()
for p in "$@"; do pats+=(-e "$p"); done
hits="" n=0
for f in /proc/[0-9]*/environ; do
  env=$(tr '\0' '\n' <"$f" 2>/dev/null) || continue
  n=$((n + 1))
  if printf '%s\n' "$env" | grep -q "${pats[@]}"; then
    pid=${f#/proc/}
    hits="$hits ${pid%/environ}"
  fi
done
if [ -n "$hits" ]; then
  escaped "every process's environ" "canaries in the environment of pid(s)$hits"
else
  blocked "every process's environ" "read $n process environments, no canary"
fi
mapfile -t roots < <(scan_roots)
list=$(mktemp 2>/dev/null || echo "./.perimeter-escape-grep-$$")
# Line-buffered: what grep found survives the time bound killing it.
timeout -k 5 "$secs" grep -rlsI --line-buffered -D skip "${pats[@]}" -- "${roots[@]}" >"$list" 2>/dev/null
rc=$?
found=$(head -n 3 "$list" | tr '\n' ' ')
rm -f "$list"
if [ -n "$found" ]; then
  escaped "grep -r over the file system" "canaries in $found"
elif [ "$rc" -ge 124 ]; then
  blocked "grep -r over the file system" "no canary in ${secs}s of searching ${roots[*]} (the time bound ended the search)"
else
  blocked "grep -r over the file system" "no canary anywhere in ${roots[*]}"
fi
done_
`

// anotherSessionsWorkspace: sessions belong to different users and tasks;
// one session reading another's workspace is a data leak even when the
// host itself is safe. The workspaces are siblings on the host, so any
// view of the host's file system finds them.
func anotherSessionsWorkspace(t *testing.T, s *escapeSuite, a *attempt) {
	rt := s.newRuntime(t)
	other, me := s.create(t, rt), s.create(t, rt)
	secret, pattern := canary("session")
	a.secrets = append(a.secrets, secret)
	name := "secret-" + randomHex(6) + ".txt"
	if res, err := other.call("write", map[string]any{"file_path": name, "content": secret + "\n"}); err != nil || res.IsError {
		t.Fatalf("the other session's write: %+v, %v", res, err)
	}
	pid := ""
	if p, ok := other.Sandbox.(hostPID); ok {
		pid = strconv.Itoa(p.PID())
	}
	me.script(t, a, "other-workspace", otherWorkspaceScript, "", pattern, other.spec.Workspace, name, pid, strconv.Itoa(scanSeconds))
	res, err := me.call("read", map[string]any{"file_path": filepath.Join(other.spec.Workspace, name)})
	if toolFailed(t, "read", res, err) && !a.leaks(res.Text) {
		a.recordTools("read tool, the other workspace's host path", blocked, "refused: %s", clip(res.Text, 200))
	} else {
		a.recordTools("read tool, the other workspace's host path", escaped, "the read tool returned the other session's file")
	}
}

const otherWorkspaceScript = `PAT=$1 dir=$2 name=$3 pid=$4 secs=$5
if cat -- "$dir/$name" 2>/dev/null | grep -q -- "$PAT"; then
  escaped "cat the host path" "read the other session's file at its host path"
else
  blocked "cat the host path" "$(cat -- "$dir/$name" 2>&1 >/dev/null)"
fi
if ls -a -- "$dir" 2>/dev/null | grep -q -x -F -- "$name"; then
  escaped "ls the host path" "listed the other session's workspace"
else
  blocked "ls the host path" "$(ls -- "$dir" 2>&1 >/dev/null)"
fi
if [ -n "$pid" ]; then
  if cat -- "/proc/$pid/cwd/$name" 2>/dev/null | grep -q -- "$PAT"; then
    escaped "cat through the other sandboxd's /proc/PID/cwd" "read the other session's file through /proc/$pid/cwd"
  else
    blocked "cat through the other sandboxd's /proc/PID/cwd" "$(cat -- "/proc/$pid/cwd/$name" 2>&1 >/dev/null)"
  fi
fi
mapfile -t roots < <(scan_roots)
found=$(timeout -k 5 "$secs" find "${roots[@]}" -name "$name" -print -quit 2>/dev/null)
if [ -n "$found" ]; then
  escaped "find by name" "found the other session's file at $found"
else
  blocked "find by name" "not found in ${roots[*]} within ${secs}s"
fi
done_
`

// anotherSessionsProcesses: seeing another session's processes leaks what
// it runs (command lines carry file names, URLs, sometimes tokens) and is
// the first step to signalling or tracing them.
func anotherSessionsProcesses(t *testing.T, s *escapeSuite, a *attempt) {
	rt := s.newRuntime(t)
	other, me := s.create(t, rt), s.create(t, rt)
	digits := fmt.Sprintf("%06d", rand.IntN(1000000))
	res, err := other.call("bash", bashInput("sleep 7777."+digits+" >/dev/null 2>&1 &"))
	if err != nil || res.IsError {
		t.Fatalf("starting the marker process: %+v, %v", res, err)
	}
	pattern := "sleep 7777[.]" + digits

	// The scan must see the marker from its own sandbox, or "not seen" from
	// the other one would prove nothing.
	self := &attempt{}
	if done := self.parse(other.runScript(t, self, "process-scan", processScanScript, "", pattern), false); !done {
		t.Fatal("the process scan did not run to its end in the marker's own sandbox")
	}
	if f := self.find("process scan"); f == nil || f.verdict != escaped {
		t.Fatalf("the process scan does not see the marker in its own sandbox (%+v): the scan is broken", f)
	}
	me.script(t, a, "process-scan", processScanScript, "", pattern)
}

const processScanScript = `PAT=$1
out="" src=""
if have ps; then
  out=$(ps -eo pid=,args= 2>/dev/null) && src="ps -e"
fi
if [ -z "$out" ]; then
  out=$(for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <"$f" 2>/dev/null; echo; done)
  src="/proc/*/cmdline"
fi
n=$(printf '%s\n' "$out" | grep -c .)
if printf '%s\n' "$out" | grep -q -- "$PAT"; then
  escaped "process scan" "$src lists the marker process"
else
  blocked "process scan" "$src lists $n processes, not the marker"
fi
done_
`

// signalHostProcess: a sandbox that can signal host processes can kill
// the worker (and with it every session it supervises) or another
// session's tools. Signal 0 is the kernel's permission check without the
// effect.
func signalHostProcess(t *testing.T, s *escapeSuite, a *attempt) {
	digits := fmt.Sprintf("%06d", rand.IntN(1000000))
	pid := startDecoy(t, nil, "3600."+digits)
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "signal-host", signalHostScript, "", strconv.Itoa(pid), "3600[.]"+digits)
}

const signalHostScript = `pid=$1 PAT=$2
if err=$(kill -0 "$pid" 2>&1); then
  if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$PAT"; then
    blocked "kill -0" "pid $pid in the sandbox is another process"
  else
    escaped "kill -0" "signal 0 reached the host's process $pid"
  fi
else
  blocked "kill -0" "$err"
fi
done_
`

// startDecoy starts `sleep args…` on the host with env (nil: the test
// process's environment) and returns its pid. It stands for a host process
// such as the worker; it is killed when the test ends.
func startDecoy(t *testing.T, env []string, args ...string) int {
	t.Helper()
	path, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("a decoy host process needs sleep: %v", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the decoy host process: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Let it exec, so its /proc entries show sleep, not the test binary.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); err == nil && filepath.Base(exe) != filepath.Base(os.Args[0]) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd.Process.Pid
}
