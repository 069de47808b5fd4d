//! Which IP addresses a guest may never connect to: every entry of IANA's
//! IPv4 and IPv6 Special-Purpose Address Registries, plus multicast,
//! site-local and the deprecated IPv4-compatible IPv6 form. Pure code;
//! the runtime asks it about every address a request's host resolves to.
//!
//! An IPv6 address that carries an IPv4 address (IPv4-mapped
//! `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by
//! the IPv4 address it carries: `64:ff9b::7f00:1` is loopback, while the
//! NAT64 form of a public address is public. Every other registry entry is
//! refused whole, including the ones IANA marks globally reachable (the
//! AS112 and AMT anycast blocks, `2001::/23`): a function has no business
//! with them, and a smaller rule is easier to trust.
//!
//! Host names are judged only for what they say without a lookup
//! ([`is_internal_host`]: `localhost`, `*.localhost` and IP literals in
//! every form a resolver accepts, such as `0x7f000001` or `127.1`); what a
//! name resolves to is judged address by address after the lookup.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One special-purpose block an address fell in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialPurpose {
    /// The block, as the registry writes it (`127.0.0.0/8`).
    pub block: &'static str,
    /// What the registry calls it.
    pub name: &'static str,
    /// The IPv6 form that carried the IPv4 address found in `block`, if any
    /// (`IPv4-mapped`, `NAT64`, `6to4`).
    pub carried_by: Option<&'static str>,
}

impl fmt::Display for SpecialPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.block, self.name)?;
        if let Some(form) = self.carried_by {
            write!(f, ", inside a {form} IPv6 address")?;
        }
        Ok(())
    }
}

struct V4 {
    prefix: u32,
    len: u32,
    block: &'static str,
    name: &'static str,
}

struct V6 {
    prefix: u128,
    len: u32,
    block: &'static str,
    name: &'static str,
}

const fn v4(a: [u8; 4], len: u32, block: &'static str, name: &'static str) -> V4 {
    V4 {
        prefix: u32::from_be_bytes(a),
        len,
        block,
        name,
    }
}

const fn v6(s: [u16; 8], len: u32, block: &'static str, name: &'static str) -> V6 {
    let mut prefix = 0u128;
    let mut i = 0;
    while i < 8 {
        prefix = (prefix << 16) | s[i] as u128;
        i += 1;
    }
    V6 {
        prefix,
        len,
        block,
        name,
    }
}

