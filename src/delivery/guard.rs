//! The SSRF guard: webhook URLs are typed by account users, so webhookd must not become their
//! way into the host's loopback, the private network or the cloud metadata service.
//!
//! The check sits where the socket is opened, on the address actually connected to, not on the
//! URL: a name that resolves to a public address when the webhook is saved and to 127.0.0.1 at
//! delivery time (DNS rebinding) is caught, because [`GuardedResolver`] hands hyper-util's
//! `HttpConnector` only the addresses that pass, and the connector connects to nothing else.
//! IP-literal hosts never reach a resolver in `HttpConnector`, so [`GuardedConnector`] wraps it
//! and checks those itself. Both fail with [`GuardError::Refused`], which the client finds in the
//! error's source chain and reports as `SendError::Blocked`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::{io, vec};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why the guard stopped a connection before it was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum GuardError {
    #[error("destination address {addr} is refused (not in allow_networks)")]
    Refused { addr: IpAddr },
    #[error("DNS lookup failed")]
    Lookup(#[source] io::Error),
}

/// IPv4 ranges no webhook may reach unless allowed: (network, prefix length).
const REFUSED_V4: [(Ipv4Addr, u8); 14] = [
    // "this network", incl. unspecified
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    // private
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    // CGNAT shared space
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    // loopback
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    // link-local, cloud metadata
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    // private
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    // IETF protocol assignments (DS-Lite, NAT64 discovery)
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    // documentation
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    // private
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    // benchmarking
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    // documentation
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    // multicast
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    // reserved, incl. broadcast
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges refused in their own right; the forms that embed an IPv4 address are judged by
/// that address instead (see [`embedded_v4`]).
const REFUSED_V6: [(Ipv6Addr, u8); 12] = [
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    // local-use NAT64 (RFC 8215)
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    // discard-only (RFC 6666)
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // benchmarking (RFC 5180)
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48),
    // ORCHIDv2 (RFC 7343): identifiers, not routable
    (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28),
    // documentation (RFC 3849, RFC 9637)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    // unique local
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // link-local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // site-local (deprecated, still private)
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // multicast
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Whether the guard refuses to connect to `ip`. `allow` opens networks explicitly, and also
/// covers an IPv4 address reached through an IPv6 form that embeds it.
pub fn is_refused(ip: IpAddr, allow: &[IpNet]) -> bool {
    if allow.iter().any(|net| net.contains(&ip)) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => in_v4_ranges(v4),
        IpAddr::V6(v6) => {
            if in_v6_ranges(v6) {
                true
            } else if let Some(v4) = embedded_v4(v6) {
                is_refused(IpAddr::V4(v4), allow)
            } else {
                false
            }
        }
    }
}

fn in_v4_ranges(ip: Ipv4Addr) -> bool {
    let bits = ip.to_bits();
    REFUSED_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        bits & mask == net.to_bits()
    })
}

fn in_v6_ranges(ip: Ipv6Addr) -> bool {
    let bits = ip.to_bits();
    REFUSED_V6.iter().any(|&(net, len)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        bits & mask == net.to_bits()
    })
}

/// The IPv4 address an IPv6 address reaches, for the forms a host or a translator turns into
/// IPv4 traffic: mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d` (SIIT), compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`, and Teredo
/// `2001:0::/32`, whose last 32 bits are the client's IPv4 address inverted (RFC 4380).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    let low32 = bits as u32;
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(Ipv4Addr::from_bits(low32)),
        [0x2002, _, _, _, _, _, _, _] => Some(Ipv4Addr::from_bits((bits >> 80) as u32)),
        [0x2001, 0, _, _, _, _, _, _] => Some(Ipv4Addr::from_bits(!low32)),
        _ => None,
    }
}

/// Resolves names for `HttpConnector` and drops the addresses the guard refuses, so the
/// connector never learns of them.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    allow: Arc<[IpNet]>,
}

impl Service<Name> for GuardedResolver {
    type Response = vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = BoxFuture<Result<Self::Response, GuardError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GuardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = Arc::clone(&self.allow);
        Box::pin(async move {
            // The port is set by the connector afterwards.
            let resolved = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(GuardError::Lookup)?;
            admit(resolved, &allow)
        })
    }
}

