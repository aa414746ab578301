package sandboxtest

// The escape suite: attacks a hostile tool call would try, each driven only
// through Sandbox.Exec with real tool calls, each judged by what reached the
// host. It lives next to the conformance suite so every backend runs both:
//
//	func TestDockerRuntimeEscapes(t *testing.T) {
//		sandboxtest.RunEscapes(t, func(t *testing.T) sandbox.Runtime { return docker.New(…) }, sandboxtest.EscapeOptions{})
//	}
//
// An attack is a set of vectors (ways to try the same thing). A vector is
// run by a small shell (and, where the kernel interface needs it, python3)
// script that the suite writes into the workspace with the write tool and
// runs with the bash tool. Scripts print one verdict line per vector,
//
//	@escape <escaped|blocked|unavailable|info> <vector>: <detail>
//
// and "@escape-done" when they ran to the end, so a script that did not
// run is a failure, never a silent pass. Where the host can tell better than
// the sandbox (a listener that was connected to, a file that appeared next
// to the workspace), the host's observation decides.
//
// Secrets: the suite plants canaries that look like credentials. They never
// appear in a script (scripts search for a bracketed regular expression,
// "[p]erimeter-canary-…", which does not match its own text) and never in a
// log line: every detail is redacted before it is logged.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

// EscapeOptions configures [RunEscapes]. The zero value is what an isolating
// backend runs: every attack must be blocked, with [EscapeLimits].
type EscapeOptions struct {
	// Limits are the resource limits of every sandbox the suite creates;
	// zero fields take [EscapeLimits]. They are small so that the fork,
	// memory and disk bombs hit them quickly.
	Limits sandbox.Limits

	// ExpectEscapes inverts the suite for a runtime that isolates nothing
	// (the process runtime): each attack that only isolation can stop must
	// then get through, which proves that the attack detects a missing
	// protection instead of passing by accident. Attacks stopped by
	// sandboxd's own checks (the environment allow-list, the file tools'
	// path and symlink checks) must still be blocked. An attack the host
	// itself refuses to the test process (mount without CAP_SYS_ADMIN, a
	// kernel without modules) is reported as not demonstrable there and is
	// not asserted.
	ExpectEscapes bool

	// Accept names attacks (subtest names) this runtime is known to let
	// through, each with the reason; they still run and are reported as
	// not blocked, but do not fail the test. Every entry belongs in
	// SECURITY.md too. An entry for an attack that was blocked is reported,
	// so stale entries are noticed; an entry naming no attack fails.
	Accept map[string]string

	// Report, when set, is called once per attempted attack with its
	// outcome, for tallies across backends.
	Report func(attack string, blocked bool)
}

// EscapeLimits are the limits [RunEscapes] uses for zero fields of
// [EscapeOptions.Limits].
var EscapeLimits = sandbox.Limits{MemoryBytes: 256 << 20, CPUs: 1, PIDs: 64, TmpBytes: 16 << 20}

// escapeCallTimeout bounds one tool call of the suite. Scans inside the
// sandbox bound themselves well below it (see scanSeconds).
const escapeCallTimeout = 120 * time.Second

// scanSeconds bounds each file system or process scan a script runs.
const scanSeconds = 40

// workspaceLimiter is implemented by runtimes that enforce
// Limits.WorkspaceBytes (a loop-mounted file system, a sized volume). Only
// those get the workspace filled; for the others the workspace is recorded
// as unbounded rather than filling the host's disk.
type workspaceLimiter interface{ LimitsWorkspace() bool }

// verdict is what one vector of an attack came to.
type verdict int

const (
	// unavailable: the vector could not be tried here (no python3, no su).
	unavailable verdict = iota
	// info: what the sandbox saw of its own attempt; the host decides.
	info
	blocked
	escaped
)

func (v verdict) String() string {
	return [...]string{"unavailable", "info", "blocked", "escaped"}[v]
}

// finding is the verdict on one vector.
type finding struct {
	vector  string
	verdict verdict
	detail  string
	// tools marks a vector that isolation is not needed to stop: sandboxd's
	// own checks (the file tools' path checks) or the allow-listed
	// environment every runtime starts sandboxd with. It must be blocked
	// under every runtime, the process runtime included.
	tools bool
}

// attack is one subtest of the suite.
type attack struct {
	name string
	// isolation says only the sandbox's isolation can stop the attack.
	// Every vector of the other attacks is a tools vector (see finding).
	isolation bool
	run       func(t *testing.T, s *escapeSuite, a *attempt)
}

