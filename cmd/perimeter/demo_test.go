package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The demo's log file is written at --log-level and in --log-format, as
// every other command's log is.
func TestDemoLogsInTheLogFormatGiven(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state := filepath.Join(t.TempDir(), "demo")
	root := newRootCmd()
	root.SetOut(&bytes.Buffer{})
	// The demo gives up at once, after its control plane has logged that
	// it is ready.
	root.SetArgs([]string{"demo", "--log-format", "json", "--log-level", "debug", "--timeout", "1ns", "--state-dir", state})
	_ = root.ExecuteContext(ctx)
	f, err := os.Open(filepath.Join(state, "perimeter.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); lines++ {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
	}
	if lines == 0 {
		t.Error("the demo logged nothing")
	}
}

// A bad --log-level is refused before the demo creates anything.
func TestDemoRefusesABadLogLevelBeforeStarting(t *testing.T) {
	state := filepath.Join(t.TempDir(), "demo")
	root := newRootCmd()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"demo", "--log-level", "loud", "--timeout", "1ns", "--state-dir", state})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), `--log-level "loud"`) {
		t.Errorf("err = %v, want the --log-level refused", err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the state directory was created (%v): the demo started before refusing the flag", err)
	}
}
