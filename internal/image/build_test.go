package image_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/image/imagetest"
)

func TestBuildMakesASandboxImagePinnedByID(t *testing.T) {
	id := imagetest.Image(t)
	cli := imagetest.Engine(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if !image.Pinned(id) || !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("Build returned %q, want an image ID sha256:…", id)
	}
	ins, err := cli.ImageInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	_, recipe := image.Options{}.Recipe()
	cfg := ins.Config
	checks := []struct{ what, got, want string }{
		{"user", cfg.User, "1000:1000"},
		{"working dir", cfg.WorkingDir, "/workspace"},
		{"recipe label", cfg.Labels[image.LabelRecipe], recipe},
		{"suite label", cfg.Labels[image.LabelSuite], image.DefaultSuite},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if len(ins.RepoDigests) != 0 {
		t.Errorf("a locally built image has repo digests %v; its pinned form is its ID", ins.RepoDigests)
	}
	tag := image.DefaultRepository + ":" + image.DefaultSuite
	if !slices.Contains(ins.RepoTags, tag) {
		t.Errorf("tags = %v, want %s", ins.RepoTags, tag)
	}

	t.Run("ASecondBuildIsServedFromTheCache", func(t *testing.T) {
		start := time.Now()
		again, err := image.Build(ctx, image.Options{Client: cli})
		if err != nil {
			t.Fatal(err)
		}
		if again != id {
			t.Errorf("second build = %s, want the cached %s", again, id)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("cached build took %s", took)
		}
	})
	t.Run("ResolveTurnsTheTagIntoTheID", func(t *testing.T) {
		got, err := image.Resolve(ctx, cli, tag)
		if err != nil {
			t.Fatal(err)
		}
		if got != id {
			t.Errorf("Resolve(%s) = %s, want %s", tag, got, id)
		}
	})
	t.Run("ResolveKeepsAPinnedReference", func(t *testing.T) {
		got, err := image.Resolve(ctx, cli, id)
		if err != nil || got != id {
			t.Errorf("Resolve(%s) = %s, %v; want it unchanged", id, got, err)
		}
	})
	t.Run("ResolveOfAMissingImageSaysHowToBuildIt", func(t *testing.T) {
		_, err := image.Resolve(ctx, cli, "perimeter-no-such-image:nope")
		if err == nil || !strings.Contains(err.Error(), "perimeter image build") {
			t.Errorf("err = %v, want one that says to run perimeter image build", err)
		}
		_, err = image.Resolve(ctx, cli, "sha256:0000000000000000000000000000000000000000000000000000000000000000")
		if err == nil {
			t.Error("Resolve of an absent image ID succeeded")
		}
	})
}