// attacks are the suite, in the order they run. The comment on each attack
// function says why it matters.
var attacks = []attack{
	// The file system: the host's files, the workspace boundary, the binary.
	{"ReadHostFileOutsideWorkspace", true, readHostFile},
	{"WriteHostFileOutsideWorkspace", true, writeHostFile},
	{"SymlinkOutOfWorkspaceThroughFileTools", false, symlinkThroughFileTools},
	{"HardLinkOutOfWorkspace", true, hardLinkOut},
	{"ReplaceTheSandboxdBinary", true, replaceSandboxd},
	// The network: host loopback, DNS, any route off the machine, the
	// container engine.
	{"TCPToHostLoopback", true, tcpToHostLoopback},
	{"TCPToAnotherLoopbackAddress", true, tcpToOtherLoopback},
	{"DNSLookup", true, dnsLookup},
	{"UseANetworkInterfaceOtherThanLoopback", true, networkInterfaces},
	{"ReachContainerEngineSocket", true, containerEngineSocket},
	// Credentials and other sessions.
	{"ReadCredentialFromEnvironment", false, credentialFromEnvironment},
	{"ReadCredentialFromHostProcessesAndFiles", true, credentialFromHost},
	{"SeeAnotherSessionsWorkspace", true, anotherSessionsWorkspace},
	{"SeeAnotherSessionsProcesses", true, anotherSessionsProcesses},
	{"SignalAHostProcess", true, signalHostProcess},
	// Resources.
	{"ForkBomb", true, forkBomb},
	{"MemoryBomb", true, memoryBomb},
	{"FillTheDisk", true, fillTheDisk},
	{"FillTheWorkspace", true, fillTheWorkspace},
	// Privileges and the kernel's attack surface.
	{"GainPrivilegesSetuid", true, gainPrivilegesSetuid},
	{"Mount", true, mountFilesystem},
	{"Ptrace", true, ptraceProcesses},
	{"Unshare", true, unshareNamespaces},
	{"LoadKernelModule", true, loadKernelModule},
	{"MakeDeviceNode", true, makeDeviceNode},
	{"ReadKernelMemoryOrRawDisk", true, readKernelMemory},
	{"WriteProcSys", true, writeProcSys},
	{"WriteSysfs", true, writeSysfs},
}

// RunEscapes runs the escape suite against the runtimes newRuntime returns
// (called once per attack). Each attack is a subtest named for what it
// tries; each logs one line
//
//	escape attack=<name> blocked=<true|false>
//
// (or attempted=false with the reason, for an attack this image cannot
// try), and the suite ends with a summary line counting them. Subtests do
// not run in parallel: some plant canaries in the test process's
// environment, and the bombs want the machine to themselves.
func RunEscapes(t *testing.T, newRuntime func(t *testing.T) sandbox.Runtime, opts EscapeOptions) {
	if runtime.GOOS != "linux" {
		t.Skipf("the escape suite attacks Linux sandboxes; this is %s", runtime.GOOS)
	}
	if testing.Short() {
		t.Skip("the escape suite takes minutes (scans, bombs); -short skips it")
	}
	s := &escapeSuite{opts: opts, limits: withEscapeLimits(opts.Limits)}
	s.newRuntime = func(t *testing.T) sandbox.Runtime {
		rt := newRuntime(t)
		s.runtimeName = rt.Name()
		return rt
	}
	known := make(map[string]bool, len(attacks))
	for _, at := range attacks {
		known[at.name] = true
	}
	for name := range opts.Accept {
		if !known[name] {
			t.Errorf("EscapeOptions.Accept names %q, which is not an attack of the suite", name)
		}
	}
	for _, at := range attacks {
		t.Run(at.name, func(t *testing.T) { s.runAttack(t, at) })
	}
	mode := "must-block"
	if opts.ExpectEscapes {
		mode = "expect-escapes"
	}
	c := s.count
	t.Logf("escape summary runtime=%s mode=%s attacks=%d tried=%d blocked=%d escaped=%d accepted=%d not_demonstrable=%d not_attempted=%d incomplete=%d",
		s.runtimeName, mode, len(attacks), c.tried, c.blocked, c.tried-c.blocked, c.accepted, c.notDemonstrable, c.notAttempted, c.incomplete)
}

// escapeSuite is one RunEscapes call. Its subtests run one at a time, so
// the fields need no lock.
type escapeSuite struct {
	newRuntime  func(t *testing.T) sandbox.Runtime
	opts        EscapeOptions
	limits      sandbox.Limits
	runtimeName string
	count       struct{ tried, blocked, accepted, notDemonstrable, notAttempted, incomplete int }
}

