package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestHostPatternsMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		host    string
		want    bool
	}{
		{"api.github.com", "api.github.com", true},
		{"api.github.com", "API.GitHub.com.", true},
		{"api.github.com", "github.com", false},
		{"api.github.com", "x.api.github.com", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"*.github.com", "github.com.evil.com", false},
		{"10.0.0.5", "10.0.0.5", true},
		{"10.0.0.5", "::ffff:10.0.0.5", true},
		{"10.0.0.5", "10.0.0.6", false},
		{"::1", "[::1]", true},
		{"*.github.com", "1.2.3.4", false},
	} {
		p, err := parseHostPattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		name, ip, err := normalizeHost(tc.host)
		if err != nil {
			t.Fatalf("%s: %v", tc.host, err)
		}
		if got := p.match(name, ip); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.host, got, tc.want)
		}
	}
}

func TestHostPatternsRejectMalformed(t *testing.T) {
	for _, s := range []string{"", "*", "*.", "a.*.com", "api.github.com:443", "https://api.github.com", "api.github.com/x", "127.1", "a..b", "fe80::1%eth0", "*.1.2.3.4"} {
		if _, err := parseHostPattern(s); err == nil {
			t.Errorf("%q: accepted", s)
		}
	}
}

func TestCompileRulesExplainsMistakes(t *testing.T) {
	for _, tc := range []struct {
		rules []Rule
		want  string
	}{
		{[]Rule{{Hosts: []string{"a.com"}}}, "a name is required"},
		{[]Rule{{Name: "a"}}, "at least one host"},
		{[]Rule{{Name: "a", Hosts: []string{"a.com"}}, {Name: "a", Hosts: []string{"b.com"}}}, "same name"},
		{[]Rule{{Name: "a", Hosts: []string{"a.com"}, Ports: []int{0}}}, "port 0 is out of range"},
		{[]Rule{{Name: "a", Hosts: []string{"a.com"}, Methods: []string{"G T"}}}, "not an HTTP method"},
		{[]Rule{{Name: "a", Hosts: []string{"a.com"}, PathPrefixes: []string{"repos"}}}, "must start with /"},
		{[]Rule{{Name: "a", Hosts: []string{"a.com"}, PathPrefixes: []string{"/a/../b"}}}, "not canonical"},
	} {
		_, err := NewProxy(Options{Rules: tc.rules})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.rules, err, tc.want)
		}
	}
}

