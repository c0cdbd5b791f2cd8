package delivery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// ErrBlockedAddress is returned when a request would reach a loopback, private,
// link-local, metadata or otherwise internal address.
var ErrBlockedAddress = errors.New("blocked address")

// blockedPrefixes are the networks a webhook must not reach unless the manager runs
// with --allow-private-networks: they lead into the cluster or the cloud provider.
var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // "this network", unspecified
		"10.0.0.0/8",     // RFC 1918
		"100.64.0.0/10",  // CGNAT (RFC 6598)
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local, including 169.254.169.254 (cloud metadata)
		"172.16.0.0/12",  // RFC 1918
		"192.0.0.0/24",   // IETF protocol assignments
		"192.168.0.0/16", // RFC 1918
		"198.18.0.0/15",  // benchmarking
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, broadcast
		"::/128",         // unspecified
		"::1/128",        // loopback
		"64:ff9b::/96",   // NAT64: can embed any IPv4 address, internal ones included
		"64:ff9b:1::/48", // local-use NAT64
		"fc00::/7",       // unique local (RFC 4193), including fd00:ec2::254
		"fe80::/10",      // link-local
		"ff00::/8",       // multicast
		"2001:db8::/32",  // documentation
		"2002::/16",      // 6to4: can embed internal IPv4 addresses
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// IsBlocked reports whether addr is an address webhooks must not reach. IPv4-mapped
// IPv6 addresses are judged as the IPv4 address they carry.
func IsBlocked(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range blockedPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// guardControl is a net.Dialer Control function: it runs on the address actually
// dialled, after DNS resolution, so neither DNS rebinding nor a redirect can lead a
// request around it.
func guardControl(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBlockedAddress, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrBlockedAddress, host)
	}
	if IsBlocked(addr) {
		return fmt.Errorf("%w: %s is a loopback, private, link-local or reserved address (the manager's --allow-private-networks permits it)", ErrBlockedAddress, addr.Unmap())
	}
	return nil
}