func withEscapeLimits(l sandbox.Limits) sandbox.Limits { return l.Or(EscapeLimits) }

func (s *escapeSuite) runAttack(t *testing.T, at attack) {
	a := &attempt{}
	judged := false
	defer func() {
		if !judged {
			// A t.Fatal (or panic) inside the attack: the failure says why.
			s.count.incomplete++
			t.Logf("escape attack=%s blocked=unknown (the attack did not complete)", at.name)
		}
	}()
	at.run(t, s, a)
	judged = true
	s.judge(t, at, a)
}

// judge logs and counts the outcome of one attack and fails the test when
// it is not what the mode expects.
func (s *escapeSuite) judge(t *testing.T, at attack, a *attempt) {
	t.Helper()
	if len(a.findings) == 0 {
		s.count.incomplete++
		t.Fatalf("escape attack=%s produced no verdict at all (a bug in the suite)", at.name)
	}
	var toolsEscaped, isoEscaped []finding
	var unavail []string
	tried := false
	for _, f := range a.findings {
		t.Logf("  %s %s: %s", f.verdict, f.vector, a.redact(f.detail))
		switch {
		case f.verdict == unavailable:
			unavail = append(unavail, f.vector+": "+f.detail)
			continue
		case f.verdict == escaped && (f.tools || !at.isolation):
			toolsEscaped = append(toolsEscaped, f)
		case f.verdict == escaped:
			isoEscaped = append(isoEscaped, f)
		}
		if f.verdict != info {
			tried = true
		}
	}
	if !tried {
		s.count.notAttempted++
		reason := a.redact(strings.Join(unavail, "; "))
		t.Logf("escape attack=%s attempted=false reason=%q", at.name, reason)
		t.Skipf("cannot be attempted in this sandbox: %s", reason)
	}
	isBlocked := len(toolsEscaped) == 0 && len(isoEscaped) == 0
	s.count.tried++
	if isBlocked {
		s.count.blocked++
	}
	t.Logf("escape attack=%s blocked=%t", at.name, isBlocked)
	if s.opts.Report != nil {
		s.opts.Report(at.name, isBlocked)
	}

	for _, f := range toolsEscaped {
		t.Errorf("%s: %s got through; this must be blocked under every runtime, the process runtime included: %s", at.name, f.vector, a.redact(f.detail))
	}
	if !at.isolation {
		return
	}
	switch {
	case s.opts.ExpectEscapes && a.impossible != "":
		s.count.notDemonstrable++
		t.Logf("escape attack=%s not demonstrable on this host: %s", at.name, a.impossible)
	case s.opts.ExpectEscapes && len(isoEscaped) == 0:
		t.Errorf("%s: blocked under a runtime that isolates nothing, so the attack would not notice a missing protection", at.name)
	case s.opts.ExpectEscapes:
		// The attack detects what it is meant to.
	case isBlocked:
		if why, ok := s.opts.Accept[at.name]; ok {
			t.Logf("escape attack=%s is blocked although accepted as a known gap (%s): remove it from EscapeOptions.Accept", at.name, why)
		}
	case len(toolsEscaped) > 0:
		// Already failed above.
	case a.accepted != "":
		s.count.accepted++
		t.Logf("escape attack=%s accepted: %s", at.name, a.accepted)
	default:
		if why, ok := s.opts.Accept[at.name]; ok {
			s.count.accepted++
			t.Logf("escape attack=%s accepted by EscapeOptions.Accept: %s", at.name, why)
			return
		}
		for _, f := range isoEscaped {
			t.Errorf("%s: %s got through: %s", at.name, f.vector, a.redact(f.detail))
		}
	}
}

// attempt collects the findings of one attack.
type attempt struct {
	findings []finding
	// impossible, when set, says why the host refuses this attack to the
	// test process itself, so a runtime without isolation cannot show it.
	impossible string
	// accepted, when set, is why a not-blocked outcome is expected of
	// every runtime (an optional limit the runtime does not enforce).
	accepted string
	// secrets are redacted from everything logged.
	secrets []string
}

func (a *attempt) add(f finding) { a.findings = append(a.findings, f) }

func (a *attempt) record(vector string, v verdict, format string, args ...any) {
	a.add(finding{vector: vector, verdict: v, detail: fmt.Sprintf(format, args...)})
}

