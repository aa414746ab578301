package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Rule allows egress to some hosts. A request is allowed when at least one
// rule matches its host and port and, where the rule lists them, its method
// and path; everything else is refused.
type Rule struct {
	// Name identifies the rule in refusals and records. Required and unique.
	Name string
	// Hosts are exact names ("api.github.com"), wildcards that match
	// subdomains only ("*.github.com" matches "api.github.com" and
	// "a.b.github.com", never "github.com"), or IP addresses. A request for a
	// raw IP address is allowed only by a rule that lists that address.
	// Required.
	Hosts []string
	// Ports the hosts may be reached on; empty means 443 and 80.
	Ports []int
	// Methods the rule allows ("GET"); empty means any. A rule with methods
	// or path prefixes makes the proxy terminate TLS to its hosts, since it
	// must see each request inside the tunnel.
	Methods []string
	// PathPrefixes the rule allows; empty means any path. A prefix matches
	// whole segments: "/repos" matches "/repos" and "/repos/x" but not
	// "/reposx"; "/repos/" matches "/repos/x" only. A request whose path is
	// not canonical (dot segments, "..;x" included, which servlet
	// containers read as "..", repeated slashes, backslashes) matches no
	// prefix.
	PathPrefixes []string
	// AllowPrivate lets the rule's host names resolve to loopback, private,
	// link-local and other non-public addresses. Without it the proxy
	// refuses to connect to such an address, so that a name the sandbox can
	// influence (DNS rebinding) cannot reach the supervisor's own network.
	// An IP address listed in Hosts needs no AllowPrivate: listing it is
	// the opt-in.
	AllowPrivate bool
}

// defaultPorts are the ports of a rule that lists none.
var defaultPorts = []int{443, 80}

// rule is a validated Rule.
type rule struct {
	name         string
	hosts        []hostPattern
	ports        []int
	methods      []string // upper case
	prefixes     []string
	allowPrivate bool
}

// hostPattern is one entry of Rule.Hosts or Credential.Hosts.
type hostPattern struct {
	name     string     // exact name, or the suffix (".github.com") of a wildcard
	wildcard bool       // matches names ending in name, which starts with "."
	ip       netip.Addr // valid for an IP address pattern
}

func parseHostPattern(s string) (hostPattern, error) {
	if s == "" {
		return hostPattern{}, errors.New("empty host")
	}
	if strings.ContainsAny(s, "/:@?# ") && !strings.HasPrefix(s, "[") {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
			return hostPattern{ip: ip.Unmap()}, nil
		}
		return hostPattern{}, fmt.Errorf("host %q: want a host name, *.domain or an IP address, without scheme, port or path", s)
	}
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		name, ip, err := normalizeHost(rest)
		if err != nil || ip.IsValid() {
			return hostPattern{}, fmt.Errorf("host %q: a wildcard is \"*.\" followed by a domain name", s)
		}
		return hostPattern{name: "." + name, wildcard: true}, nil
	}
	if strings.Contains(s, "*") {
		return hostPattern{}, fmt.Errorf("host %q: a wildcard may only be a leading \"*.\"", s)
	}
	name, ip, err := normalizeHost(s)
	if err != nil {
		return hostPattern{}, fmt.Errorf("host %q: %w", s, err)
	}
	if ip.IsValid() {
		return hostPattern{ip: ip}, nil
	}
	return hostPattern{name: name}, nil
}

func (h hostPattern) String() string {
	switch {
	case h.ip.IsValid():
		return h.ip.String()
	case h.wildcard:
		return "*" + h.name
	}
	return h.name
}

// match reports whether a normalized host (see normalizeHost) matches.
func (h hostPattern) match(name string, ip netip.Addr) bool {
	switch {
	case ip.IsValid() || h.ip.IsValid():
		return ip.IsValid() && h.ip == ip
	case h.wildcard:
		return len(name) > len(h.name) && strings.HasSuffix(name, h.name)
	}
	return name == h.name
}

// matched is the entry of r's hosts that a normalized host matches, an
// exact one rather than a wildcard when both do; "" when none does.
func (r *rule) matched(name string, ip netip.Addr) string {
	found := ""
	for _, h := range r.hosts {
		if !h.match(name, ip) {
			continue
		}
		if !h.wildcard {
			return h.String()
		}
		if found == "" {
			found = h.String()
		}
	}
	return found
}