/// Keeps the addresses that pass; a name with none left fails with the first one refused, so
/// the dead letter names what the receiver's name pointed at.
fn admit(
    resolved: impl Iterator<Item = SocketAddr>,
    allow: &[IpNet],
) -> Result<vec::IntoIter<SocketAddr>, GuardError> {
    let mut first_refused = None;
    let admitted: Vec<SocketAddr> = resolved
        .filter(|addr| {
            let refused = is_refused(addr.ip(), allow);
            if refused {
                first_refused.get_or_insert(addr.ip());
            }
            !refused
        })
        .collect();
    match first_refused {
        Some(addr) if admitted.is_empty() => Err(GuardError::Refused { addr }),
        _ => Ok(admitted.into_iter()),
    }
}

/// `HttpConnector` with the guard on both ways to an address: names through
/// [`GuardedResolver`], IP literals checked here before the connector sees them.
#[derive(Clone)]
pub(super) struct GuardedConnector {
    http: HttpConnector<GuardedResolver>,
    allow: Arc<[IpNet]>,
}

impl GuardedConnector {
    pub(super) fn new(allow: Arc<[IpNet]>, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow: Arc::clone(&allow),
        });
        // https URLs pass through here on their way to the TLS layer wrapped around this.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        GuardedConnector { http, allow }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Some(addr) = literal_host(&dst) {
            if is_refused(addr, &self.allow) {
                return Box::pin(std::future::ready(Err(GuardError::Refused { addr }.into())));
            }
        }
        let connecting = self.http.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The host as `HttpConnector` reads it: brackets stripped, then parsed by the same std parsers,
/// so that whatever it takes for a literal (and skips resolving) is checked here.
fn literal_host(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network parses")
    }

    #[test]
    fn refuses_non_public_ranges_by_default() {
        let refused = [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.10",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.200",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b:1::a00:1",
            // IPv4-mapped and -compatible forms of refused IPv4
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::192.168.0.1",
            // SIIT-translated forms
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            // NAT64, 6to4 and Teredo embedding refused IPv4 (Teredo's client is inverted:
            // 80ff:fffe is 127.0.0.1)
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2002:a00:1:ffff::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            // discard-only, benchmarking, ORCHIDv2, documentation
            "100::1",
            "2001:2::1",
            "2001:2f::1",
            "3fff:123::1",
        ];
        for s in refused {
            assert!(is_refused(ip(s), &[]), "{s} should be refused");
        }
    }

    #[test]
    fn admits_public_addresses() {
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo with a public client (8.8.8.8 inverted is f7f7:f7f7)
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2001:3::1",
            "2001:30::1",
        ];
        for s in public {
            assert!(!is_refused(ip(s), &[]), "{s} should be admitted");
        }
    }

    #[test]
    fn allow_networks_open_refused_ranges_and_only_those() {
        let allow = [net("127.0.0.0/8"), net("fd00::/8")];
        let cases = [
            ("127.0.0.1", false),
            ("127.3.2.1", false),
            ("::ffff:127.0.0.1", false),
            ("64:ff9b::7f00:1", false),
            ("fd00::5", false),
            ("::1", true),
            ("10.0.0.1", true),
            ("fc00::1", true),
            ("169.254.169.254", true),
        ];
        for (s, refused) in cases {
            assert_eq!(is_refused(ip(s), &allow), refused, "{s}");
        }
    }

    #[test]
    fn admit_keeps_allowed_addresses_and_fails_when_none_remain() {
        let sock = |s: &str| SocketAddr::new(ip(s), 0);
        let mixed = [
            sock("127.0.0.1"),
            sock("8.8.8.8"),
            sock("::1"),
            sock("2606:4700::1111"),
        ];
        let admitted: Vec<SocketAddr> = admit(mixed.into_iter(), &[])
            .map(Iterator::collect)
            .unwrap_or_default();
        assert_eq!(admitted, [sock("8.8.8.8"), sock("2606:4700::1111")]);

        let internal = [sock("10.0.0.1"), sock("127.0.0.1")];
        assert!(matches!(
            admit(internal.into_iter(), &[]),
            Err(GuardError::Refused { addr }) if addr == ip("10.0.0.1")
        ));
    }

    #[test]
    fn literal_host_reads_what_the_connector_would_not_resolve() {
        let cases = [
            ("http://127.0.0.1:8080/x", Some(ip("127.0.0.1"))),
            ("https://[::ffff:10.0.0.1]/", Some(ip("::ffff:10.0.0.1"))),
            ("http://[::1]:9/", Some(ip("::1"))),
            ("http://example.com/", None),
            ("http://localhost:80/", None),
        ];
        for (uri, expected) in cases {
            let uri: Uri = uri.parse().expect("test URI parses");
            assert_eq!(literal_host(&uri), expected, "{uri}");
        }
    }
}
