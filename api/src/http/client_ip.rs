//! Who the client is, by address: the socket peer, or behind a trusted
//! proxy the nearest address in `X-Forwarded-For` that is not one. Resolved
//! once per request by [`resolve_into`], whether rate limits are on or off, and
//! read by every handler that records or limits by address (audit actors,
//! login lockouts, refusals, the rate limiter).

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use axum::http::HeaderMap;
use ipnet::IpNet;

use super::front::Front;

/// The request's client address, as [`resolve_into`] resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Puts the request's [`ClientIp`] in its extensions.
pub fn resolve_into(front: &Front, req: &mut Request) {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = front.limits.client_ip(peer.as_ref(), req.headers());
    req.extensions_mut().insert(ClientIp(ip));
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` (canonical) is in one of the trusted proxy networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The socket peer, unless it is a trusted proxy: then the nearest address
/// in `X-Forwarded-For` that is not one, read from the right (the left part
/// is whatever the client chose to send).
pub fn resolve(peer: Option<&SocketAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    let mut client = canonical(peer);
    if !is_trusted(client, trusted) {
        return client;
    }
    let hops: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client, trusted) {
                    break;
                }
            }
            // Garbage: nothing to the left of it can be believed.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let h = headers(&["198.51.100.7"]);
        assert_eq!(resolve(Some(&stranger), &h, &trusted).to_string(), "203.0.113.9", "forged by an untrusted peer");
        assert_eq!(resolve(Some(&proxy), &h, &trusted).to_string(), "198.51.100.7");
        // The client may prepend anything; the nearest untrusted hop counts.
        let h = headers(&["1.1.1.1, 198.51.100.7, 10.9.9.9"]);
        assert_eq!(resolve(Some(&proxy), &h, &trusted).to_string(), "198.51.100.7");
        let h = headers(&["1.1.1.1", "198.51.100.7"]);
        assert_eq!(resolve(Some(&proxy), &h, &trusted).to_string(), "198.51.100.7");
        // Garbage stops the walk at the last address believed.
        let h = headers(&["198.51.100.7, not-an-ip"]);
        assert_eq!(resolve(Some(&proxy), &h, &trusted).to_string(), "10.1.2.3");
        assert_eq!(resolve(Some(&proxy), &HeaderMap::new(), &trusted).to_string(), "10.1.2.3");
        // v4-mapped v6 peers are v4.
        let mapped: SocketAddr = "[::ffff:203.0.113.9]:1".parse().unwrap();
        assert_eq!(resolve(Some(&mapped), &HeaderMap::new(), &trusted).to_string(), "203.0.113.9");
    }
}

/// Marks a request the ext_authz service made from an Envoy check
/// (`crate::envoy::ext_authz`): its peer is the client Envoy saw, not a
/// proxy, so a client's `X-Forwarded-For` there is no misconfiguration.
#[derive(Debug, Clone, Copy)]
pub struct ViaEnvoy;
