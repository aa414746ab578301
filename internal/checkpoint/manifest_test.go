package checkpoint

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestManifestRoundTripsAnyName(t *testing.T) {
	var ents []entry
	for c := 1; c < 256; c++ {
		if c == '/' || c == '.' {
			continue
		}
		ents = append(ents, entry{name: string([]byte{byte(c), 'x', 0xff}), kind: kindFile, mode: 0o4755, size: int64(c) << 40})
	}
	ents = append(ents,
		entry{name: strings.Repeat("n", maxName), kind: kindSymlink, mode: 0o777, target: "a\nb\xff/../c", size: 9},
		entry{name: "\xff\xfe", kind: kindDir, mode: 0o1777},
	)
	slices.SortFunc(ents, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	b := encodeManifest(nil, len(ents), func(i int) *entry { return &ents[i] })
	got, err := decodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ents, got, cmp.AllowUnexported(entry{})); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	for _, bad := range []entry{{name: ".."}, {name: "a/b"}, {name: "a\x00"}, {name: ""}} {
		bad.kind = kindFile
		b := encodeManifest(nil, 1, func(int) *entry { return &bad })
		if _, err := decodeManifest(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decoding name %q: %v, want ErrCorrupt", bad.name, err)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	ents := []entry{
		{name: "a", kind: kindFile, mode: 0o644, size: 3},
		{name: "b", kind: kindDir, mode: 0o755},
		{name: "c", kind: kindSymlink, mode: 0o777, target: "../x", size: 4},
	}
	f.Add(encodeManifest(nil, len(ents), func(i int) *entry { return &ents[i] }))
	f.Add([]byte(manifestMagic))
	f.Add([]byte(manifestMagic + "f\x80"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeManifest(b)
		if err != nil {
			return
		}
		// A manifest that decodes is canonical: it re-encodes to itself.
		again := encodeManifest(nil, len(got), func(i int) *entry { return &got[i] })
		if !bytes.Equal(again, b) {
			t.Fatalf("decoded %q, re-encoded %q", b, again)
		}
	})
}
