// Package egress is a session's one way out of its sandbox: an HTTP proxy,
// run by the supervisor, that the sandbox reaches through a unix socket.
//
// Every request is checked against the session's Rules, which deny by
// default. A plain-HTTP request (absolute-form URL) is checked and
// forwarded; a CONNECT to an allowed host is tunnelled byte for byte,
// unless the proxy must read the requests inside it: when a Credential may
// be sent to the host, or a rule for the host lists methods or path
// prefixes (or Options.InterceptAll). It then terminates TLS with a
// per-session CA, whose certificate (CACertPEM) the sandbox trusts, checks
// each request inside, and forwards it over a new, normally verified TLS
// connection. Each request ends in a Record.
//
// Trust model. The sandbox is hostile: everything in its requests is
// untrusted, and nothing it sends decides where a connection goes beyond
// the host the rules were checked against. Rules, credentials and secret
// values are trusted; they come from the supervisor. Consequently:
//
//   - No credential enters the sandbox. It holds placeholders; the proxy
//     swaps a placeholder for the value from Secrets only on a request to a
//     host the credential lists (and the rules allow), only in the places
//     the credential lists. A request the proxy reads that carries a
//     placeholder to any other host is refused before anything is sent (for
//     a body larger than MaxBodyBytes, before the part that holds it); inside
//     a tunnel the proxy leaves untouched it cannot look, which InterceptAll
//     changes.
//   - Every value the proxy has substituted in the session is redacted from
//     what the sandbox receives through it — response headers and bodies,
//     refusals, records, logs — as is, URL-escaped in the styles common
//     encoders use, JSON-escaped, and base64-encoded at any alignment (of
//     the value and of its URL-escaped forms, as in an encoded dump of a
//     request whose query carried it). A value first substituted while a
//     response is on its way is redacted from the rest of that body, which
//     keeps its length if the sandbox was told it; a body that began
//     before any value was known, in an encoding the sandbox asked for,
//     passes as it is. This is a second line, not a guarantee: an upstream that transforms a value otherwise (reverses,
//     hashes, compresses it in a format the proxy cannot undo), or a host
//     the sandbox reaches through an untouched tunnel that stores what a
//     credential's host echoed, can still show it. Credentials that allow
//     "body" let the sandbox choose what text carries the value, so grant
//     it only where needed; InterceptAll closes the tunnel path.
//   - The proxy resolves names itself and connects to the address it
//     checked. A name that resolves to a loopback, private, link-local or
//     otherwise non-public address is refused unless its rule has
//     AllowPrivate, so DNS answers cannot turn an allowed name into the
//     supervisor's own network. Raw IP addresses need a rule listing them.
//   - The session CA's private key exists only in this process. It is
//     valid for a short time, and only the sandbox trusts it.
//   - Inside an intercepted tunnel the Host of each request must be the
//     tunnel's host, so that an upstream that routes by Host cannot receive
//     a credential meant for another.
//   - What the sandbox can make the proxy hold is bounded: connections
//     (MaxConns), buffered request bodies (MaxBodyBytes, a few at a time),
//     response look-behind (the longest redacted form), a piece of each
//     response being copied (256 KiB, and what its TLS records add; an
//     idle connection holds none), and four pieces for each of at most
//     four large responses read ahead. A sandbox that stops reading also
//     leaves up to its connection's send buffer (1 MiB asked, within
//     net.core.wmem_max) queued in the kernel, as a TCP connection would.
//
// Not supported: HTTP/2 and protocol upgrades (WebSocket) inside
// intercepted tunnels and on plain-HTTP requests (they work through
// untouched tunnels), and response trailers.
package egress
