package shell_test

import (
	"context"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2/tools/agenttoolset"

	"github.com/perimeterhq/perimeter/internal/shell"
)

// BenchmarkStart is a shell's start to its first command's result (`true`),
// then its close: the part of a cold sandbox's first bash call the shell
// decides. "sdk" is agenttoolset.BashSession, the baseline; "shell" is
// this package's. Run both in one invocation and compare the two.
//
//	go test -run '^$' -bench Start -benchtime 30x ./internal/shell/
func BenchmarkStart(b *testing.B) {
	env := []string{"PATH=/usr/bin:/bin"}
	ctx := context.Background()
	b.Run("sdk", func(b *testing.B) {
		dir := b.TempDir()
		for b.Loop() {
			s, err := agenttoolset.NewBashSession(dir, map[string]string{"PATH": "/usr/bin:/bin"})
			if err != nil {
				b.Fatal(err)
			}
			if _, code, err := s.Exec(ctx, "true", 10*time.Second); err != nil || code != 0 {
				b.Fatalf("true: %d, %v", code, err)
			}
			s.Close()
		}
	})
	b.Run("shell", func(b *testing.B) {
		dir := b.TempDir()
		for b.Loop() {
			s, err := shell.Start(dir, env)
			if err != nil {
				b.Fatal(err)
			}
			if _, code, err := s.Exec(ctx, "true", 10*time.Second); err != nil || code != 0 {
				b.Fatalf("true: %d, %v", code, err)
			}
			s.Close()
		}
	})
}
