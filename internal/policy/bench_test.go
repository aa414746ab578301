package policy

import (
	"encoding/json"
	"strings"
	"testing"
)

// BenchmarkEvaluate100Rules is one Evaluate of a call on the 100-rule
// Synthetic policy, cycling through SyntheticCalls. Target: ≤ 50 µs.
func BenchmarkEvaluate100Rules(b *testing.B) {
	benchmarkEvaluate(b, Synthetic(100))
}

// BenchmarkEvaluate1Rule is the baseline: a policy of one rule that allows
// every tool.
func BenchmarkEvaluate1Rule(b *testing.B) {
	benchmarkEvaluate(b, []byte("version: 1\ndefault: {decision: ask}\nrules:\n  - name: all\n    tools: [\"*\"]\n    decision: allow\n"))
}

func benchmarkEvaluate(b *testing.B, src []byte) {
	p, err := Parse("bench.yaml", src)
	if err != nil {
		b.Fatal(err)
	}
	calls := SyntheticCalls(1000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Evaluate(calls[i%len(calls)])
		i++
	}
}

// BenchmarkEvaluateLargeWrite is a write of 248 KB on the 100-rule
// policy: what decoding and scanning the input add grows with its size.
func BenchmarkEvaluateLargeWrite(b *testing.B) {
	p, err := Parse("bench.yaml", Synthetic(100))
	if err != nil {
		b.Fatal(err)
	}
	in, _ := json.Marshal(map[string]any{"file_path": "src/main.go", "content": strings.Repeat("package main // a line of code\n", 8000)})
	c := Call{Tool: "write", Input: in}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		p.Evaluate(c)
	}
}

// BenchmarkParse100Rules is loading the 100-rule policy: YAML and compiling
// about 60 CEL conditions.
func BenchmarkParse100Rules(b *testing.B) {
	src := Synthetic(100)
	for b.Loop() {
		if _, err := Parse("bench.yaml", src); err != nil {
			b.Fatal(err)
		}
	}
}
