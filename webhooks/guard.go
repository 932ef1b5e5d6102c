package webhooks

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// Receivers on these networks are refused unless private addresses are
// allowed: a tenant's URL must not reach the fleet's own network, its
// loopback or a cloud's metadata service. The check is on the address
// actually connected to, after resolution, so a name that resolves (or
// re-resolves) to such an address is refused too. fec0::/10 is the
// deprecated site-local range, private wherever it is still routed; ::/96
// the deprecated IPv4-compatible addresses (::127.0.0.1), which Unmap does
// not turn into IPv4. The documentation ranges (192.0.2.0/24,
// 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are never a real
// receiver, and may be routed inside a network.
var privateNets = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
		"224.0.0.0/4", "240.0.0.0/4",
		"::/96", "::1/128", "64:ff9b::/96", "2001:db8::/32", "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// privateAddr reports whether ip is on a refused network. A zoned address
// (fe80::1%eth0) is in no netip.Prefix: the zone goes before the check.
func privateAddr(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	for _, p := range privateNets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refusedError is a receiver address the fleet will not contact.
type refusedError struct{ reason string }

func (e *refusedError) Error() string { return e.reason }

// guard is a net.Dialer Control that refuses private addresses.
func guard(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return &refusedError{fmt.Sprintf("address %q: %v", address, err)}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return &refusedError{fmt.Sprintf("address %q is not an IP address", host)}
	}
	if privateAddr(ip) {
		return &refusedError{fmt.Sprintf("address %s is loopback, private, link-local or reserved (CHATFLEET_WEBHOOK_ALLOW_PRIVATE=true allows it)", ip)}
	}
	return nil
}
