package sandboxtest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The network attacks never send a packet to anything but a loopback
// address: the listeners they aim at are the test's own, on the host's
// loopback, and whether those were reached is the host's observation. A
// route off the machine is detected by looking at the sandbox's routing
// table, not by using it.

// tcpToHostLoopback: services on the host's loopback (the worker's metrics
// and admin endpoints, a database, the egress proxies of other sessions)
// trust their callers because "only this machine" can reach them. A
// sandbox sharing the host's network namespace is one of those callers.
func tcpToHostLoopback(t *testing.T, s *escapeSuite, a *attempt) {
	tcpAttack(t, s, a, "127.0.0.1")
}

// tcpToOtherLoopback: a backend that forwards only 127.0.0.1:<port>
// into the sandbox, or filters only 127.0.0.1, still leaks the rest of
// 127.0.0.0/8, where local resolvers and side services often listen.
func tcpToOtherLoopback(t *testing.T, s *escapeSuite, a *attempt) {
	tcpAttack(t, s, a, "127.0.0.2")
}

func tcpAttack(t *testing.T, s *escapeSuite, a *attempt, host string) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		a.record("connect", unavailable, "the host cannot listen on %s: %v", host, err)
		return
	}
	var accepted atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte("perimeter-escape-listener\n"))
			_ = conn.Close()
		}
	})
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "tcp", tcpScript, tcpPy, host, port)
	n := accepted.Load()
	a.hostSaw("connect", false, n > 0, fmt.Sprintf("the host's listener on %s accepted %d connection(s) from the sandbox", ln.Addr(), n))
}

const tcpScript = `if have python3; then
  python3 "$PY" "$1" "$2"
elif err=$(timeout 10 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -c 64 <&3 >/dev/null' _ "$1" "$2" 2>&1); then
  info connect "bash connected to $1:$2"
else
  case $err in
    *"No such file"*) unavailable connect "no python3, and this bash has no /dev/tcp" ;;
    *) blocked connect "$err" ;;
  esac
fi
done_
`

const tcpPy = `import socket, sys

host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        got = s.recv(64)
    print(f"@escape info connect: connected to {host}:{port} and read {len(got)} bytes")
except OSError as e:
    print(f"@escape blocked connect: {e}")
`

// dnsLookup: DNS is the classic way out of a sandbox that blocks TCP: a
// resolver forwards any name it is asked, so a query carries data to
// whoever owns the domain. The query here goes to a resolver the test runs
// on the host's loopback (asking the system's resolver would send traffic
// off the machine when the protection is missing); whether a real resolver
// is reachable at all is UseANetworkInterfaceOtherThanLoopback's question.
func dnsLookup(t *testing.T, s *escapeSuite, a *attempt) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		a.record("query", unavailable, "the host cannot listen on 127.0.0.1/udp: %v", err)
		return
	}
	var queries atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 || buf[2]&0x80 != 0 { // not a query
				continue
			}
			queries.Add(1)
			reply := append([]byte(nil), buf[:n]...)
			reply[2], reply[3] = 0x81, 0x83 // a response: recursion available, NXDOMAIN
			_, _ = pc.WriteTo(reply, from)
		}
	})
	port := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)

	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "dns", dnsScript, dnsPy, port, hex.EncodeToString(dnsQuery(randomHex(6)+".perimeter-escape.invalid")))
	n := queries.Load()
	a.hostSaw("query", false, n > 0, fmt.Sprintf("the host's resolver on %s received %d query(ies) from the sandbox", pc.LocalAddr(), n))
}

// dnsQuery is a DNS query for the A record of name (RFC 1035 §4.1).
func dnsQuery(name string) []byte {
	q := binary.BigEndian.AppendUint16(nil, 0x5045) // id
	q = append(q, 0x01, 0x00)                       // a standard query, recursion desired
	q = append(q, 0, 1, 0, 0, 0, 0, 0, 0)           // one question
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1) // the root; type A; class IN
}

const dnsScript = `if have python3; then
  python3 "$PY" 127.0.0.1 "$1" "$2"
elif err=$( (printf "$(printf '%s' "$2" | sed 's/../\\x&/g')" >"/dev/udp/127.0.0.1/$1") 2>&1 ); then
  info query "bash sent a query to 127.0.0.1:$1"
else
  blocked query "$err"
fi
done_
`

const dnsPy = `import socket, sys

host, port, query = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
try:
    s.sendto(query, (host, port))
    answer, _ = s.recvfrom(512)
    print(f"@escape info query: {host}:{port} answered with {len(answer)} bytes")
except socket.timeout:
    print(f"@escape info query: sent to {host}:{port}; no answer")
except OSError as e:
    print(f"@escape blocked query: {e}")
`

