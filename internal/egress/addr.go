package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Resolver looks up host names; *net.Resolver is one.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// nonPublic lists the address ranges a name may resolve to only under a
// rule with AllowPrivate: everything that reaches the supervisor itself, its
// networks, or addresses with a special meaning.
var nonPublic = []struct {
	prefix netip.Prefix
	kind   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "reserved"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use translation"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001::/23"), "reserved"}, // protocol assignments, Teredo among them
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// Prefixes of IPv6 addresses that carry an IPv4 address, which is what
// decides where a connection to them ends up.
var (
	nat64        = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour    = netip.MustParsePrefix("2002::/16")
	v4compat     = netip.MustParsePrefix("::/96")
	v4translated = netip.MustParsePrefix("::ffff:0:0:0/96") // SIIT (RFC 6145)
)

// nonPublicKind returns what kind of non-public address ip is ("loopback",
// "private" …), or "" for a public one.
func nonPublicKind(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip), v4translated.Contains(ip), v4compat.Contains(ip) && ip != netip.IPv6Unspecified() && ip != netip.IPv6Loopback():
			if k := nonPublicKind(netip.AddrFrom4([4]byte(b[12:16]))); k != "" {
				return k + " (embedded in IPv6)"
			}
		case sixToFour.Contains(ip):
			if k := nonPublicKind(netip.AddrFrom4([4]byte(b[2:6]))); k != "" {
				return k + " (embedded in IPv6)"
			}
		}
	}
	for _, n := range nonPublic {
		if n.prefix.Contains(ip) {
			return n.kind
		}
	}
	return ""
}

func article(word string) string {
	if word != "" && strings.ContainsRune("aeiou", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}

// refusal is an error that means the request is not allowed; its text is
// the reason shown to the sandbox.
type refusal struct{ reason string }

func (r *refusal) Error() string { return r.reason }

// dialUpstream connects to addr ("host:port") for the sandbox. It resolves
// names itself and connects to the address it checked, never letting a
// second lookup choose another: a name resolving to a non-public address is
// refused unless a rule for it has AllowPrivate. IP addresses are dialled as
// given; the rules allow them only when listed exactly.
func (p *Proxy) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", portText, err)
	}
	name, ip, err := normalizeHost(host)
	if err != nil {
		return nil, &refusal{fmt.Sprintf("host %q: %v", host, err)}
	}
	if ip.IsValid() {
		return p.dial(ctx, "tcp", net.JoinHostPort(ip.String(), portText))
	}
	addrs, err := p.resolver.LookupIPAddr(ctx, name)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, fmt.Errorf("host %s does not resolve", name)
		}
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	allowPrivate, ruleName := p.rules.allowPrivate(name, port)
	var refused string
	var lastErr error
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if kind := nonPublicKind(ip); kind != "" && !allowPrivate {
			if refused == "" {
				refused = fmt.Sprintf("host %s resolves to %s, %s address (set allow_private: true on rule %q to allow it)",
					name, ip, article(kind), ruleName)
			}
			continue
		}
		c, err := p.dial(ctx, "tcp", net.JoinHostPort(ip.String(), portText))
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	switch {
	case lastErr != nil:
		return nil, lastErr
	case refused != "":
		return nil, &refusal{refused}
	}
	return nil, fmt.Errorf("host %s has no address", name)
}
