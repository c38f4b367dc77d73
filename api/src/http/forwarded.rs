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
//! - a URI with a `#` (nginx passes `$request_uri` raw, and a backend that
//!   keeps `#` in the path would resolve `/public#/../admin` past the rule);
//! - a path that is not absolute, or has `//`, `.` or `..` segments,
//!   backslashes, or `;` parameters (`/ops;x/secret` is `/ops/secret` to
//!   Java servers), or an escape of a separator, a dot, `%`, `;`, `?`, `#`
//!   or a control character (`%2F`, `%2E`, `%25`, …);
//! - a host that is a list (`a,b`), has a user part, is not a hostname,
//!   IPv4 address or bracketed IPv6 literal, or is numeric but not a
//!   canonical IPv4 address (`10.1`, `0x0a.0.0.1`, which resolvers read as
//!   addresses).
//!
//! Escapes of unreserved characters are decoded before matching (`/%6Fps`
//! is `/ops`, as every backend reads it); other escapes (`%20`, UTF-8) are
//! kept, with upper-case hex, so one spelling matches one rule.
//!
//! Hosts are normalised before matching: lower case, the port stripped, one
//! trailing dot stripped (`Admin.Example.com.:443` is `admin.example.com`:
//! Traefik sends the Host as the client wrote it).

use std::borrow::Cow;

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

/// The protected request's path (`X-Forwarded-Uri` without its query), if
/// it has exactly one reading.
pub fn path(headers: &HeaderMap) -> Result<Cow<'_, str>, Ambiguous> {
    plain_path(single(headers, "x-forwarded-uri")?).ok_or(Ambiguous)
}

/// The protected request's host (`X-Forwarded-Host`), normalised.
pub fn host(headers: &HeaderMap) -> Result<String, Ambiguous> {
    normalise_host(single(headers, "x-forwarded-host")?).ok_or(Ambiguous)
}

/// The protected request's URL as the browser asked for it
/// (`X-Forwarded-Proto`, `-Host`, `-Uri`; https without a proto), raw:
/// only ever a return URL, which the sign-in pages check before use.
pub fn original_url(headers: &HeaderMap) -> Option<String> {
    let proto = match headers.get("x-forwarded-proto") {
        None => "https",
        Some(_) => single(headers, "x-forwarded-proto").ok().filter(|p| matches!(*p, "https" | "http"))?,
    };
    let (host, uri) = (single(headers, "x-forwarded-host").ok()?, single(headers, "x-forwarded-uri").ok()?);
    uri.starts_with('/').then(|| format!("{proto}://{host}{uri}"))
}

/// The path of a request URI in the one form rules compare, if it has
/// exactly one reading (see the module doc).
pub fn plain_path(uri: &str) -> Option<Cow<'_, str>> {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) || uri.contains('#') {
        return None;
    }
    let path = uri.split('?').next().unwrap_or("");
    if !path.starts_with('/') || path.contains(['\\', ';']) {
        return None;
    }
    let path = if path.contains('%') { Cow::Owned(decode_unreserved(path)?) } else { Cow::Borrowed(path) };
    let ambiguous = path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..");
    (!ambiguous).then_some(path)
}

/// `path` with escapes of unreserved characters decoded and every other
/// escape in upper case; `None` for an escape that could change how the
/// path splits (a separator, a dot, `%`, `;`, `?`, `#`, a control) or a
/// malformed one.
fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        match v {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'~' => out.push(v as char),
            b'/' | b'\\' | b'.' | b'%' | b';' | b'?' | b'#' | 0..=0x1f | 0x7f => return None,
            _ => {
                out.push('%');
                out.push_str(&std::str::from_utf8(hex).ok()?.to_ascii_uppercase());
            }
        }
        i += 3;
    }
    Some(out)
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
    // Numeric but not a canonical address: resolvers read `10.1` or
    // `0x0a.0.0.1` as addresses, so they would dodge a dotted-quad rule.
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit()) || last.to_ascii_lowercase().starts_with("0x");
    if numeric && name.parse::<std::net::Ipv4Addr>().is_err() {
        return None;
    }
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
        for (uri, want) in [
            ("/ops", "/ops"),
            ("/ops/x?y=1", "/ops/x"),
            ("/", "/"),
            ("/%6Fps/x", "/ops/x"),
            ("/files/My%20Doc.pdf", "/files/My%20Doc.pdf"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a?q=%2F..%00", "/a"),
        ] {
            assert_eq!(path(&with("x-forwarded-uri", uri.as_bytes())).as_deref(), Ok(want), "{uri}");
        }
        let hostile: &[&[u8]] = &[
            b"/public#/../admin/x",
            b"/a#f",
            b"/ops%2Fsecret",
            b"/ops/%2e%2e/admin",
            b"/ops%25",
            b"/ops%3bx",
            b"/ops%00",
            b"/ops%zz",
            b"/ops%2",
            b"/ops/secret?\xff",
            b"/ops/\xc3\xa9",
            b"/ops;x/secret",
            b"/ops/secret;jsessionid=1",
            b"//ops",
            b"/./ops",
            b"/x/../ops",
            b"\\ops",
            b"ops",
            b"/ops secret",
            b"/ops\tx",
            b"?x",
        ];
        for &raw in hostile {
            assert!(path(&with("x-forwarded-uri", raw)).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(path(&HeaderMap::new()).as_deref(), Err(&Ambiguous), "missing");
        let mut twice = with("x-forwarded-uri", b"/public");
        twice.append("x-forwarded-uri", HeaderValue::from_static("/ops"));
        assert!(path(&twice).is_err(), "two values");
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
        let hostile: &[&[u8]] = &[
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
            b"10.1",
            b"0x0a.0.0.1",
            b"010.0.0.1",
            b"example.123",
        ];
        for &raw in hostile {
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
