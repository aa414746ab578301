package secrets

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writePrivate writes a file only its owner can read, whatever the umask.
func writePrivate(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFileReadsValue(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, want string }{
		{"plain", "s3cr3t", "s3cr3t"},
		{"trailing newline", "s3cr3t\n", "s3cr3t"},
		{"CRLF", "s3cr3t\r\n", "s3cr3t"},
		{"only one newline trimmed", "s3cr3t\n\n", "s3cr3t\n"},
		{"inner whitespace kept", " a b \n", " a b "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			writePrivate(t, p, tc.content)
			got, err := NewFile(map[string]string{"s": p}).Get(t.Context(), "s")
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("Get = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFileMissingIsNotFound(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writePrivate(t, empty, "\n")
	f := NewFile(map[string]string{"gone": filepath.Join(dir, "gone"), "empty": empty})
	for name, want := range map[string]string{
		"gone":         `secret "gone": file ` + filepath.Join(dir, "gone") + ` does not exist: secret not found`,
		"empty":        `secret "empty": file ` + empty + ` is empty: secret not found`,
		"unconfigured": `secret "unconfigured": no source is configured for it: secret not found`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.Get(t.Context(), name)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get: %v, want ErrNotFound", err)
			}
			if err.Error() != want {
				t.Errorf("error = %q\nwant    %q", err, want)
			}
		})
	}
}

func TestFileRefusesFilesOthersCanReadOrWrite(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o602, 0o644, 0o666} {
		t.Run(mode.String(), func(t *testing.T) {
			p := filepath.Join(dir, "s-"+mode.String())
			writePrivate(t, p, "s3cr3t")
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
			_, err := NewFile(map[string]string{"s": p}).Get(t.Context(), "s")
			if err == nil {
				t.Fatal("Get succeeded")
			}
			for _, want := range []string{`secret "s"`, "refusing " + p, "group or others can read or write it", "chmod 600"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if errors.Is(err, ErrNotFound) {
				t.Error("a refused file is reported as ErrNotFound")
			}
		})
	}
	t.Run("owner only", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o400, 0o600, 0o700} {
			p := filepath.Join(dir, "ok-"+mode.String())
			writePrivate(t, p, "s3cr3t")
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
			if _, err := NewFile(map[string]string{"s": p}).Get(t.Context(), "s"); err != nil {
				t.Errorf("mode %v: %v", mode, err)
			}
		}
	})
}

func TestFileRefusesDirectoriesAndHugeFiles(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge")
	writePrivate(t, huge, strings.Repeat("x", maxFileSize+1))
	f := NewFile(map[string]string{"dir": sub, "huge": huge})
	if _, err := f.Get(t.Context(), "dir"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Get of a directory: %v", err)
	}
	if _, err := f.Get(t.Context(), "huge"); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("Get of a huge file: %v", err)
	}
}

func TestFileFollowsSymlinksAndChecksTheTarget(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	writePrivate(t, target, "via-link")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	f := NewFile(map[string]string{"s": link})
	if got, err := f.Get(t.Context(), "s"); err != nil || string(got) != "via-link" {
		t.Fatalf("Get = %q, %v; want via-link", got, err)
	}
	if err := os.Chmod(target, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Get(t.Context(), "s"); err == nil {
		t.Error("Get through a link to a world-readable file succeeded")
	}
}

func TestFileRotationIsSeenAtOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	writePrivate(t, p, "v1")
	f := NewFile(map[string]string{"s": p})
	if got, _ := f.Get(t.Context(), "s"); string(got) != "v1" {
		t.Fatalf("Get = %q, want v1", got)
	}
	// Rotate the way Kubernetes and Vault Agent do: a new file renamed over the old one.
	next := p + ".new"
	writePrivate(t, next, "v2")
	if err := os.Rename(next, p); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.Get(t.Context(), "s"); string(got) != "v2" {
		t.Errorf("Get after rotation = %q, want v2", got)
	}
}

func TestFileRotationIsSeenAfterCacheTTL(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	writePrivate(t, p, "v1")
	c := NewCache(NewFile(map[string]string{"s": p}), time.Minute)
	clock := newFakeClock()
	c.now = clock.Now

	if got, _ := c.Get(t.Context(), "s"); string(got) != "v1" {
		t.Fatalf("Get = %q, want v1", got)
	}
	writePrivate(t, p, "v2")
	clock.Advance(59 * time.Second)
	if got, _ := c.Get(t.Context(), "s"); string(got) != "v1" {
		t.Errorf("Get within the TTL = %q, want the cached v1", got)
	}
	clock.Advance(time.Second)
	if got, _ := c.Get(t.Context(), "s"); string(got) != "v2" {
		t.Errorf("Get after the TTL = %q, want v2", got)
	}
}
