package policy

import (
	"fmt"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/perimeterhq/perimeter/internal/egress"
)

// Keys of the egress section.
var (
	egressKeys     = []string{"rules", "credentials", "intercept_all"}
	egressRuleKeys = []string{"name", "hosts", "ports", "methods", "paths", "allow_private"}
	egressCredKeys = []string{"secret", "env", "hosts", "in"}
)

// Egress returns what sessions may reach through their egress proxy. A
// policy without an egress section allows nothing.
func (p *Policy) Egress() egress.Config { return p.egress }

// Secrets returns the names of the secrets the egress credentials use,
// sorted, to be checked against the worker's configured secrets.
func (p *Policy) Secrets() []string {
	names := make([]string, len(p.egress.Credentials))
	for i, c := range p.egress.Credentials {
		names[i] = c.Name
	}
	slices.Sort(names)
	return names
}

// egressSection parses
//
//	egress:
//	  rules:
//	    - name: github api
//	      hosts: [api.github.com]
//	      ports: [443]              # default 443 and 80
//	      methods: [GET, POST]      # default any
//	      paths: [/repos/acme/]     # default any
//	      allow_private: false
//	  credentials:
//	    - secret: github            # a name under secrets: in the worker config
//	      env: GITHUB_TOKEN         # the sandbox sees a placeholder there
//	      hosts: [api.github.com]
//	      in: [header]              # header, query, body
//	  intercept_all: false
func (ps *parser) egressSection(f field, p *Policy) {
	if f.val.Kind == yaml.ScalarNode && f.val.Tag == "!!null" {
		return
	}
	if f.val.Kind != yaml.MappingNode {
		ps.errorf(f.val, "egress must be a mapping with rules and credentials")
		return
	}
	ef := ps.fields(f.val, "egress", egressKeys)
	if fl, ok := ef["intercept_all"]; ok {
		ps.boolean(fl, "egress", &p.egress.InterceptAll)
	}
	names := map[string]int{}
	for i, n := range ps.list(ef, "rules", "egress") {
		if r, ok := ps.egressRule(n, i+1, names); ok {
			p.egress.Rules = append(p.egress.Rules, r)
		}
	}
	secrets, envs := map[string]int{}, map[string]int{}
	for i, n := range ps.list(ef, "credentials", "egress") {
		if c, ok := ps.egressCredential(n, i+1, secrets, envs); ok {
			p.egress.Credentials = append(p.egress.Credentials, c)
		}
	}
}

// list returns the mappings of the list under key, if any.
func (ps *parser) list(f map[string]field, key, what string) []*yaml.Node {
	fl, ok := f[key]
	if !ok || fl.val.Kind == yaml.ScalarNode && fl.val.Tag == "!!null" {
		return nil
	}
	if fl.val.Kind != yaml.SequenceNode {
		ps.errorf(fl.val, "%s: %s must be a list", what, key)
		return nil
	}
	var out []*yaml.Node
	for i, n := range fl.val.Content {
		n = deref(n)
		if n.Kind != yaml.MappingNode {
			ps.errorf(n, "%s: %s entry %d must be a mapping", what, key, i+1)
			continue
		}
		out = append(out, n)
	}
	return out
}

func (ps *parser) boolean(f field, what string, dst *bool) {
	if f.val.Kind != yaml.ScalarNode || f.val.Tag != "!!bool" || f.val.Decode(dst) != nil {
		ps.errorf(f.val, "%s: %s must be true or false", what, f.key.Value)
	}
}

// strings returns a list of non-empty strings as values.
func (ps *parser) strings(f field, what string) []string {
	items, _ := ps.strList(f, what)
	out := make([]string, len(items))
	for i, n := range items {
		out[i] = n.Value
	}
	return out
}

// unique returns the string under key in the mapping n (fields f), which
// is required and must not repeat across the entries seen so far (value →
// line). dupFormat says what a repeat means, given the value (%[1]s) and
// the line it was first used on (%[2]d).
func (ps *parser) unique(n *yaml.Node, f map[string]field, key, what, missing, dupFormat string, seen map[string]int) string {
	fl, ok := f[key]
	if !ok {
		ps.errorf(n, "%s: %s", what, missing)
		return ""
	}
	v, ok := ps.str(fl, what)
	if !ok {
		return ""
	}
	if line, dup := seen[v]; dup {
		ps.errorf(fl.val, "%s: %s", what, fmt.Sprintf(dupFormat, v, line))
	} else {
		seen[v] = fl.val.Line
	}
	return v
}