func TestRulesDecide(t *testing.T) {
	rs, err := compileRules([]Rule{
		{Name: "github-read", Hosts: []string{"api.github.com"}, Methods: []string{"GET"}, PathPrefixes: []string{"/repos/"}},
		{Name: "github-issues", Hosts: []string{"api.github.com"}, Methods: []string{"POST"}, PathPrefixes: []string{"/repos/o/r/issues"}},
		{Name: "pypi", Hosts: []string{"pypi.org", "*.pythonhosted.org"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host, method, path string
		port               int
		rule, reason       string
	}{
		{"api.github.com", "GET", "/repos/o/r", 443, "github-read", ""},
		{"api.github.com", "POST", "/repos/o/r/issues", 443, "github-issues", ""},
		{"api.github.com", "POST", "/repos/o/r/issues/1/comments", 443, "github-issues", ""},
		{"api.github.com", "POST", "/repos/o/r/pulls", 443, "github-read", `rule "github-read" allows GET only`},
		{"api.github.com", "GET", "/user", 443, "github-read", `rule "github-read" allows paths /repos/ only`},
		{"api.github.com", "GET", "/repos/o/r", 22, "github-read", `allows host api.github.com on ports 443, 80 only (add 22 to its ports`},
		{"files.pythonhosted.org", "PUT", "/anything", 80, "pypi", ""},
		{"pythonhosted.org", "GET", "/", 443, "", "no egress rule allows host pythonhosted.org (add it under egress.allow in the policy)"},
	} {
		name, ip, _ := normalizeHost(tc.host)
		d := rs.checkRequest(name, ip, tc.port, tc.method, tc.path)
		if d.rule != tc.rule || !strings.Contains(d.reason, tc.reason) || (tc.reason == "") != (d.reason == "") {
			t.Errorf("%s %s:%d%s: got %+v, want rule %q reason %q", tc.method, tc.host, tc.port, tc.path, d, tc.rule, tc.reason)
		}
	}
	if d := rs.checkHost("api.github.com", netip.Addr{}, 443); d.reason != "" || !d.inspect {
		t.Errorf("CONNECT to a host with method rules: %+v, want allowed and inspected", d)
	}
	if d := rs.checkHost("pypi.org", netip.Addr{}, 443); d.reason != "" || d.inspect {
		t.Errorf("CONNECT to an unrestricted host: %+v, want allowed, not inspected", d)
	}
}

// A decision names the entry of the rule's hosts that matched, so that a
// host under a wildcard can be counted under the wildcard; an exact entry
// wins over a wildcard that also matches.
func TestRulesNameTheHostEntryTheyMatched(t *testing.T) {
	rs, err := compileRules([]Rule{
		{Name: "github", Hosts: []string{"*.github.com", "api.github.com"}, Methods: []string{"GET"}},
		{Name: "pypi", Hosts: []string{"pypi.org", "*.pythonhosted.org"}},
		{Name: "local", Hosts: []string{"10.0.0.1"}, Ports: []int{8080}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host, method string
		port         int
		want         string
	}{
		{"pypi.org", "GET", 443, "pypi.org"},
		{"files.pythonhosted.org", "GET", 443, "*.pythonhosted.org"},
		{"a.b.pythonhosted.org", "GET", 443, "*.pythonhosted.org"},
		{"API.GitHub.com.", "GET", 443, "api.github.com"},
		{"made-up.github.com", "GET", 443, "*.github.com"},
		{"made-up.github.com", "POST", 443, "*.github.com"}, // refused by the rule's methods
		{"made-up.github.com", "GET", 22, "*.github.com"},   // refused by the rule's ports
		{"10.0.0.1", "GET", 8080, "10.0.0.1"},
		{"pythonhosted.org", "GET", 443, ""},
	} {
		name, ip, err := normalizeHost(tc.host)
		if err != nil {
			t.Fatal(err)
		}
		if d := rs.checkRequest(name, ip, tc.port, tc.method, "/"); d.host != tc.want {
			t.Errorf("%s %s:%d: matched %q (%+v), want %q", tc.method, tc.host, tc.port, d.host, d, tc.want)
		}
		if tc.method == "GET" {
			if d := rs.checkHost(name, ip, tc.port); d.host != tc.want {
				t.Errorf("CONNECT %s:%d: matched %q (%+v), want %q", tc.host, tc.port, d.host, d, tc.want)
			}
		}
	}
}

func TestNonPublicAddresses(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1":            "loopback",
		"10.1.2.3":             "private",
		"172.16.0.1":           "private",
		"192.168.1.1":          "private",
		"169.254.169.254":      "link-local",
		"100.100.100.200":      "carrier-grade NAT",
		"0.0.0.0":              "unspecified",
		"::":                   "unspecified",
		"::1":                  "loopback",
		"fd00::1":              "private",
		"fe80::1":              "link-local",
		"::ffff:127.0.0.1":     "loopback",
		"64:ff9b::7f00:1":      "loopback (embedded in IPv6)",
		"2002:a9fe:a9fe::1":    "link-local (embedded in IPv6)",
		"::ffff:0:a00:1":       "private (embedded in IPv6)",
		"64:ff9b:1::a00:1":     "local-use translation",
		"100::1":               "discard-only",
		"2001:0:4136:e378::1":  "reserved",
		"2001:db8::1":          "documentation",
		"64:ff9b::808:808":     "",
		"8.8.8.8":              "",
		"2606:4700:4700::1111": "",
	} {
		if got := nonPublicKind(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
}