/// IANA IPv4 Special-Purpose Address Registry, and multicast. Most
/// specific first, so an address is reported in its own entry.
#[rustfmt::skip]
const V4_BLOCKS: &[V4] = &[
    v4([0, 0, 0, 0], 32, "0.0.0.0/32", "this host on this network"),
    v4([0, 0, 0, 0], 8, "0.0.0.0/8", "this network"),
    v4([10, 0, 0, 0], 8, "10.0.0.0/8", "private-use"),
    v4([100, 64, 0, 0], 10, "100.64.0.0/10", "shared address space"),
    v4([127, 0, 0, 0], 8, "127.0.0.0/8", "loopback"),
    v4([169, 254, 0, 0], 16, "169.254.0.0/16", "link-local"),
    v4([172, 16, 0, 0], 12, "172.16.0.0/12", "private-use"),
    v4([192, 0, 0, 0], 29, "192.0.0.0/29", "IPv4 service continuity prefix"),
    v4([192, 0, 0, 8], 32, "192.0.0.8/32", "IPv4 dummy address"),
    v4([192, 0, 0, 9], 32, "192.0.0.9/32", "Port Control Protocol anycast"),
    v4([192, 0, 0, 10], 32, "192.0.0.10/32", "TURN anycast"),
    v4([192, 0, 0, 170], 32, "192.0.0.170/32", "NAT64/DNS64 discovery"),
    v4([192, 0, 0, 171], 32, "192.0.0.171/32", "NAT64/DNS64 discovery"),
    v4([192, 0, 0, 0], 24, "192.0.0.0/24", "IETF protocol assignments"),
    v4([192, 0, 2, 0], 24, "192.0.2.0/24", "documentation (TEST-NET-1)"),
    v4([192, 31, 196, 0], 24, "192.31.196.0/24", "AS112-v4"),
    v4([192, 52, 193, 0], 24, "192.52.193.0/24", "AMT"),
    v4([192, 88, 99, 0], 24, "192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    v4([192, 168, 0, 0], 16, "192.168.0.0/16", "private-use"),
    v4([192, 175, 48, 0], 24, "192.175.48.0/24", "direct delegation AS112 service"),
    v4([198, 18, 0, 0], 15, "198.18.0.0/15", "benchmarking"),
    v4([198, 51, 100, 0], 24, "198.51.100.0/24", "documentation (TEST-NET-2)"),
    v4([203, 0, 113, 0], 24, "203.0.113.0/24", "documentation (TEST-NET-3)"),
    v4([224, 0, 0, 0], 4, "224.0.0.0/4", "multicast"),
    v4([255, 255, 255, 255], 32, "255.255.255.255/32", "limited broadcast"),
    v4([240, 0, 0, 0], 4, "240.0.0.0/4", "reserved"),
];

/// IANA IPv6 Special-Purpose Address Registry, plus site-local, multicast
/// and the IPv4-compatible form. The three forms that carry an IPv4
/// address are not here: [`special_purpose`] looks inside them.
#[rustfmt::skip]
const V6_BLOCKS: &[V6] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "::/128", "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "::1/128", "loopback"),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "::/96", "IPv4-compatible (deprecated)"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "100::/64", "discard-only"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "100:0:0:1::/64", "dummy IPv6 prefix"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "2001::/32", "Teredo"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, "2001:1::1/128", "Port Control Protocol anycast"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "2001:1::2/128", "TURN anycast"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, "2001:1::3/128", "DNS-SD service registration protocol anycast"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "2001:2::/48", "benchmarking"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "2001:3::/32", "AMT"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "2001:4:112::/48", "AS112-v6"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "2001:10::/28", "ORCHID (deprecated)"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "2001:20::/28", "ORCHIDv2"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "2001:30::/28", "drone remote ID protocol entity tags"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "2001::/23", "IETF protocol assignments"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "2001:db8::/32", "documentation"),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "2620:4f:8000::/48", "direct delegation AS112 service"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "3fff::/20", "documentation"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "5f00::/16", "segment routing (SRv6) SIDs"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "fc00::/7", "unique-local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "fe80::/10", "link-local unicast"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "fec0::/10", "site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "ff00::/8", "multicast"),
];

fn v4_block(ip: Ipv4Addr) -> Option<&'static V4> {
    let bits = u32::from(ip);
    V4_BLOCKS
        .iter()
        .find(|b| bits >> (32 - b.len) == b.prefix >> (32 - b.len))
}

fn v6_block(ip: Ipv6Addr) -> Option<&'static V6> {
    let bits = u128::from(ip);
    V6_BLOCKS
        .iter()
        .find(|b| bits >> (128 - b.len) == b.prefix >> (128 - b.len))
}

/// The IPv4 address inside an IPv4-mapped, NAT64 (well-known prefix) or
/// 6to4 address, with the form's name.
fn carried_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    if bits >> 32 == 0xffff {
        Some((low32, "IPv4-mapped"))
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        Some((low32, "NAT64"))
    } else if bits >> 112 == 0x2002 {
        Some((Ipv4Addr::from((bits >> 80) as u32), "6to4"))
    } else {
        None
    }
}

/// The special-purpose block `ip` is in, if any: a guest never connects
/// to such an address unless an admin granted it.
pub fn special_purpose(ip: IpAddr) -> Option<SpecialPurpose> {
    match ip {
        IpAddr::V4(ip) => v4_block(ip).map(|b| SpecialPurpose {
            block: b.block,
            name: b.name,
            carried_by: None,
        }),
        IpAddr::V6(ip) => {
            if let Some((inner, form)) = carried_v4(ip) {
                return v4_block(inner).map(|b| SpecialPurpose {
                    block: b.block,
                    name: b.name,
                    carried_by: Some(form),
                });
            }
            v6_block(ip).map(|b| SpecialPurpose {
                block: b.block,
                name: b.name,
                carried_by: None,
            })
        }
    }
}

