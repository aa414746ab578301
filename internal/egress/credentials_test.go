package egress

import (
	"encoding/base64"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestNewPlaceholderIsOpaqueAndUnique(t *testing.T) {
	a, b := NewPlaceholder("github"), NewPlaceholder("github")
	if !regexp.MustCompile(`^perimeter-secret:github:[0-9a-f]{32}$`).MatchString(a) {
		t.Errorf("placeholder = %q", a)
	}
	if a == b {
		t.Error("two placeholders are equal")
	}
}

func TestCompileCredentialsExplainsMistakes(t *testing.T) {
	ph := NewPlaceholder("x")
	for _, tc := range []struct {
		creds []Credential
		want  string
	}{
		{[]Credential{{Placeholder: ph, Hosts: []string{"a.com"}}}, "a name is required"},
		{[]Credential{{Name: "a b", Placeholder: ph, Hosts: []string{"a.com"}}}, "only letters"},
		{[]Credential{{Name: "a", Placeholder: "short", Hosts: []string{"a.com"}}}, "at least 16"},
		{[]Credential{{Name: "a", Placeholder: ph}}, "at least one host"},
		{[]Credential{{Name: "a", Placeholder: ph, Hosts: []string{"a.com"}, In: []string{"cookie"}}}, `in "cookie"`},
		{[]Credential{{Name: "a", Placeholder: ph, Hosts: []string{"a.com"}}, {Name: "b", Placeholder: ph + "x", Hosts: []string{"a.com"}}}, "overlaps"},
	} {
		_, err := NewProxy(Options{Credentials: tc.creds, Secrets: &staticSecrets{}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.creds, err, tc.want)
		}
	}
	if _, err := NewProxy(Options{Credentials: []Credential{{Name: "a", Placeholder: ph, Hosts: []string{"a.com"}}}}); err == nil {
		t.Error("credentials without Secrets: accepted")
	}
}

func TestSubstituteHeaders(t *testing.T) {
	const ph, value = "PH-0123456789abcdef", "v@lue:1"
	h := http.Header{
		"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+ph))},
		"X-Api-Key":     {ph},
		"X-Other":       {"untouched"},
	}
	n, err := substituteHeaders(h, ph, []byte(value))
	if err != nil || n != 2 {
		t.Fatalf("n = %d, err = %v", n, err)
	}
	if dec, _ := decodeBasic(h.Get("Authorization")); dec != "user:"+value {
		t.Errorf("Basic = %q", dec)
	}
	if h.Get("X-Api-Key") != value || h.Get("X-Other") != "untouched" {
		t.Errorf("headers = %v", h)
	}
	if _, err := substituteHeaders(http.Header{"X": {ph}}, ph, []byte("a\r\nInjected: 1")); err == nil {
		t.Error("a value with a line break went into a header")
	}
}

func TestSubstituteFormKeepsTheRestAsSent(t *testing.T) {
	const ph = "perimeter-secret:x:00"
	for _, tc := range []struct{ in, want string }{
		{"a=1&t=" + ph + "&b=%2F", "a=1&t=v%2B1%26&b=%2F"},
		{"t=perimeter-secret%3Ax%3A00", "t=v%2B1%26"},
		{"t=perimeter-secret%3ax%3a00", "t=v%2B1%26"},
		{"nothing=here&x", "nothing=here&x"},
	} {
		got, _ := substituteForm(tc.in, ph, []byte("v+1&"))
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSubstituteBodyEscapesForItsType(t *testing.T) {
	const ph = "PH-0123456789abcdef"
	value := []byte(`a"b\c+&`)
	for _, tc := range []struct{ ct, in, want string }{
		{"application/json", `{"k":"` + ph + `"}`, `{"k":"a\"b\\c+&"}`},
		{"application/vnd.api+json; charset=utf-8", `["` + ph + `"]`, `["a\"b\\c+&"]`},
		{"application/x-www-form-urlencoded", "k=" + ph, "k=a%22b%5Cc%2B%26"},
		{"text/plain", "k=" + ph, `k=a"b\c+&`},
	} {
		got, n, err := substituteBody([]byte(tc.in), tc.ct, ph, value)
		if err != nil || n != 1 || string(got) != tc.want {
			t.Errorf("%s: got %q (%d, %v), want %q", tc.ct, got, n, err, tc.want)
		}
	}
	if _, _, err := substituteBody([]byte(`"`+ph+`"`), "application/json", ph, []byte{0xff}); err == nil {
		t.Error("a non-UTF-8 value went into JSON")
	}
}

// escapings gives every mix of raw and escaped bytes, in either case of
// hex, each decoding to the input; past maxEscapable such bytes only the
// whole forms.
func TestEscapingsCoversEveryMix(t *testing.T) {
	forms := escapings("ps:gh:1")
	want := []string{
		"ps:gh:1", "ps:gh%3A1", "ps:gh%3a1",
		"ps%3Agh:1", "ps%3Agh%3A1", "ps%3Agh%3a1",
		"ps%3agh:1", "ps%3agh%3A1", "ps%3agh%3a1",
	}
	if !slices.Equal(forms, want) {
		t.Errorf("escapings = %q, want %q", forms, want)
	}
	many := escapings("a:b:c:d:e:f")
	if len(many) != 3 || many[0] != "a:b:c:d:e:f" || many[1] != "a%3Ab%3Ac%3Ad%3Ae%3Af" || many[2] != "a%3ab%3ac%3ad%3ae%3af" {
		t.Errorf("past the bound: %q", many)
	}
}