func matchAny(patterns []hostPattern, name string, ip netip.Addr) bool {
	return slices.ContainsFunc(patterns, func(h hostPattern) bool { return h.match(name, ip) })
}

// normalizeHost returns the canonical form of a host: lower case, without a
// trailing dot or IPv6 brackets; an IP address (IPv4-mapped IPv6 as IPv4) is
// also returned parsed. Anything that is neither a DNS name nor an IP address
// is an error, including numeric forms that only some resolvers read as
// addresses ("127.1", "2130706433").
func normalizeHost(h string) (string, netip.Addr, error) {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		ip, err := netip.ParseAddr(h[1 : len(h)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", netip.Addr{}, errors.New("not a valid IPv6 address")
		}
		ip = ip.Unmap()
		return ip.String(), ip, nil
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return "", netip.Addr{}, errors.New("an IPv6 zone is not allowed")
		}
		ip = ip.Unmap()
		return ip.String(), ip, nil
	}
	if h == "" || len(h) > 253 {
		return "", netip.Addr{}, errors.New("not a valid host name")
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", netip.Addr{}, errors.New("not a valid host name")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", netip.Addr{}, errors.New("not a valid host name")
			}
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") {
		return "", netip.Addr{}, errors.New("not a valid host name or IP address")
	}
	return h, netip.Addr{}, nil
}

// ruleSet is the validated rules of a Proxy, in the order given.
type ruleSet []*rule

func compileRules(rules []Rule) (ruleSet, error) {
	var rs ruleSet
	names := make(map[string]bool)
	for i, r := range rules {
		if r.Name == "" {
			return nil, fmt.Errorf("egress rule %d: a name is required", i+1)
		}
		where := fmt.Sprintf("egress rule %d (%q)", i+1, r.Name)
		if names[r.Name] {
			return nil, fmt.Errorf("%s: another rule has the same name", where)
		}
		names[r.Name] = true
		c, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		rs = append(rs, c)
	}
	return rs, nil
}

// compileRule validates one rule on its own; errors do not name it.
func compileRule(r Rule) (*rule, error) {
	if len(r.Hosts) == 0 {
		return nil, errors.New("at least one host is required")
	}
	c := &rule{name: r.Name, allowPrivate: r.AllowPrivate}
	for _, h := range r.Hosts {
		p, err := parseHostPattern(h)
		if err != nil {
			return nil, err
		}
		c.hosts = append(c.hosts, p)
	}
	c.ports = slices.Clone(r.Ports)
	if len(c.ports) == 0 {
		c.ports = slices.Clone(defaultPorts)
	}
	for _, port := range c.ports {
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("port %d is out of range", port)
		}
	}
	for _, m := range r.Methods {
		if m == "" || strings.ContainsFunc(m, func(c rune) bool { return !isTokenChar(c) }) {
			return nil, fmt.Errorf("method %q is not an HTTP method", m)
		}
		c.methods = append(c.methods, strings.ToUpper(m))
	}
	for _, p := range r.PathPrefixes {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("path prefix %q must start with /", p)
		}
		if !canonicalPath(p) {
			return nil, fmt.Errorf("path prefix %q is not canonical (dot segments, repeated slashes)", p)
		}
		c.prefixes = append(c.prefixes, p)
	}
	return c, nil
}

func isTokenChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)
}

// unrestricted reports whether the rule allows every method and path.
func (r *rule) unrestricted() bool { return len(r.methods) == 0 && len(r.prefixes) == 0 }

func (r *rule) allowsMethod(m string) bool {
	return len(r.methods) == 0 || slices.Contains(r.methods, m)
}

func (r *rule) allowsPath(p string) bool {
	if len(r.prefixes) == 0 {
		return true
	}
	if !canonicalPath(p) {
		return false
	}
	for _, pre := range r.prefixes {
		if p == pre || strings.HasPrefix(p, pre) && (strings.HasSuffix(pre, "/") || p[len(pre)] == '/') {
			return true
		}
	}
	return false
}

