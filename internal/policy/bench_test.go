package policy

import "testing"

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
