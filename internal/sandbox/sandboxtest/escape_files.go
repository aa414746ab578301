package sandboxtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readHostFile: the first thing a hostile command tries is to read what the
// worker can read — its configuration, its credentials, anything else on the
// host. Only a separate view of the file system stops `cat`; sandboxd's
// path checks stop the read tool (in every runtime).
func readHostFile(t *testing.T, s *escapeSuite, a *attempt) {
	secret, pattern := canary("file")
	a.secrets = append(a.secrets, secret)
	b := s.create(t, s.newRuntime(t))
	abs := hostFile(t, hostDir(t, false), "credentials", secret+"\n")
	// Next to the workspace, where "../" leads on the host.
	rel := "../outside-" + randomHex(4) + ".txt"
	hostFile(t, filepath.Dir(b.spec.Workspace), filepath.Base(rel), secret+"\n")

	b.script(t, a, "read-host-file", readHostFileScript, "", pattern, abs, rel)
	for _, tc := range []struct{ vector, path string }{
		{"read tool, absolute path", abs},
		{"read tool, parent of the workspace", rel},
	} {
		res, err := b.call("read", map[string]any{"file_path": tc.path})
		switch {
		case toolFailed(t, tc.vector, res, err) && !a.leaks(res.Text):
			a.recordTools(tc.vector, blocked, "refused: %s", clip(res.Text, 200))
		default:
			a.recordTools(tc.vector, escaped, "the read tool returned a file outside the workspace")
		}
	}
}

const readHostFileScript = `PAT=$1
try() {
  if cat -- "$2" 2>/dev/null | grep -q -- "$PAT"; then
    escaped "$1" "read the host's file through $2"
  else
    blocked "$1" "$(cat -- "$2" 2>&1 >/dev/null || true)"
  fi
}
try "cat, absolute path" "$2"
try "cat, parent of the workspace" "$3"
try "cat through /proc/1/root" "/proc/1/root$2"
done_
`

// writeHostFile: a sandbox that can write outside its workspace can plant
// code the host runs (a shell profile, a cron job, a binary on the worker's
// PATH) or corrupt the worker's state. The host decides: a file appearing
// next to the workspace, or a host file changing, is an escape.
func writeHostFile(t *testing.T, s *escapeSuite, a *attempt) {
	b := s.create(t, s.newRuntime(t))
	dir := hostDir(t, true)
	const original = "original content\n"
	// One host file for bash to append to, one for the edit tool.
	appendTarget := hostFile(t, dir, "profile", original)
	editTarget := hostFile(t, dir, "config", original)
	parent := filepath.Dir(b.spec.Workspace)
	name := "pwned-" + randomHex(4)

	b.script(t, a, "write-host-file", writeHostFileScript, "",
		filepath.Join(dir, name+"-bash"), "../"+name+"-bash", appendTarget)
	for _, tc := range []struct {
		vector, tool string
		input        map[string]any
	}{
		{"write tool, absolute path", "write", map[string]any{"file_path": filepath.Join(dir, name+"-write"), "content": "pwned\n"}},
		{"write tool, parent of the workspace", "write", map[string]any{"file_path": "../" + name + "-write", "content": "pwned\n"}},
		{"edit tool, host file", "edit", map[string]any{"file_path": editTarget, "old_string": "original", "new_string": "pwned"}},
	} {
		res, err := b.call(tc.tool, tc.input)
		if !toolFailed(t, tc.vector, res, err) {
			a.recordTools(tc.vector, escaped, "the %s tool accepted a path outside the workspace", tc.tool)
		} else {
			a.recordTools(tc.vector, blocked, "refused: %s", clip(res.Text, 200))
		}
	}

	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	changed := func(p string) bool { got, _ := os.ReadFile(p); return string(got) != original }
	for _, o := range []struct {
		vector  string
		tools   bool
		reached bool
		what    string
	}{
		{"echo into an absolute path", false, exists(filepath.Join(dir, name+"-bash")), "a file appeared in the host directory"},
		{"echo into the parent of the workspace", false, exists(filepath.Join(parent, name+"-bash")), "a file appeared next to the workspace"},
		{"append to a host file", false, changed(appendTarget), "the host file changed"},
		{"write tool, absolute path", true, exists(filepath.Join(dir, name+"-write")), "a file appeared in the host directory"},
		{"write tool, parent of the workspace", true, exists(filepath.Join(parent, name+"-write")), "a file appeared next to the workspace"},
		{"edit tool, host file", true, changed(editTarget), "the host file changed"},
	} {
		a.hostSaw(o.vector, o.tools, o.reached, o.what)
	}
}

