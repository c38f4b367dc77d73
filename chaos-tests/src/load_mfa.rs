//! `password-login --totp`: people who sign in with a password and a code
//! from an authenticator app, beside people with a password alone.
//!
//! Each person enrolls the way a browser does (the login page, "my
//! account"'s `/account/totp`, a code confirming the app), so the bench
//! measures the product, not a shortcut into the log. Codes are made here
//! (RFC 6238 through `totp-rs`, as an app would). A step is accepted once
//! per person, so each login takes the next step its person has not used
//! (at most the one after the current): a person signs in at most three
//! times per 30 s window, which sets how many people a run needs.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// A person with an authenticator app: the secret, and the newest step
/// this run has used for them.
pub struct Person {
    pub username: String,
    totp: Totp,
    last_step: AtomicU64,
}

/// An authenticator app's view of `secret`: SHA-1, six digits, 30 s.
fn app(secret: Vec<u8>) -> anyhow::Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_issuer(Some(String::new()))
        .with_account_name(String::new())
        .build()
        .map_err(|e| anyhow!("a TOTP of the offered secret: {e:?}"))
}

impl Person {
    /// The code for the next step this person may use now, or `None` when
    /// they have used every step the server accepts at the moment.
    pub fn next_code(&self, unix_secs: u64) -> Option<String> {
        let now = unix_secs / 30;
        loop {
            let last = self.last_step.load(Ordering::Relaxed);
            let step = (last + 1).max(now.saturating_sub(1));
            if step > now + 1 {
                return None;
            }
            if self.last_step.compare_exchange(last, step, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return Some(self.totp.generate(step * 30).to_string());
            }
        }
    }
}

/// The value of `name="<field>" value="…"` (or an element's text by id)
/// in a page.
fn field(page: &str, name: &str) -> anyhow::Result<String> {
    let at = format!("name=\"{name}\" value=\"");
    let start = page.find(&at).ok_or_else(|| anyhow!("no {name} field on the page"))? + at.len();
    let end = page[start..].find('"').ok_or_else(|| anyhow!("an unterminated {name} field"))?;
    Ok(page[start..start + end].to_string())
}

fn element_text(page: &str, id: &str) -> anyhow::Result<String> {
    let at = format!("id=\"{id}\">");
    let start = page.find(&at).ok_or_else(|| anyhow!("no #{id} on the page"))? + at.len();
    let end = page[start..].find('<').ok_or_else(|| anyhow!("an unterminated #{id}"))?;
    Ok(page[start..start + end].to_string())
}

/// The cookies a response sets, as `name=value` pairs.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next().map(str::to_string))
        .collect()
}

/// Enrolls an authenticator app for `username` through the pages of the
/// node at `node` (host:port), as a browser would.
pub async fn enroll(http: &reqwest::Client, node: &str, username: &str, password: &str) -> anyhow::Result<Person> {
    let base = format!("http://{node}");
    let login = http.get(format!("{base}/login")).send().await?;
    let mut cookies = set_cookies(&login);
    let csrf = field(&login.text().await?, "csrf")?;
    let cookie = |c: &[String]| c.join("; ");
    let form = [("csrf", csrf.as_str()), ("rd", ""), ("username", username), ("password", password)];
    let signed_in = http.post(format!("{base}/login")).header("cookie", cookie(&cookies)).form(&form).send().await?;
    anyhow::ensure!(signed_in.status().is_redirection(), "signing in as {username}: {}", signed_in.status());
    cookies.extend(set_cookies(&signed_in));
    let offer = http.get(format!("{base}/account/totp")).header("cookie", cookie(&cookies)).send().await?;
    let page = offer.text().await?;
    let secret = element_text(&page, "totp-secret")?;
    let sealed = field(&page, "sealed")?;
    let bytes = Secret::try_from_base32(&secret).map_err(|e| anyhow!("the offered secret: {e:?}"))?.to_vec();
    let totp = app(bytes)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let code = totp.generate(now).to_string();
    let form = [("csrf", csrf.as_str()), ("sealed", sealed.as_str()), ("code", code.as_str()), ("password", password)];
    let done = http.post(format!("{base}/account/totp")).header("cookie", cookie(&cookies)).form(&form).send().await?;
    let status = done.status();
    let page = done.text().await?;
    if !(status.is_success() && page.contains("recovery-codes")) {
        // What the page said (its headline and first paragraph).
        let said = page.split("<h1>").nth(1).unwrap_or("").split("</p>").next().unwrap_or("").replace('\n', " ");
        anyhow::bail!("enrolling {username}: {status}: {said}");
    }
    // The enrolling code's step is spent.
    Ok(Person { username: username.to_string(), totp, last_step: AtomicU64::new(now / 30) })
}

/// Enrolls `people` (already created with `password`) in parallel,
/// `width` at a time, across `nodes`.
pub async fn enroll_all(
    nodes: &[String],
    people: &[String],
    password: &str,
    width: usize,
) -> anyhow::Result<Vec<Person>> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let mut out = Vec::with_capacity(people.len());
    for (chunk_index, chunk) in people.chunks(width).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (http, node, name) =
                    (http.clone(), nodes[(chunk_index * width + i) % nodes.len()].clone(), name.clone());
                let password = password.to_string();
                tokio::spawn(async move { enroll(&http, &node, &name, &password).await })
            })
            .collect();
        for t in tasks {
            out.push(t.await.context("an enrollment task")??);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_uses_each_step_once_and_never_past_the_next() {
        let p = Person {
            username: "a".into(),
            totp: app(b"12345678901234567890".to_vec()).unwrap(),
            last_step: AtomicU64::new(0),
        };
        let at = 59 * 30;
        // The previous step, the current one and the next, then none.
        let codes: Vec<_> = (0..4).map(|_| p.next_code(at)).collect();
        assert!(codes[..3].iter().all(Option::is_some) && codes[3].is_none());
        assert_eq!(codes[0], Some(p.totp.generate(58 * 30).to_string()));
        // RFC 6238's SHA-1 vector at T = 59 s, six digits.
        assert_eq!(p.totp.generate(59).to_string(), "287082");
    }

    #[test]
    fn the_page_fields_are_read() {
        let page = r#"<code class="key" id="totp-secret">ABC</code><input type="hidden" name="sealed" value="xyz">"#;
        assert_eq!(element_text(page, "totp-secret").unwrap(), "ABC");
        assert_eq!(field(page, "sealed").unwrap(), "xyz");
        assert!(field(page, "csrf").is_err());
    }
}
