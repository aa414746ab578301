package policy

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/perimeterhq/perimeter/internal/egress"
)

func TestParseEgressSection(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`version: 1
default: {decision: ask}
egress:
  intercept_all: true
  rules:
    - name: github api
      hosts: [api.github.com, "*.githubusercontent.com"]
      ports: [443]
      methods: [GET, POST]
      paths: [/repos/acme/]
    - name: internal mirror
      hosts: [mirror.internal]
      allow_private: true
  credentials:
    - secret: github
      env: GITHUB_TOKEN
      hosts: [api.github.com]
      in: [header, query]
    - secret: npm
      env: NPM_TOKEN
      hosts: [registry.npmjs.org]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := egress.Config{
		InterceptAll: true,
		Rules: []egress.Rule{
			{Name: "github api", Hosts: []string{"api.github.com", "*.githubusercontent.com"}, Ports: []int{443},
				Methods: []string{"GET", "POST"}, PathPrefixes: []string{"/repos/acme/"}},
			{Name: "internal mirror", Hosts: []string{"mirror.internal"}, AllowPrivate: true},
		},
		Credentials: []egress.EnvCredential{
			{Credential: egress.Credential{Name: "github", Hosts: []string{"api.github.com"}, In: []string{"header", "query"}}, Env: "GITHUB_TOKEN"},
			{Credential: egress.Credential{Name: "npm", Hosts: []string{"registry.npmjs.org"}}, Env: "NPM_TOKEN"},
		},
	}
	if diff := cmp.Diff(want, p.Egress()); diff != "" {
		t.Errorf("Egress() (-want +got):\n%s", diff)
	}
	if got := p.Secrets(); !cmp.Equal(got, []string{"github", "npm"}) {
		t.Errorf("Secrets() = %q", got)
	}
}

func TestPolicyWithoutEgressAllowsNothing(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: 1\ndefault: {decision: ask}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if e := p.Egress(); len(e.Rules) != 0 || len(e.Credentials) != 0 || e.InterceptAll {
		t.Errorf("Egress() = %+v, want nothing allowed", e)
	}
	if e := Default().Egress(); len(e.Rules) != 0 || len(e.Credentials) != 0 {
		t.Errorf("the default policy allows egress: %+v", e)
	}
}

func TestParseEgressErrors(t *testing.T) {
	const top = "version: 1\ndefault: {decision: ask}\negress:\n"
	tests := []struct {
		name, src string
		want      string // a line of the error, prefix
	}{
		{"unknown key", top + "  hosts: [x]\n", `p.yaml:4:3: egress: unknown key "hosts"`},
		{"not a mapping", top + "  - x\n", `p.yaml:4:3: egress must be a mapping`},
		{"rule without hosts", top + "  rules:\n    - name: a\n", `p.yaml:5:7: egress rule "a": missing hosts`},
		{"rule without name", top + "  rules:\n    - hosts: [a.com]\n", `p.yaml:5:7: egress rule 1: missing name`},
		{"host with a scheme", top + "  rules:\n    - name: a\n      hosts: [\"https://a.com\"]\n",
			`p.yaml:5:7: egress rule "a": host "https://a.com": want a host name`},
		{"bad wildcard", top + "  rules:\n    - name: a\n      hosts: [\"a.*.com\"]\n", `p.yaml:5:7: egress rule "a": host "a.*.com"`},
		{"bad port", top + "  rules:\n    - name: a\n      hosts: [a.com]\n      ports: [70000]\n", `p.yaml:7:15: egress rule "a": "70000" is not a port number`},
		{"ports not a list", top + "  rules:\n    - name: a\n      hosts: [a.com]\n      ports: 443\n", `p.yaml:7:14: egress rule "a": ports must be a list`},
		{"duplicate rule", top + "  rules:\n    - {name: a, hosts: [a.com]}\n    - {name: a, hosts: [b.com]}\n", `p.yaml:6:14: egress rule "a": duplicate name (first used at line 5)`},
		{"allow_private not bool", top + "  rules:\n    - {name: a, hosts: [a.com], allow_private: yes please}\n", `p.yaml:5:48: egress rule "a": allow_private must be true or false`},
		{"credential without env", top + "  credentials:\n    - {secret: gh, hosts: [a.com]}\n", `p.yaml:5:7: egress credential "gh": missing env`},
		{"credential env reserved", top + "  credentials:\n    - {secret: gh, env: HTTPS_PROXY, hosts: [a.com]}\n", `p.yaml:5:7: egress credential "gh": env HTTPS_PROXY is set by the egress proxy itself`},
		{"credential env invalid", top + "  credentials:\n    - {secret: gh, env: \"A-B\", hosts: [a.com]}\n", `p.yaml:5:7: egress credential "gh": env "A-B" is not a valid variable name`},
		{"credential bad place", top + "  credentials:\n    - {secret: gh, env: T, hosts: [a.com], in: [cookie]}\n", `p.yaml:5:7: egress credential "gh": in "cookie": want header, query or body`},
		{"credential bad secret name", top + "  credentials:\n    - {secret: \"a b\", env: T, hosts: [a.com]}\n", `p.yaml:5:7: egress credential "a b": a name has only letters`},
		{"two credentials one env", top + "  credentials:\n    - {secret: a, env: T, hosts: [a.com]}\n    - {secret: b, env: T, hosts: [b.com]}\n",
			`p.yaml:6:24: egress credential "b": env T is used by another credential (line 5)`},
		{"one secret twice", top + "  credentials:\n    - {secret: a, env: T, hosts: [a.com]}\n    - {secret: a, env: U, hosts: [b.com]}\n",
			`p.yaml:6:16: egress credential "a": the secret has another credential already (line 5)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			found := false
			for _, l := range errorLines(err) {
				found = found || strings.HasPrefix(l, tt.want)
			}
			if !found {
				t.Errorf("error:\n%v\nwant a line starting %q", err, tt.want)
			}
		})
	}
}