// recordTools records a vector that sandboxd's own checks must stop.
func (a *attempt) recordTools(vector string, v verdict, format string, args ...any) {
	a.add(finding{vector: vector, verdict: v, detail: fmt.Sprintf(format, args...), tools: true})
}

// notDemonstrable marks the attack as one the host refuses to the test
// process itself when cond holds.
func (a *attempt) notDemonstrable(cond bool, why string) {
	if cond && a.impossible == "" {
		a.impossible = why
	}
}

// find returns the finding for vector, or nil.
func (a *attempt) find(vector string) *finding {
	for i := range a.findings {
		if a.findings[i].vector == vector {
			return &a.findings[i]
		}
	}
	return nil
}

// hostSaw settles vector by what the host observed: reached means the
// attack had an effect on the host (detail says which). Otherwise a vector
// the sandbox thought succeeded only did so inside the sandbox.
func (a *attempt) hostSaw(vector string, tools, reached bool, detail string) {
	f := a.find(vector)
	if f == nil {
		a.add(finding{vector: vector, tools: tools})
		f = &a.findings[len(a.findings)-1]
		f.verdict, f.detail = blocked, "nothing reached the host"
	}
	f.tools = tools
	switch {
	case reached:
		f.verdict, f.detail = escaped, detail
	case f.verdict == escaped || f.verdict == info:
		f.verdict, f.detail = blocked, "succeeded inside the sandbox, but nothing reached the host ("+f.detail+")"
	}
}

// parse records the verdict lines of a script's output and reports whether
// the script ran to its end.
func (a *attempt) parse(out string, tools bool) (done bool) {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "@escape-done" {
			done = true
			continue
		}
		rest, ok := strings.CutPrefix(line, "@escape ")
		if !ok {
			continue
		}
		word, rest, _ := strings.Cut(rest, " ")
		vector, detail, _ := strings.Cut(rest, ": ")
		v, ok := map[string]verdict{"unavailable": unavailable, "info": info, "blocked": blocked, "escaped": escaped}[word]
		if !ok || vector == "" {
			continue
		}
		a.add(finding{vector: vector, verdict: v, detail: detail, tools: tools})
	}
	return done
}

// redact hides the attempt's canaries in text that is about to be logged.
func (a *attempt) redact(text string) string {
	for _, s := range a.secrets {
		text = strings.ReplaceAll(text, s, "[canary]")
	}
	return text
}

// leaks reports whether text holds any of the attempt's canaries.
func (a *attempt) leaks(text string) bool {
	return slices.ContainsFunc(a.secrets, func(s string) bool { return strings.Contains(text, s) })
}

// escBox is a sandbox under attack.
type escBox struct {
	sandbox.Sandbox
	spec sandbox.Spec
}