// nameOf is the value of key in mapping n, if it is a non-empty string.
func nameOf(n *yaml.Node, key string) string {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := deref(n.Content[i]), deref(n.Content[i+1]); k.Value == key && v.Kind == yaml.ScalarNode {
			return v.Value
		}
	}
	return ""
}

func (ps *parser) egressRule(n *yaml.Node, index int, names map[string]int) (egress.Rule, bool) {
	before := len(ps.errs)
	what := fmt.Sprintf("egress rule %d", index)
	if name := nameOf(n, "name"); name != "" {
		what = fmt.Sprintf("egress rule %q", name)
	}
	f := ps.fields(n, what, egressRuleKeys)
	var r egress.Rule
	if nf, ok := f["name"]; !ok {
		ps.errorf(n, "%s: missing name", what)
	} else if name, ok := ps.str(nf, what); ok {
		if line, dup := names[name]; dup {
			ps.errorf(nf.val, "%s: duplicate name (first used at line %d)", what, line)
		}
		names[name] = nf.val.Line
		r.Name = name
	}
	if hf, ok := f["hosts"]; !ok {
		ps.errorf(n, "%s: missing hosts (names, *.domain wildcards or IP addresses)", what)
	} else {
		r.Hosts = ps.strings(hf, what)
	}
	if pf, ok := f["ports"]; ok {
		if pf.val.Kind != yaml.SequenceNode {
			ps.errorf(pf.val, "%s: ports must be a list of port numbers", what)
			pf.val = &yaml.Node{}
		}
		for _, pn := range pf.val.Content {
			pn = deref(pn)
			port, err := strconv.Atoi(pn.Value)
			if pn.Kind != yaml.ScalarNode || pn.Tag != "!!int" || err != nil || port < 1 || port > 65535 {
				ps.errorf(pn, "%s: %q is not a port number (1-65535)", what, pn.Value)
				continue
			}
			r.Ports = append(r.Ports, port)
		}
	}
	if mf, ok := f["methods"]; ok {
		r.Methods = ps.strings(mf, what)
	}
	if pf, ok := f["paths"]; ok {
		r.PathPrefixes = ps.strings(pf, what)
	}
	if af, ok := f["allow_private"]; ok {
		ps.boolean(af, what, &r.AllowPrivate)
	}
	if len(ps.errs) == before {
		if err := egress.CheckRule(r); err != nil {
			ps.errorf(n, "%s: %v", what, err)
		}
	}
	return r, len(ps.errs) == before
}

func (ps *parser) egressCredential(n *yaml.Node, index int, secrets, envs map[string]int) (egress.EnvCredential, bool) {
	before := len(ps.errs)
	what := fmt.Sprintf("egress credential %d", index)
	if name := nameOf(n, "secret"); name != "" {
		what = fmt.Sprintf("egress credential %q", name)
	}
	f := ps.fields(n, what, egressCredKeys)
	c := egress.EnvCredential{Env: ps.unique(n, f, "env", what,
		"missing env (the variable that holds the placeholder in the sandbox)",
		"env %[1]s is used by another credential (line %[2]d)", envs)}
	c.Name = ps.unique(n, f, "secret", what,
		"missing secret (the name of a secret configured under secrets: in the worker config)",
		"the secret has another credential already (line %[2]d)", secrets)
	if hf, ok := f["hosts"]; !ok {
		ps.errorf(n, "%s: missing hosts (where the value may be sent)", what)
	} else {
		c.Hosts = ps.strings(hf, what)
	}
	if inf, ok := f["in"]; ok {
		c.In = ps.strings(inf, what)
	}
	if len(ps.errs) == before {
		if err := egress.CheckCredential(c); err != nil {
			ps.errorf(n, "%s: %v", what, err)
		}
	}
	return c, len(ps.errs) == before
}