// networkInterfaces: a sandbox with a route off the machine can reach the
// internet, the cloud metadata service and the private network, and can
// resolve names through a real resolver. Rather than send traffic there,
// the attack reads the sandbox's routing tables: a route through anything
// but lo is a way out. (Tunnel devices that merely exist, down and
// unrouted, in every new network namespace are not.)
func networkInterfaces(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostHasRouteOff(), "the host itself has no route through an interface other than lo")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "routes", routesScript, "")
}

const routesScript = `ifs=$( (tail -n +3 /proc/net/dev 2>/dev/null || ls /sys/class/net 2>/dev/null) | cut -d: -f1 | tr -d ' ' | grep -v -x lo | tr '\n' ' ')
# routes FILE FIELD: the interfaces other than lo that FILE routes through.
routes() {
  local line f
  tail -n "+$3" "$1" | while read -r line; do
    read -r -a f <<<"$line"
    [ -n "${f[$2]}" ] && [ "${f[$2]}" != lo ] && echo "${f[$2]}"
  done | sort -u | tr '\n' ' '
}
seen=0
if [ -r /proc/net/route ]; then
  seen=1
  v4=$(routes /proc/net/route 0 2)
  if [ -n "$v4" ]; then escaped "IPv4 routes" "routes through $v4"; else blocked "IPv4 routes" "no IPv4 route (interfaces besides lo: ${ifs:-none})"; fi
fi
if [ -r /proc/net/ipv6_route ]; then
  seen=1
  v6=$(routes /proc/net/ipv6_route 9 1)
  if [ -n "$v6" ]; then escaped "IPv6 routes" "routes through $v6"; else blocked "IPv6 routes" "no IPv6 route except through lo"; fi
fi
[ "$seen" = 1 ] || unavailable routes "neither /proc/net/route nor /proc/net/ipv6_route is readable"
done_
`

// containerEngineSocket: the Docker (or containerd, Podman, CRI-O) socket
// is root on the host: whoever can talk to it starts a privileged
// container with the host's / mounted. It must not be visible, let alone
// connectable, in a sandbox — a mistake that is one bind mount away for a
// Docker backend.
func containerEngineSocket(t *testing.T, s *escapeSuite, a *attempt) {
	a.notDemonstrable(!hostCanDial(engineSockets()...), "the test process cannot connect to any container engine socket on this host")
	b := s.create(t, s.newRuntime(t))
	b.script(t, a, "engine-socket", engineSocketScript, engineSocketPy, engineSockets()...)
}

const engineSocketScript = `socks=()
for p in "$@" /run/user/*/docker.sock /run/user/*/podman/podman.sock; do
  [ -S "$p" ] && socks+=("$p")
done
if [ ${#socks[@]} -eq 0 ]; then
  blocked sockets "no container engine socket is visible"
elif have python3; then
  python3 "$PY" "${socks[@]}"
else
  for p in "${socks[@]}"; do
    if [ -w "$p" ]; then escaped "connect $p" "the socket is writable (no python3 to connect)"; else blocked "connect $p" "not writable"; fi
  done
fi
done_
`

const engineSocketPy = `import socket, sys

for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        # /_ping only answers OK; nothing is asked of the engine.
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
        first = s.recv(64).split(b"\r\n")[0].decode("ascii", "replace")
        print(f"@escape escaped connect {path}: connected; it answered {first!r}")
    except OSError as e:
        print(f"@escape blocked connect {path}: {e}")
    finally:
        s.close()
`

// engineSockets are the well-known container engine sockets.
func engineSockets() []string {
	return []string{
		"/var/run/docker.sock", "/run/docker.sock",
		"/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock",
		"/run/podman/podman.sock", "/run/crio/crio.sock", "/var/run/crio/crio.sock",
	}
}

// hostCanDial reports whether the test process can connect to any of the
// unix sockets.
func hostCanDial(paths ...string) bool {
	for _, p := range paths {
		conn, err := net.DialTimeout("unix", p, 2*time.Second)
		if err == nil {
			_ = conn.Close()
			return true
		}
	}
	return false
}

// hostHasRouteOff reports whether the host has a route through an
// interface other than lo.
func hostHasRouteOff() bool {
	for _, file := range []struct {
		path  string
		field int
	}{{"/proc/net/route", 0}, {"/proc/net/ipv6_route", 9}} {
		data, err := readSmallFile(file.path)
		if err != nil {
			continue
		}
		for i, line := range strings.Split(data, "\n") {
			f := strings.Fields(line)
			if (file.field == 0 && i == 0) || len(f) <= file.field {
				continue
			}
			if f[file.field] != "lo" {
				return true
			}
		}
	}
	return false
}