const writeHostFileScript = `try() {
  if err=$( (printf 'pwned\n' >"$2") 2>&1 ); then
    info "$1" "the write to $2 succeeded in the sandbox"
  else
    blocked "$1" "$err"
  fi
}
try "echo into an absolute path" "$1"
try "echo into the parent of the workspace" "$2"
if err=$( (printf 'pwned\n' >>"$3") 2>&1 ); then
  info "append to a host file" "the append to $3 succeeded in the sandbox"
else
  blocked "append to a host file" "$err"
fi
done_
`

// symlinkThroughFileTools: the file tools are the one way into the sandbox
// that does not go through a shell, and sandboxd runs them with whatever
// reach it has (in the process runtime: the whole host). A symlink the model
// plants in the workspace must not lead them out: every runtime relies on
// sandboxd's path checks here, so this attack is never inverted.
func symlinkThroughFileTools(t *testing.T, s *escapeSuite, a *attempt) {
	secret, pattern := canary("file")
	a.secrets = append(a.secrets, secret)
	dir := hostDir(t, true)
	file := hostFile(t, dir, "credentials", secret+"\n")
	b := s.create(t, s.newRuntime(t))
	links := "ln -s " + shellQuote(file) + " link-file && ln -s " + shellQuote(dir) + " link-dir && ln -s / link-root && echo linked"
	if res, err := b.call("bash", bashInput(links)); err != nil || !strings.Contains(res.Text, "linked") {
		t.Fatalf("planting the symlinks: %+v, %v", res, err)
	}

	hostChanged := func() bool {
		got, _ := os.ReadFile(file)
		_, err := os.Lstat(filepath.Join(dir, "through-link.txt"))
		return string(got) != secret+"\n" || err == nil
	}
	// whole: the call searches the whole workspace, which is allowed; only
	// what it returns can betray an escape.
	for _, tc := range []struct {
		vector, tool string
		input        map[string]any
		whole        bool
	}{
		{"read a link to a host file", "read", map[string]any{"file_path": "link-file"}, false},
		{"read through a link to /", "read", map[string]any{"file_path": "link-root" + file}, false},
		{"read /etc/passwd through a link to /", "read", map[string]any{"file_path": "link-root/etc/passwd"}, false},
		{"write through a link to a host directory", "write", map[string]any{"file_path": "link-dir/through-link.txt", "content": "pwned\n"}, false},
		{"edit a link to a host file", "edit", map[string]any{"file_path": "link-file", "old_string": secret, "new_string": "pwned"}, false},
		{"glob through a link to /", "glob", map[string]any{"pattern": "*", "path": "link-root"}, false},
		{"grep through a link to a host directory", "grep", map[string]any{"pattern": pattern, "path": "link-dir"}, false},
		{"grep the workspace holding the links", "grep", map[string]any{"pattern": pattern}, true},
		{"glob the workspace holding the links", "glob", map[string]any{"pattern": "**/*"}, true},
	} {
		res, err := b.call(tc.tool, tc.input)
		refused := toolFailed(t, tc.vector, res, err)
		listed := strings.Contains(res.Text, filepath.Join("link-dir", "credentials"))
		switch {
		case a.leaks(res.Text) || hostChanged() || listed:
			a.recordTools(tc.vector, escaped, "the %s tool followed a symlink out of the workspace", tc.tool)
		case tc.whole:
			a.recordTools(tc.vector, blocked, "the search did not follow the links")
		case refused:
			a.recordTools(tc.vector, blocked, "refused: %s", clip(res.Text, 200))
		default:
			a.recordTools(tc.vector, escaped, "the %s tool accepted a path through a symlink leaving the workspace", tc.tool)
		}
	}
}

