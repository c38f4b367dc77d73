//! The protected request behind a forward-auth call, read from
//! `X-Forwarded-Host` and `X-Forwarded-Uri`: the one parser that route rules
//! and rate-limit policies share, so both read a request the same way.
//!
//! A rule must not be dodged by how a request is spelled, so everything with
//! more than one reading is [`Ambiguous`] and refused by the caller (403)
//! whenever a rule or policy looks at it; nothing falls back to `/` or `""`:
//!
//! - a header that is missing, repeated, or not visible ASCII (nginx
//!   forwards `$request_uri` raw: `/ops?\xff` arrives as bytes);
//! - a path that is not absolute, or has `//`, `.` or `..` segments,
//!   percent-escapes, backslashes, or `;` parameters (`/ops;x/secret` is
//!   `/ops/secret` to Java servers);
//! - a host that is a list (`a,b`), has a user part, or is not a hostname,
//!   IPv4 address or bracketed IPv6 literal.
//!
//! Hosts are normalised before matching: lower case, the port stripped, one
//! trailing dot stripped (`Admin.Example.com.:443` is `admin.example.com`:
//! Traefik sends the Host as the client wrote it).

use axum::http::HeaderMap;

/// The forwarded request could be read more than one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The one value of `name`, as visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Ambiguous> {
    let mut values = headers.get_all(name).iter();
    let (Some(v), None) = (values.next(), values.next()) else { return Err(Ambiguous) };
    let bytes = v.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Ambiguous);
    }
    std::str::from_utf8(bytes).map_err(|_| Ambiguous)
}

/// The protected request's path (`X-Forwarded-Uri` without query and
/// fragment), if it has exactly one reading.
pub fn path(headers: &HeaderMap) -> Result<&str, Ambiguous> {
    plain_path(single(headers, "x-forwarded-uri")?).ok_or(Ambiguous)
}

/// The protected request's host (`X-Forwarded-Host`), normalised.
pub fn host(headers: &HeaderMap) -> Result<String, Ambiguous> {
    normalise_host(single(headers, "x-forwarded-host")?).ok_or(Ambiguous)
}

/// The path of a request URI, if it has exactly one reading.
pub fn plain_path(uri: &str) -> Option<&str> {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let ambiguous = !path.starts_with('/')
        || path.contains("//")
        || path.contains(['%', '\\', ';'])
        || path.split('/').any(|seg| seg == "." || seg == "..");
    (!ambiguous).then_some(path)
}

/// `host` in the form rules compare: lower case, without port or one
/// trailing dot; `None` if it is not one well-formed host.
pub fn normalise_host(host: &str) -> Option<String> {
    let (name, port) = if host.starts_with('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8443`.
        let end = host.find(']')?;
        let (name, after) = host.split_at(end + 1);
        name[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        (name, if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if name.starts_with('[') {
        return Some(name.to_ascii_lowercase());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)).then(|| name.to_ascii_lowercase())
}

/// `prefix` covers `path` on a segment boundary: `/ops` covers `/ops` and
/// `/ops/x`, not `/opsx`. With `ignore_case`, letters match in either case
/// (for backends that serve `/OPS` as `/ops`).
pub fn under(path: &str, prefix: &str, ignore_case: bool) -> bool {
    let Some(head) = path.get(..prefix.len()) else { return false };
    let same = if ignore_case { head.eq_ignore_ascii_case(prefix) } else { head == prefix };
    let rest = &path[prefix.len()..];
    same && (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: &'static str, raw: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_bytes(raw).unwrap());
        h
    }

    #[test]
    fn one_plain_path_or_none() {
        for (uri, want) in [("/ops", "/ops"), ("/ops/x?y=1", "/ops/x"), ("/a#f", "/a"), ("/", "/")] {
            assert_eq!(path(&with("x-forwarded-uri", uri.as_bytes())), Ok(want), "{uri}");
        }
        let hostile: [&[u8]; 13] = [
            b"/ops/secret?\xff",
            b"/ops/\xc3\xa9",
            b"/ops;x/secret",
            b"/ops/secret;jsessionid=1",
            b"//ops",
            b"/./ops",
            b"/x/../ops",
            b"/%6Fps",
            b"\\ops",
            b"ops",
            b"/ops secret",
            b"/ops\tx",
            b"?x",
        ];
        for raw in hostile {
            assert_eq!(path(&with("x-forwarded-uri", raw)), Err(Ambiguous), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(path(&HeaderMap::new()), Err(Ambiguous), "missing");
        let mut twice = with("x-forwarded-uri", b"/public");
        twice.append("x-forwarded-uri", HeaderValue::from_static("/ops"));
        assert_eq!(path(&twice), Err(Ambiguous), "two values");
    }

    #[test]
    fn hosts_are_normalised_or_refused() {
        for (raw, want) in [
            ("admin.example.com", "admin.example.com"),
            ("ADMIN.Example.com", "admin.example.com"),
            ("admin.example.com:443", "admin.example.com"),
            ("admin.example.com.", "admin.example.com"),
            ("admin.example.com.:8443", "admin.example.com"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[FE80::1]", "[fe80::1]"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(host(&with("x-forwarded-host", raw.as_bytes())).as_deref(), Ok(want), "{raw}");
        }
        let hostile: [&[u8]; 14] = [
            b"a.example,admin.example",
            b"admin.example.com:",
            b"admin.example.com:x",
            b"admin.example.com:443:1",
            b"user@admin.example.com",
            b"admin.example.com/x",
            b"admin..example.com",
            b"admin.example.com..",
            b".",
            b"-admin.example.com",
            b"adm\xc3\xafn.example.com",
            b"[::1",
            b"[::1]x",
            b"[nothex]",
        ];
        for raw in hostile {
            assert_eq!(host(&with("x-forwarded-host", raw)), Err(Ambiguous), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(host(&HeaderMap::new()), Err(Ambiguous), "missing");
    }

    #[test]
    fn prefixes_cover_whole_segments_in_the_case_asked() {
        assert!(under("/ops", "/ops", false));
        assert!(under("/ops/x", "/ops", false));
        assert!(!under("/opsx", "/ops", false));
        assert!(!under("/OPS/x", "/ops", false));
        assert!(under("/OPS/x", "/ops", true));
        assert!(under("/Ops", "/oPs", true));
        assert!(!under("/OPSX", "/ops", true));
        assert!(under("/anything", "/", false));
        assert!(!under("/o", "/ops", true));
    }
}
