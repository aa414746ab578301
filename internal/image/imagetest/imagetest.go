// Package imagetest gives tests the local Docker engine and the default
// sandbox image, built at most once per test process. The image is cached
// by its recipe label in the engine, so only the first run on a machine
// pays for debootstrap (a minute or two); later runs find it in a second.
//
// Without an engine, or without root and debootstrap when the image still
// has to be built, tests skip with the reason (fail with
// PERIMETER_TEST_STRICT=1).
package imagetest

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/perimeterhq/perimeter/internal/image"
	"github.com/perimeterhq/perimeter/internal/testenv"
)

// NeedEngine is what tests report when there is no engine.
const NeedEngine = "a Docker engine (run scripts/test-deps.sh as root)"

var (
	engineOnce sync.Once
	engineCli  *client.Client
	engineErr  error

	imageOnce sync.Once
	imageID   string
	imageErr  error
	imageLog  testenv.Buffer
	imageTook time.Duration
)

// Engine returns a client for the local engine, shared by the test
// process, or skips t.
func Engine(t testing.TB) *client.Client {
	t.Helper()
	engineOnce.Do(func() {
		cli, err := image.NewClient()
		if err != nil {
			engineErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Ping(ctx); err != nil {
			cli.Close()
			engineErr = err
			return
		}
		engineCli = cli
	})
	if engineErr != nil {
		t.Logf("docker engine: %v", engineErr)
	}
	testenv.Need(t, engineErr == nil, NeedEngine)
	return engineCli
}

// Image returns the ID of the default sandbox image, building it if the
// engine has none of its recipe.
func Image(t testing.TB) string {
	t.Helper()
	cli := Engine(t)
	imageOnce.Do(func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		imageID, imageErr = image.Build(ctx, image.Options{
			Client: cli,
			Logger: slog.New(slog.NewTextHandler(&imageLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		imageTook = time.Since(start)
	})
	if imageErr != nil && !canBuild() {
		t.Logf("sandbox image: %v", imageErr)
		testenv.Need(t, false, "the sandbox image, which needs root and debootstrap to build (run scripts/test-deps.sh as root)")
	}
	if imageErr != nil {
		t.Fatalf("build the sandbox image: %v\nbuild log:\n%s", imageErr, imageLog.String())
	}
	t.Logf("sandbox image %s (obtained in %s)", imageID, imageTook.Round(time.Millisecond))
	return imageID
}

func canBuild() bool {
	_, err := exec.LookPath("debootstrap")
	return os.Geteuid() == 0 && err == nil
}