// hardLinkOut: a hard link is not a path — no path check can see that a
// workspace file is also a host file. Linking a host file into the
// workspace (which the host later reads, snapshots or restores) must fail
// because the workspace is a separate mount; only then is the link
// impossible, not merely unnoticed.
func hardLinkOut(t *testing.T, s *escapeSuite, a *attempt) {
	secret, _ := canary("file")
	a.secrets = append(a.secrets, secret)
	file := hostFile(t, hostDir(t, false), "credentials", secret+"\n")
	if err := os.Link(file, filepath.Join(t.TempDir(), "link-probe")); err != nil {
		a.notDemonstrable(true, "the host itself cannot hard-link the canary next to a workspace: "+err.Error())
	}
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "hard-link", hardLinkScript, "", file, "$PPID")

	res, err := b.call("read", map[string]any{"file_path": "hl-host-file"})
	if err == nil && !res.IsError && a.leaks(res.Text) {
		a.record("read tool through the hard link", escaped, "the read tool returned the host file's content through a workspace file")
	}
	linked := false
	if fi, err := os.Stat(filepath.Join(b.spec.Workspace, "hl-host-file")); err == nil {
		orig, _ := os.Stat(file)
		linked = orig != nil && os.SameFile(fi, orig)
	}
	a.hostSaw("ln a host file", false, linked, "the workspace holds a hard link to a host file")
}

const hardLinkScript = `try() {
  if [ -z "$2" ] || [ ! -e "$2" ]; then
    blocked "$1" "${2:-the file} is not visible in the sandbox"
    return
  fi
  if err=$(ln -- "$2" "$3" 2>&1); then
    [ "$4" = keep ] || rm -f -- "$3"
    escaped "$1" "hard-linked $2 into the workspace"
  else
    blocked "$1" "$err"
  fi
}
try "ln a host file" "$1" hl-host-file keep
try "ln /usr/bin/env" /usr/bin/env hl-usr-env
try "ln the sandboxd binary" "$(readlink "/proc/$2/exe" 2>/dev/null)" hl-sandboxd
done_
`

// replaceSandboxd: a backend that mounts the worker's own perimeter binary
// into the sandbox must mount it read-only, or the sandbox can replace the
// binary the host runs next (as the worker, outside any sandbox).
// Creating a file next to it stands for replacing it, harmlessly.
func replaceSandboxd(t *testing.T, s *escapeSuite, a *attempt) {
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "replace-sandboxd", replaceSandboxdScript, "", "$PPID", randomHex(4))
}

const replaceSandboxdScript = `exe=$(readlink "/proc/$1/exe" 2>/dev/null)
exe=${exe% (deleted)}
if [ -z "$exe" ]; then
  # Without access to /proc/PID/exe (gVisor), argv[0] names the binary.
  exe=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | head -n 1)
  case $exe in /*) ;; *) exe=$(command -v -- "$exe" 2>/dev/null) ;; esac
fi
if [ -z "$exe" ] || [ ! -e "$exe" ]; then
  unavailable "sandboxd's binary" "cannot tell where sandboxd's binary is (no /proc/$1/exe or cmdline)"
  done_
  exit 0
fi
dir=$(dirname -- "$exe")
p="$dir/.perimeter-escape-$2"
if err=$( (: >"$p") 2>&1 ); then
  rm -f -- "$p"
  escaped "create a file next to sandboxd" "created a file in $dir, so $exe can be replaced"
else
  blocked "create a file next to sandboxd" "$err"
fi
if err=$( (: >>"$exe") 2>&1 ); then
  escaped "open sandboxd for writing" "opened $exe for writing"
else
  blocked "open sandboxd for writing" "$err"
fi
done_
`
