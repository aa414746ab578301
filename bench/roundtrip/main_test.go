package main

import (
	"errors"
	"testing"
	"time"

	"github.com/perimeterhq/perimeter/internal/controlplane/scenario"
)

func TestWriteScenarioIsAValidScenarioOfNBashCalls(t *testing.T) {
	dir := t.TempDir()
	if err := writeScenario(dir, "bench_x", 3); err != nil {
		t.Fatal(err)
	}
	scs, err := scenario.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(scs) != 1 || scs[0].AgentID != "agent_bench_x" {
		t.Fatalf("loaded %+v", scs)
	}
	steps := scs[0].Steps
	if len(steps) != 4 || steps[3].Kind != scenario.KindEnd || steps[3].End != scenario.EndTerminate {
		t.Fatalf("steps = %+v, want 3 tool steps and end: terminate", steps)
	}
	for _, st := range steps[:3] {
		if st.Kind != scenario.KindTool || st.Tool != "bash" || st.Input["command"] != "true" {
			t.Errorf("step %+v, want bash {command: true}", st)
		}
	}
}

func TestMeasureSpansFirstToLastResult(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	evs := []event{
		{"agent.tool_use", at(1)},
		{"user.tool_result", at(50)},
		{"agent.tool_use", at(50)},
		{"user.tool_result", at(54)},
		{"agent.tool_use", at(54)},
		{"user.tool_result", at(60)},
		{"session.status_terminated", at(61)},
	}
	res, err := measure(evs, t0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if res.perCall != 5*time.Millisecond || res.firstResult != 50*time.Millisecond {
		t.Errorf("measure = %+v, want 5ms per call, first result after 50ms", res)
	}
	if _, err := measure(evs, t0, 4); !errors.Is(err, errScenarioFailed) {
		t.Errorf("a missing result: err = %v, want errScenarioFailed", err)
	}
}

func TestParseStatCountsFieldsFromTheLastParenthesis(t *testing.T) {
	line := "4242 (a) (b c) S 7 4242 4242 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 9 0 12345 1000000 300 18446744073709551615"
	st, err := parseStat(4242, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{pid: 4242, ppid: 7, rss: 300 * pageSize, cpu: 3 * time.Second, childCPU: 500 * time.Millisecond}
	if st != want {
		t.Errorf("parseStat = %+v, want %+v", st, want)
	}
}

func TestDescendantsSeparatesChildrenFromTheWholeTree(t *testing.T) {
	procs := []procStat{
		{pid: 1, ppid: 0, rss: 1000},
		{pid: 10, ppid: 1, rss: 100}, // the worker
		{pid: 11, ppid: 10, rss: 20}, // sandboxd
		{pid: 12, ppid: 10, rss: 30}, // sandboxd
		{pid: 13, ppid: 11, rss: 5},  // its shell
		{pid: 14, ppid: 13, rss: 1},  // and the shell's child
	}
	tr := descendants(10, procs)
	if len(tr.children) != 2 || tr.childrenRSS != 50 || len(tr.all) != 4 || tr.allRSS != 56 {
		t.Errorf("descendants = %+v", tr)
	}
}
