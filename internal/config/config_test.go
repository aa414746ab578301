package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestShippedExampleConfigParses(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	c, err := Load(filepath.Join(filepath.Dir(file), "..", "..", "examples", "perimeter.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Worker.ToolTimeout.D(0); got != 120*time.Second {
		t.Errorf("tool_timeout = %v, want 2m", got)
	}
	if len(c.CustomTools) != 1 || c.CustomTools[0].Name != "ticket_lookup" {
		t.Errorf("custom tools = %+v", c.CustomTools)
	}
}

func TestConfigErrorsSayWhatToFix(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"UnknownKey", "version: 1\nworker:\n  max_sesions: 3\n", "max_sesions"},
		{"WrongVersion", "version: 2\n", "version is 2"},
		{"MissingVersion", "worker: {}\n", "version is 0"},
		{"BadDuration", "version: 1\nworker:\n  max_idle: soon\n", "not a duration"},
		{"CustomToolWithoutCommand", "version: 1\ncustom_tools:\n  - name: x\n", `custom tool "x": command is required`},
		{"CustomToolWithoutName", "version: 1\ncustom_tools:\n  - command: true\n", "name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "test.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestEmptyConfigPathMeansDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil || c.Version != Version {
		t.Fatalf("Load(\"\") = %+v, %v", c, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: err = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