/// Whether `ip` is special-purpose (loopback, private, link-local,
/// multicast, documentation, reserved …): see [`special_purpose`].
pub fn is_internal_ip(ip: IpAddr) -> bool {
    special_purpose(ip).is_some()
}

/// `host` as an IP address, if it is one: an IPv6 literal (with or
/// without brackets) or an IPv4 address in any form `inet_aton` and
/// URL parsers accept (`127.0.0.1`, `127.1`, `2130706433`, `0x7f000001`,
/// `0177.0.0.1`). A trailing dot is ignored.
pub fn parse_ip_host(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    // A zone (`fe80::1%eth0`, `%25` in a URL) names an interface, not
    // another address: the address before it is what is judged.
    let unzoned = |v6: &str| {
        v6.split_once('%')
            .map_or(v6, |(address, _)| address)
            .to_owned()
    };
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return unzoned(inner).parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = unzoned(host).parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(ip));
    }
    parse_ipv4_loose(host).map(IpAddr::V4)
}

/// One to four parts separated by dots, each decimal, octal (a leading
/// `0`) or hexadecimal (`0x`); the last part fills the bytes left.
fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        numbers.push(parse_part(part)?);
    }
    let (last, leading) = numbers.split_last()?;
    let mut value: u64 = 0;
    for n in leading {
        if *n > 255 {
            return None;
        }
        value = (value << 8) | n;
    }
    let room = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    value = (value << room) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // `0x` alone is 0 to URL parsers; an empty part is no number.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 32 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Whether `host`, as written (any case, a trailing dot, brackets around
