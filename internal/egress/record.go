package egress

import "time"

// Record describes one request the sandbox made through the proxy: an HTTP
// request (sent as plain HTTP, or inside an intercepted CONNECT tunnel), or
// a CONNECT tunnel that the proxy refused or passed through untouched. It
// holds ids, decisions and sizes, never a secret value: Path is the path
// the sandbox sent (without the query), and Secrets names the credentials
// substituted.
type Record struct {
	SessionID string
	// ToolUseID is the tool call that was running (Options.CurrentCall).
	ToolUseID string
	Method    string // "CONNECT" for a tunnel
	Host      string
	Port      int
	Path      string // "" for a tunnel
	// Rule is the rule that allowed the request, or whose methods, paths
	// or ports refused it; "" when no rule matched the host.
	Rule string
	// HostPattern is the entry of that rule's hosts that Host matched: Host
	// itself for an exact name or address, "*.example.com" for a wildcard;
	// "" when no rule matched. It comes from the rules, not the sandbox, so
	// it suits a metric label where Host does not.
	HostPattern string
	// Allowed reports whether the rules allowed the request and nothing
	// else (a placeholder, a resolved address) stopped it.
	Allowed bool
	// Reason says why a request was refused, or why an allowed one failed
	// (the upstream could not be reached, a secret could not be read).
	Reason string
	// Status is the HTTP status the sandbox received from the proxy or the
	// upstream; 200 for an established tunnel, 0 when the sandbox received
	// none.
	Status int
	// Secrets names the credentials whose values were substituted.
	Secrets []string
	// BytesOut and BytesIn count the body bytes sent upstream and received
	// by the sandbox (after redaction); for a tunnel, the bytes each way.
	BytesOut, BytesIn int64
	Duration          time.Duration
	// Intercepted is set for requests the proxy read inside a CONNECT
	// tunnel, having terminated TLS with the session CA.
	Intercepted bool
}
