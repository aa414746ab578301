//go:build linux && (amd64 || arm64)

package checkpoint

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// benchWorkspace writes n files of 1-4 KiB, 25 per directory, and returns
// the root and the file paths.
func benchWorkspace(b testing.TB, n int) (string, []string) {
	b.Helper()
	root := filepath.Join(b.TempDir(), "ws")
	rng := rand.New(rand.NewPCG(uint64(n), 2))
	paths := make([]string, n)
	for i := range n {
		leaf := i / 25
		p := filepath.Join(root, fmt.Sprintf("m%03d/p%02d/f%02d.txt", leaf/40, leaf%40, i%25))
		data := make([]byte, 1024+rng.IntN(3072))
		for j := range data {
			data[j] = 'a' + byte(rng.IntN(26))
		}
		writeFile(b, p, data, 0o644)
		paths[i] = p
	}
	return root, paths
}

// BenchmarkCheckpoint times a checkpoint after changing 10 files, and one
// after changing nothing, with a stat cache older than the racy window,
// with change tracking and with a full scan.
func BenchmarkCheckpoint(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, changed := range []int{0, 10} {
			for _, sync := range []bool{false, true} {
				for _, full := range []bool{false, true} {
					b.Run(fmt.Sprintf("files=%d/changed=%d/fsync=%v/fullscan=%v", n, changed, sync, full), func(b *testing.B) {
						root, paths := benchWorkspace(b, n)
						s, _ := openStore(b, Options{NoSync: !sync, FullScan: full})
						s.racyWindow = 0
						ctx := context.Background()
						if _, err := s.Checkpoint(ctx, root, Key{Session: "b"}); err != nil {
							b.Fatal(err)
						}
						rng := rand.New(rand.NewPCG(1, 1))
						b.ResetTimer()
						for i := 0; b.Loop(); i++ {
							b.StopTimer()
							for _, j := range rng.Perm(n)[:changed] {
								os.WriteFile(paths[j], fmt.Appendf(nil, "change %d %d", i, j), 0o644)
							}
							time.Sleep(time.Millisecond)
							b.StartTimer()
							c, err := s.Checkpoint(ctx, root, Key{Session: "b", ToolUseID: fmt.Sprint(i)})
							if err != nil {
								b.Fatal(err)
							}
							if c.Hashed != changed {
								b.Fatalf("hashed %d files, want %d", c.Hashed, changed)
							}
						}
					})
				}
			}
		}
	}
}

// BenchmarkFirstCheckpoint times reading and storing a whole workspace.
func BenchmarkFirstCheckpoint(b *testing.B) {
	root, _ := benchWorkspace(b, 2000)
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(b.TempDir(), fmt.Sprint("store", i)), Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := s.Checkpoint(ctx, root, Key{Session: "b"}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkRestore times restoring a checkpoint that differs from the
// workspace in 10 files.
func BenchmarkRestore(b *testing.B) {
	root, paths := benchWorkspace(b, 2000)
	s, _ := openStore(b, Options{NoSync: true})
	ctx := context.Background()
	c, err := s.Checkpoint(ctx, root, Key{Session: "b"})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		for j := range 10 {
			os.WriteFile(paths[j*97], []byte("changed"), 0o644)
		}
		b.StartTimer()
		if _, err := s.Restore(ctx, root, c.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreContents compares what storing contents compressed would
// cost with the hashing every object needs anyway, on this repository's
// own Go sources (doc.go's "Contents are stored raw"). It reports the
// compression ratio too.
func BenchmarkStoreContents(b *testing.B) {
	var src []byte
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		src = append(src, data...)
	}
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		for b.Loop() {
			sha256.Sum256(src)
		}
	})
	b.Run("gzip-fastest", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		var out bytes.Buffer
		for b.Loop() {
			out.Reset()
			zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
			zw.Write(src)
			zw.Close()
		}
		b.ReportMetric(float64(len(src))/float64(out.Len()), "ratio")
	})
}

// BenchmarkStatCacheBytes reports the heap a session's stat cache takes
// per workspace entry (Options.CacheEntries' "about 150 bytes").
func BenchmarkStatCacheBytes(b *testing.B) {
	root, _ := benchWorkspace(b, 5000)
	for b.Loop() {
		s, err := Open(filepath.Join(b.TempDir(), "store"), Options{NoSync: true, FullScan: true})
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		c, err := s.Checkpoint(context.Background(), root, Key{Session: "b"})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(c.Files+c.Dirs), "bytes/entry")
		runtime.KeepAlive(s)
		s.Close()
	}
}