/// IPv6), names this machine or a special-purpose address without any
/// lookup: `localhost`, a subdomain of it, or an IP literal in any form
/// (see [`parse_ip_host`]) that is special-purpose.
pub fn is_internal_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    parse_ip_host(&host).is_some_and(is_internal_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn block_of(s: &str) -> Option<&'static str> {
        special_purpose(ip(s)).map(|p| p.block)
    }

    /// Every IPv4 registry entry: its first and last address are in it,
    /// and the addresses just outside (when not in another entry) are
    /// public.
    #[test]
    fn every_ipv4_registry_entry_first_last_and_neighbours() {
        #[rustfmt::skip]
        let entries: &[(&str, &str, &str, &str, &str)] = &[
            // block, first, last, just before, just after (- : no check)
            ("0.0.0.0/8", "0.0.0.1", "0.255.255.255", "-", "1.0.0.0"),
            ("10.0.0.0/8", "10.0.0.0", "10.255.255.255", "9.255.255.255", "11.0.0.0"),
            ("100.64.0.0/10", "100.64.0.0", "100.127.255.255", "100.63.255.255", "100.128.0.0"),
            ("127.0.0.0/8", "127.0.0.0", "127.255.255.255", "126.255.255.255", "128.0.0.0"),
            ("169.254.0.0/16", "169.254.0.0", "169.254.255.255", "169.253.255.255", "169.255.0.0"),
            ("172.16.0.0/12", "172.16.0.0", "172.31.255.255", "172.15.255.255", "172.32.0.0"),
            ("192.0.0.0/29", "192.0.0.0", "192.0.0.7", "191.255.255.255", "-"),
            ("192.0.0.0/24", "192.0.0.11", "192.0.0.255", "-", "192.0.1.0"),
            ("192.0.2.0/24", "192.0.2.0", "192.0.2.255", "192.0.1.255", "192.0.3.0"),
            ("192.31.196.0/24", "192.31.196.0", "192.31.196.255", "192.31.195.255", "192.31.197.0"),
            ("192.52.193.0/24", "192.52.193.0", "192.52.193.255", "192.52.192.255", "192.52.194.0"),
            ("192.88.99.0/24", "192.88.99.0", "192.88.99.255", "192.88.98.255", "192.88.100.0"),
            ("192.168.0.0/16", "192.168.0.0", "192.168.255.255", "192.167.255.255", "192.169.0.0"),
            ("192.175.48.0/24", "192.175.48.0", "192.175.48.255", "192.175.47.255", "192.175.49.0"),
            ("198.18.0.0/15", "198.18.0.0", "198.19.255.255", "198.17.255.255", "198.20.0.0"),
            ("198.51.100.0/24", "198.51.100.0", "198.51.100.255", "198.51.99.255", "198.51.101.0"),
            ("203.0.113.0/24", "203.0.113.0", "203.0.113.255", "203.0.112.255", "203.0.114.0"),
            ("224.0.0.0/4", "224.0.0.0", "239.255.255.255", "223.255.255.255", "-"),
            ("240.0.0.0/4", "240.0.0.0", "255.255.255.254", "-", "-"),
        ];
        for (block, first, last, before, after) in entries {
            assert_eq!(block_of(first), Some(*block), "{first}");
            assert_eq!(block_of(last), Some(*block), "{last}");
            for outside in [before, after] {
                if *outside != "-" {
                    assert_eq!(block_of(outside), None, "{outside} is public");
                }
            }
        }
        // The single addresses and the most specific entries.
        for (addr, block) in [
            ("0.0.0.0", "0.0.0.0/32"),
            ("192.0.0.8", "192.0.0.8/32"),
            ("192.0.0.9", "192.0.0.9/32"),
            ("192.0.0.10", "192.0.0.10/32"),
            ("192.0.0.170", "192.0.0.170/32"),
            ("192.0.0.171", "192.0.0.171/32"),
            ("192.0.0.169", "192.0.0.0/24"),
            ("192.0.0.172", "192.0.0.0/24"),
            ("255.255.255.255", "255.255.255.255/32"),
        ] {
            assert_eq!(block_of(addr), Some(block), "{addr}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "223.255.255.255",
            "100.63.0.1",
        ] {
            assert!(!is_internal_ip(ip(public)), "{public}");
        }
    }

    #[test]
    fn every_ipv6_registry_entry_first_last_and_neighbours() {
        #[rustfmt::skip]
        let entries: &[(&str, &str, &str, &str, &str)] = &[
            ("::/128", "::", "::", "-", "-"),
            ("::1/128", "::1", "::1", "-", "-"),
            ("::/96", "::2", "::ffff:ffff", "-", "::1:0:0"),
            ("64:ff9b:1::/48", "64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "64:ff9b:0:ffff:ffff:ffff:ffff:ffff", "64:ff9b:2::"),
            ("100::/64", "100::", "100::ffff:ffff:ffff:ffff", "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("100:0:0:1::/64", "100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff", "-", "100:0:0:2::"),
            ("2001::/32", "2001::", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("2001:1::1/128", "2001:1::1", "2001:1::1", "-", "-"),
            ("2001:1::2/128", "2001:1::2", "2001:1::2", "-", "-"),
            ("2001:1::3/128", "2001:1::3", "2001:1::3", "-", "-"),
            ("2001:2::/48", "2001:2::", "2001:2:0:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001:3::/32", "2001:3::", "2001:3:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001:4:112::/48", "2001:4:112::", "2001:4:112:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001:10::/28", "2001:10::", "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001:20::/28", "2001:20::", "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001:30::/28", "2001:30::", "2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("2001::/23", "2001:1::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "-", "2001:200::"),
            ("2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"),
            ("2620:4f:8000::/48", "2620:4f:8000::", "2620:4f:8000:ffff:ffff:ffff:ffff:ffff", "2620:4f:7fff:ffff:ffff:ffff:ffff:ffff", "2620:4f:8001::"),
            ("3fff::/20", "3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"),
            ("5f00::/16", "5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5f01::"),
            ("fc00::/7", "fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::"),
            ("fe80::/10", "fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-"),
            ("fec0::/10", "fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
            ("ff00::/8", "ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-", "-"),
        ];
        for (block, first, last, before, after) in entries {
            assert_eq!(block_of(first), Some(*block), "{first}");
            assert_eq!(block_of(last), Some(*block), "{last}");
            for outside in [before, after] {
                if *outside != "-" {
                    assert_eq!(block_of(outside), None, "{outside} is public");
                }
            }
        }
        // Inside 2001::/23, the parts no sub-entry names.
        for addr in [
            "2001:4::",
            "2001:4:111::",
            "2001:4:113::",
            "2001:5::",
            "2001:f:ffff::",
            "2001:40::",
            "2001:1::4",
            "2001:1::",
        ] {
            assert_eq!(block_of(addr), Some("2001::/23"), "{addr}");
        }
        for public in [
            "2606:4700::1111",
            "2a00:1450::1",
            "2000::",
            "2001:200::1",
            "4000::",
            "fe00::1",
            "64:ff9b:2::1",
        ] {
            assert!(!is_internal_ip(ip(public)), "{public}");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_ipv4_are_judged_by_the_ipv4_inside() {
        for (addr, block, form) in [
            ("::ffff:127.0.0.1", "127.0.0.0/8", "IPv4-mapped"),
            ("::ffff:10.1.2.3", "10.0.0.0/8", "IPv4-mapped"),
            ("::ffff:0.0.0.0", "0.0.0.0/32", "IPv4-mapped"),
            ("::ffff:198.18.0.1", "198.18.0.0/15", "IPv4-mapped"),
            ("64:ff9b::7f00:1", "127.0.0.0/8", "NAT64"),
            ("64:ff9b::a9fe:a9fe", "169.254.0.0/16", "NAT64"),
            ("64:ff9b::c0a8:1", "192.168.0.0/16", "NAT64"),
            ("64:ff9b::e000:1", "224.0.0.0/4", "NAT64"),
            ("2002:7f00:1::", "127.0.0.0/8", "6to4"),
            ("2002:0a00:0001::1", "10.0.0.0/8", "6to4"),
            ("2002:c0a8:0101:1::1", "192.168.0.0/16", "6to4"),
            ("2002:ffff:ffff::", "255.255.255.255/32", "6to4"),
        ] {
            let found = special_purpose(ip(addr)).unwrap_or_else(|| panic!("{addr}"));
            assert_eq!(
                (found.block, found.carried_by),
                (block, Some(form)),
                "{addr}"
            );
        }
        for public in [
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2002:5db8:d822::",
        ] {
            assert!(!is_internal_ip(ip(public)), "{public}");
        }
        // The NAT64 prefix's neighbours are plain IPv6.
        assert_eq!(block_of("64:ff9b:0:0:0:1::"), None);
        assert!(
            special_purpose(ip("64:ff9b::7f00:1"))
                .unwrap()
                .to_string()
                .contains("loopback")
        );
    }

    #[test]
    fn ip_hosts_in_every_resolver_form() {
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("0", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("127.0.0.1.", "127.0.0.1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
            ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1"),
            ("[fe80::1%25eth0]", "fe80::1"),
            ("[::1%lo]", "::1"),
            ("fe80::1%eth0", "fe80::1"),
        ] {
            assert_eq!(parse_ip_host(host), Some(ip(want)), "{host}");
        }
        for name in [
            "example.com",
            "256.0.0.1",
            "1.2.3.4.5",
            "08.0.0.1",
            "0x1g",
            "4294967296",
            "1..1",
            "",
            "[::1",
            "a.1",
            "1.256.0.0",
            "1.2.65536",
        ] {
            assert_eq!(parse_ip_host(name), None, "{name}");
        }
    }

    #[test]
    fn internal_hosts_without_a_lookup() {
        for host in [
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "x.Localhost",
            "127.0.0.1",
            "0x7f000001",
            "2130706433",
            "127.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[64:ff9b::7f00:1]",
            "[2002:7f00:1::]",
            "10.0.0.1",
            "169.254.169.254",
            "198.18.0.1",
            "0.0.0.0",
            "[fe80::1]",
            "[fe80::1%25eth0]",
            "[::1%25lo]",
        ] {
            assert!(is_internal_host(host), "{host}");
        }
        for host in [
            "example.com",
            "8.8.8.8",
            "[2606:4700::1111]",
            "localhost.example.com",
            "notlocalhost",
        ] {
            assert!(!is_internal_host(host), "{host}");
        }
    }
}
