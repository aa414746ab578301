package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/sandbox"
)

func TestRecipeIgnoresPackageOrderAndDuplicates(t *testing.T) {
	a, ha := Options{Packages: []string{"jq", "make"}}.Recipe()
	b, hb := Options{Packages: []string{"make", "jq", "git", "make"}}.Recipe()
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("package lists differ (-a +b):\n%s", diff)
	}
	if ha != hb {
		t.Errorf("hashes differ: %s vs %s", ha, hb)
	}
	if _, hc := (Options{Suite: "trixie", Packages: []string{"jq", "make"}}).Recipe(); hc == ha {
		t.Error("a different suite has the same recipe hash")
	}
	if _, hd := (Options{}).Recipe(); hd == ha {
		t.Error("different packages have the same recipe hash")
	}
	if _, he := (Options{Suite: DefaultSuite, Mirror: "http://example.org/debian"}).Recipe(); he != func() string { _, h := Options{}.Recipe(); return h }() {
		t.Error("the mirror changed the recipe hash; the same packages from another mirror are the same image")
	}
}

func TestPinned(t *testing.T) {
	const d = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		ref  string
		want bool
	}{
		{"sha256:" + d, true},
		{"perimeter-sandbox@sha256:" + d, true},
		{"registry.example.com:5000/team/sandbox@sha256:" + d, true},
		{"perimeter-sandbox:bookworm", false},
		{"perimeter-sandbox", false},
		{"perimeter-sandbox:bookworm@sha256:" + d[:63], false},
		{"sha256:" + strings.ToUpper(d), false},
		{"", false},
	}
	for _, tc := range tests {
		if got := Pinned(tc.ref); got != tc.want {
			t.Errorf("Pinned(%q) = %v, want %v", tc.ref, got, tc.want)
		}
	}
}

func TestRepositoryDropsTagAndDigest(t *testing.T) {
	tests := map[string]string{
		"perimeter-sandbox:bookworm":                "perimeter-sandbox",
		"perimeter-sandbox":                         "perimeter-sandbox",
		"host:5000/team/sandbox:v1":                 "host:5000/team/sandbox",
		"host:5000/team/sandbox":                    "host:5000/team/sandbox",
		"docker.io/library/debian:bookworm":         "debian",
		"debian@sha256:0123":                        "debian",
		"host:5000/team/sandbox:v1@sha256:abcdef01": "host:5000/team/sandbox",
	}
	for ref, want := range tests {
		if got := repository(ref); got != want {
			t.Errorf("repository(%q) = %q, want %q", ref, got, want)
		}
	}
}

func TestBuildRefusesWhatIsNotAPackageName(t *testing.T) {
	for _, p := range []string{"--no-check-gpg", "bash;rm", "Bash", ""} {
		_, err := Build(context.Background(), Options{Packages: []string{p}})
		if err == nil || !strings.Contains(err.Error(), "not a Debian package name") {
			t.Errorf("package %q: err = %v, want a refusal", p, err)
		}
	}
	if _, err := Build(context.Background(), Options{Suite: "--foreign"}); err == nil || !strings.Contains(err.Error(), "suite") {
		t.Errorf("suite --foreign: err = %v, want a refusal", err)
	}
}

func TestWriteTarKeepsLinksAndModesAndLeavesOutDev(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "dev/pts"), 0o755))
	must(os.WriteFile(filepath.Join(root, "dev/null-ish"), []byte("x"), 0o644))
	must(os.Mkdir(filepath.Join(root, "home"), 0o755))
	must(os.Mkdir(filepath.Join(root, "home/sandbox"), 0o700))
	must(os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/bash\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "etc/tool"), []byte("#!/bin/sh\n"), 0o700))
	must(os.Link(filepath.Join(root, "etc/tool"), filepath.Join(root, "etc/tool-link")))
	must(os.Symlink("../etc/passwd", filepath.Join(root, "home/passwd")))

	var buf bytes.Buffer
	must(writeTar(&buf, root))
	got := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(err)
		desc := string(rune(h.Typeflag)) + " " + os.FileMode(h.Mode).Perm().String()
		switch h.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			desc += " -> " + h.Linkname
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s carries the host's user names %q/%q", h.Name, h.Uname, h.Gname)
		}
		got[h.Name] = desc
	}
	want := map[string]string{
		"dev/":          "5 -rwxr-xr-x",
		"etc/":          "5 -rwxr-xr-x",
		"etc/passwd":    "0 -rw-r--r--",
		"etc/tool":      "0 -rwx------",
		"etc/tool-link": "1 -rwx------ -> etc/tool",
		"home/":         "5 -rwxr-xr-x",
		"home/passwd":   "2 -rwxrwxrwx -> ../etc/passwd",
		"home/sandbox/": "5 -rwx------",
	}
	// dev/pts and dev/null-ish are left out. Of two hard links the first
	// WalkDir meets (lexical order) is the file, the second a link to it.
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tar entries (-want +got):\n%s", diff)
	}
}

func TestUnescapeMount(t *testing.T) {
	tests := map[string]string{
		`/a\040b`:  "/a b",
		`/plain`:   "/plain",
		`/tab\011`: "/tab\t",
		`/bad\09`:  `/bad\09`,
		`/end\04`:  `/end\04`,
	}
	for in, want := range tests {
		if got := sandbox.UnescapeMountinfo(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTailLogKeepsTheLastLines(t *testing.T) {
	l := tailLog{log: slog.New(slog.DiscardHandler)}
	for i := range 20 {
		_, _ = io.WriteString(&l, strings.Repeat("x", i)+"\n")
	}
	_, _ = io.WriteString(&l, "partial")
	tail := l.tail()
	if !strings.HasSuffix(tail, "| partial") || strings.Count(tail, "|") != 8 {
		t.Errorf("tail = %q", tail)
	}
}
