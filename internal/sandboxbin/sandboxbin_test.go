package sandboxbin

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestInstallWritesAnExecutableNamedByItsDigest(t *testing.T) {
	// A hardened host's umask (027) must not take away what sandboxes,
	// which run as other uids, need: searching the directory, running the
	// file.
	defer syscall.Umask(syscall.Umask(0o027))
	dir := filepath.Join(t.TempDir(), "bin")
	bin := []byte("#!/bin/sh\necho slim\n")
	path, err := install(dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(path), "perimeter-sandboxd-") || filepath.Dir(path) != dir {
		t.Fatalf("installed at %s", path)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, bin) {
		t.Fatalf("content %q, %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o711 {
		t.Errorf("directory mode %v, want 0711", fi.Mode().Perm())
	}
	// Another build gets another name: a running sandbox keeps its file.
	other, err := install(dir, []byte("other"))
	if err != nil || other == path {
		t.Fatalf("second build installed at %s (%v), first at %s", other, err, path)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files in %s, want 2 (no temporary files left)", len(entries), dir)
	}
}

func TestInstallKeepsAnIdenticalFileAndReplacesAnyOther(t *testing.T) {
	dir := t.TempDir()
	bin := []byte("the slim sandboxd")
	path, err := install(dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	first := ino()
	if _, err := install(dir, bin); err != nil || ino() != first {
		t.Fatalf("an identical file was rewritten (%v)", err)
	}

	// Tampered content under the right name: replaced, never run.
	if err := os.WriteFile(path, []byte("tampered"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := install(dir, bin); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, bin) {
		t.Fatalf("tampered file kept: %q", got)
	}

	// Right content, wrong mode (not executable by the sandbox's uid).
	if err := os.Chmod(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := install(dir, bin); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v after reinstall, want 0755", fi.Mode().Perm())
	}
}

func TestInstallReportsAnUnusableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := install(filepath.Join(file, "bin"), []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "sandboxd binary") {
		t.Fatalf("err = %v, want a sandboxd binary error", err)
	}
}

// A build without the overlay (go test, plain go build) embeds nothing,
// and Path says so; one with it installs exactly what it embeds.
func TestPathMatchesWhatIsEmbedded(t *testing.T) {
	path, err := Path(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin := Embedded()
	switch {
	case bin == nil && path != "":
		t.Fatalf("nothing embedded, yet Path = %s", path)
	case bin != nil:
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, bin) {
			t.Fatalf("installed file differs from the embedded binary (%v)", err)
		}
	}
}