// canonicalPath reports whether p is an absolute path that every server
// reads the same way: no dot segments (with or without ";parameters"),
// empty segments or backslashes.
func canonicalPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.Contains(p, `\`) {
		return false
	}
	// A dot segment with parameters ("..;x", "..;") is an ordinary segment
	// to path.Clean, but servers that strip each segment's parameters
	// (servlet containers among them) resolve it as "..".
	for seg := range strings.SplitSeq(p, "/") {
		if name, _, ok := strings.Cut(seg, ";"); ok && (name == "." || name == "..") {
			return false
		}
	}
	c := path.Clean(p)
	return c == p || c+"/" == p
}

// decision is what the rules say about a request.
type decision struct {
	// rule is the rule that allowed the request, or the one whose methods
	// or paths refused it; "" when no rule matched the host.
	rule string
	// host is the entry of that rule's hosts the host matched.
	host string
	// reason says why the request is refused and what to change; "" means
	// it is allowed.
	reason string
	// inspect is set, for a host-level check, when no rule that matches
	// the host and port allows every method and path: the proxy must see
	// the requests inside a tunnel to check them.
	inspect bool
}

// checkHost decides a CONNECT: the host and port only.
func (rs ruleSet) checkHost(name string, ip netip.Addr, port int) decision {
	matched, d := rs.match(name, ip, port)
	if d.reason != "" {
		return d
	}
	for _, r := range matched {
		if r.unrestricted() {
			return r.decide("")
		}
	}
	d = matched[0].decide("")
	d.inspect = true
	return d
}

// checkRequest decides one HTTP request.
func (rs ruleSet) checkRequest(name string, ip netip.Addr, port int, method, p string) decision {
	matched, d := rs.match(name, ip, port)
	if d.reason != "" {
		return d
	}
	for _, r := range matched {
		if r.allowsMethod(method) && r.allowsPath(p) {
			return r.decide("")
		}
	}
	r := matched[0]
	if !r.allowsMethod(method) {
		return r.decide(fmt.Sprintf("rule %q allows %s only (add %s to its methods to allow this)",
			r.name, strings.Join(r.methods, ", "), method))
	}
	if !canonicalPath(p) {
		return r.decide(fmt.Sprintf("rule %q allows some paths only, and the path %q is not canonical (dot segments, repeated slashes or backslashes)",
			r.name, p))
	}
	return r.decide(fmt.Sprintf("rule %q allows paths %s only (add a prefix of %s to its path prefixes to allow this)",
		r.name, strings.Join(r.prefixes, ", "), p))
}

// ruleMatch is a rule whose hosts match a request's host, with the entry
// of its hosts that matched.
type ruleMatch struct {
	*rule
	host string
}

// decide is the rule's decision: allowed when reason is "".
func (m ruleMatch) decide(reason string) decision {
	return decision{rule: m.name, host: m.host, reason: reason}
}

// match returns the rules that match the host and port, or a refusal.
func (rs ruleSet) match(name string, ip netip.Addr, port int) ([]ruleMatch, decision) {
	var byHost []ruleMatch
	for _, r := range rs {
		if h := r.matched(name, ip); h != "" {
			byHost = append(byHost, ruleMatch{r, h})
		}
	}
	if len(byHost) == 0 {
		if ip.IsValid() {
			return nil, decision{reason: fmt.Sprintf("%s is an IP address, and no egress rule lists it (use the host name, or add the address under egress.allow in the policy)", name)}
		}
		return nil, decision{reason: fmt.Sprintf("no egress rule allows host %s (add it under egress.allow in the policy)", name)}
	}
	var matched []ruleMatch
	for _, r := range byHost {
		if slices.Contains(r.ports, port) {
			matched = append(matched, r)
		}
	}
	if len(matched) == 0 {
		r := byHost[0]
		ports := make([]string, len(r.ports))
		for i, p := range r.ports {
			ports[i] = strconv.Itoa(p)
		}
		return nil, r.decide(fmt.Sprintf("rule %q allows host %s on ports %s only (add %d to its ports to allow this)",
			r.name, name, strings.Join(ports, ", "), port))
	}
	return matched, decision{}
}

// allowPrivate reports whether a rule that matches the host and port lets
// its name resolve to a non-public address, and names the first matching
// rule for a refusal's hint. It depends on the host and port only, so that
// a pooled upstream connection is valid for every request to them.
func (rs ruleSet) allowPrivate(name string, port int) (bool, string) {
	first := ""
	for _, r := range rs {
		if !matchAny(r.hosts, name, netip.Addr{}) || !slices.Contains(r.ports, port) {
			continue
		}
		if r.allowPrivate {
			return true, r.name
		}
		if first == "" {
			first = r.name
		}
	}
	return false, first
}
