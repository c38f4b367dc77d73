//! TOTP (RFC 6238) as Gatehouse uses it: HMAC-SHA-1, 6 digits, 30-second
//! steps (what every authenticator app reads from an `otpauth://` URI),
//! ±1 step of clock skew, a 160-bit secret. Codes through `totp-rs`;
//! replay is the log's to refuse (`gatehouse_domain::factors`).

use gatehouse_domain::factors::STEP_SECS;
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Bytes of a new secret (RFC 4226 recommends 160 bits).
pub const SECRET_BYTES: usize = 20;

/// A fresh random secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    rand::random()
}

/// The AEAD context a user's secret is sealed under: it opens only on
/// that user's record.
pub fn context(user_id: &str) -> Vec<u8> {
    format!("gatehouse totp v1\n{user_id}").into_bytes()
}

/// The context of a secret shown during enrollment, before it is
/// confirmed: bound to the session that asked for it.
pub fn enrolling_context(user_id: &str, session_id: &str) -> Vec<u8> {
    format!("gatehouse totp enrolling v1\n{user_id}\n{session_id}").into_bytes()
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Option<Totp> {
    // `:` separates issuer and account in the URI's label.
    let issuer: String = issuer.chars().filter(|c| *c != ':').collect();
    let account: String = account.chars().filter(|c| *c != ':').collect();
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .ok()
}

/// The step whose code `code` is, within ±1 step of `now_secs`; `None`
/// for a wrong or malformed code.
pub fn check(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret, "", "")?.check(code, now_secs)
}

/// The code of `secret` at `time_secs` (the tests' own check of the RFC
/// vectors; the integration tests take codes from pyotp instead).
#[cfg(test)]
fn code_at(secret: &[u8], time_secs: u64) -> String {
    totp(secret, "", "").map(|t| t.generate(time_secs).to_string()).unwrap_or_default()
}

/// The secret as authenticator apps take it typed in: base32, no padding.
pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The `otpauth://totp/...` URI an authenticator app scans.
pub fn uri(secret: &[u8], issuer: &str, account: &str) -> Option<String> {
    totp(secret, issuer, account)?.to_url().ok()
}

/// `uri` as a QR code in inline SVG (no XML prologue, no style attribute:
/// it sits in a page under a strict CSP).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    let svg = code.render::<qrcode::render::svg::Color>().min_dimensions(200, 200).quiet_zone(true).build();
    let start = svg.find("<svg")?;
    Some(svg[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA-1 seed, 8-digit codes; ours are their
    /// last 6 digits (RFC 4226 truncation modulo 10^6).
    #[test]
    fn rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (time, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(seed, time), eight[2..], "at {time}");
            assert_eq!(check(seed, &eight[2..], time), Some(time / 30), "at {time}");
        }
    }

    #[test]
    fn one_step_of_skew_and_no_more() {
        let secret = new_secret();
        let t = 1_700_000_000;
        let code = code_at(&secret, t);
        assert_eq!(check(&secret, &code, t + 30), Some(t / 30));
        assert_eq!(check(&secret, &code, t - 30), Some(t / 30));
        assert_eq!(check(&secret, &code, t + 61), None);
        for junk in ["", "12345", "1234567", "12a456", " 123 456", "１２３４５６"] {
            assert_eq!(check(&secret, junk, t), None, "{junk:?}");
        }
    }

    #[test]
    fn the_uri_and_qr_code() {
        let secret = [7u8; 20];
        let uri = uri(&secret, "Acme: SSO", "ann@example.com").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains(&format!("secret={}", base32(&secret))), "{uri}");
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("style") && !svg.contains("<script"));
    }
}