// create starts a sandbox with the suite's limits on a fresh workspace; it
// is closed when the test ends.
func (s *escapeSuite) create(t *testing.T, rt sandbox.Runtime) *escBox {
	t.Helper()
	spec := sandbox.Spec{
		SessionID: "sesn_escape_" + randomHex(4),
		WorkID:    "work_escape_" + randomHex(4),
		Workspace: t.TempDir(),
		Env:       AllowList(),
		Limits:    s.limits,
	}
	ctx, cancel := context.WithTimeout(context.Background(), escapeCallTimeout)
	defer cancel()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("%s: Create: %v", rt.Name(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := sb.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &escBox{Sandbox: sb, spec: spec}
}

// call runs one tool call with the suite's deadline.
func (b *escBox) call(tool string, input any) (sandbox.Result, error) {
	return b.callWithin(escapeCallTimeout, tool, input)
}

func (b *escBox) callWithin(d time.Duration, tool string, input any) (sandbox.Result, error) {
	raw, err := json.Marshal(input)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return b.Exec(ctx, sandbox.Call{Tool: tool, Input: raw})
}

// bashInput is a bash tool call whose own timeout ends before the suite's.
func bashInput(command string) map[string]any {
	return map[string]any{"command": command, "timeout_ms": (escapeCallTimeout - 15*time.Second).Milliseconds()}
}

// scriptDir is where scripts are written, relative to the workspace.
const scriptDir = ".perimeter-escape"

// put writes the script files of name into the workspace with the write
// tool: name.sh (the prelude, then sh) and, when py is not empty, name.py,
// which the shell script finds as "$PY".
func (b *escBox) put(t *testing.T, name, sh, py string) {
	t.Helper()
	files := map[string]string{name + ".sh": fmt.Sprintf(scriptPrelude, name) + sh}
	if py != "" {
		files[name+".py"] = py
	}
	for file, content := range files {
		res, err := b.call("write", map[string]any{"file_path": scriptDir + "/" + file, "content": content})
		if err != nil || res.IsError {
			t.Fatalf("writing the script %s with the write tool: %+v, %v", file, res, err)
		}
	}
}

// scriptCommand is the bash command that runs script name with args. Words that
// start with '$' are left for the tool's shell to expand ("$PPID" is
// sandboxd); everything else is quoted.
func scriptCommand(name string, args ...string) string {
	words := []string{"bash", scriptDir + "/" + name + ".sh"}
	for _, arg := range args {
		if strings.HasPrefix(arg, "$") {
			words = append(words, `"`+arg+`"`)
		} else {
			words = append(words, shellQuote(arg))
		}
	}
	return strings.Join(words, " ")
}

// script writes and runs a script that must run to its end, and records its
// verdict lines in a.
func (b *escBox) script(t *testing.T, a *attempt, name, sh, py string, args ...string) {
	t.Helper()
	out := b.runScript(t, a, name, sh, py, args...)
	if !a.parse(out, false) {
		t.Fatalf("the %s script did not run to its end; its output:\n%s", name, a.redact(clip(out, 4000)))
	}
}

// runScript writes and runs a script and returns its output, failing the
// test if the call does not complete.
func (b *escBox) runScript(t *testing.T, a *attempt, name, sh, py string, args ...string) string {
	t.Helper()
	b.put(t, name, sh, py)
	res, err := b.call("bash", bashInput(scriptCommand(name, args...)))
	if err != nil {
		t.Fatalf("running the %s script: %v", name, err)
	}
	return res.Text
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// scriptPrelude starts every script (%s is its name). Verdicts go to
// stdout, one line each; everything else the attack prints is kept off it.
const scriptPrelude = `#!/bin/bash
# perimeter escape suite: %s
HERE=$(cd "$(dirname "$0")" && pwd)
PY="$HERE/$(basename "$0" .sh).py"
say() { local v=$1 n=$2; shift 2; printf '@escape %%s %%s: %%s\n' "$v" "$n" "$(printf '%%s' "$*" | tr '\n\r' '  ' | cut -c1-300)"; }
escaped() { say escaped "$@"; }
blocked() { say blocked "$@"; }
unavailable() { say unavailable "$@"; }
info() { say info "$@"; }
have() { command -v "$1" >/dev/null 2>&1; }
done_() { echo "@escape-done"; }
# scan_roots lists every top-level directory to search, the ones where
# credentials and workspaces usually live first (scans are time-bounded),
# without /proc, /sys and /dev, which hold no files worth reading.
scan_roots() {
  local -A seen
  local d
  for d in /tmp /var/tmp /dev/shm /run /root /home /workspace /etc /var /opt /srv /mnt /media /usr/local /*; do
    case $d in /proc|/sys|/dev) continue ;; esac
    if [ -d "$d" ] && [ ! -L "$d" ] && [ -z "${seen[$d]}" ]; then
      seen[$d]=1
      echo "$d"
    fi
  done
}
`

// hostDir makes a directory outside every workspace, readable (and, when
// writable is set, writable) by anyone, so that only isolation, not file
// permissions, keeps a sandbox out of it.
func hostDir(t *testing.T, writable bool) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "perimeter-escape-host-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	mode := os.FileMode(0o755)
	if writable {
		mode = 0o777
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostFile writes content to dir/name, readable and writable by anyone.
func hostFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	return p
}

// canary returns a fresh secret-looking value; pattern is a grep regular
// expression that matches it but not its own text.
func canary(kind string) (value, pattern string) {
	value = "perimeter-canary-" + kind + "-" + randomHex(12)
	return value, "[" + value[:1] + "]" + value[1:]
}

// toolFailed reports whether a tool call was refused; a call that failed
// at the RPC level is a test failure.
func toolFailed(t *testing.T, what string, res sandbox.Result, err error) bool {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return res.IsError
}

// isOutOfMemoryOrKilled reports whether err is sandboxd's death by the
// memory limit (or a kill that the limit caused).
func isOutOfMemoryOrKilled(err error) bool {
	var exit *sandbox.ExitError
	if !errors.As(err, &exit) {
		return false
	}
	text := strings.ToLower(err.Error())
	return strings.Contains(text, sandbox.ReasonOOM) || strings.Contains(text, "killed")
}
