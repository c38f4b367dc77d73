//! One upstream OIDC provider as a voter talks to it, through the
//! `openidconnect` crate: discovery (cached an hour), the authorization
//! URL (code flow, PKCE S256, state, nonce), the code exchange with the ID
//! token's checks (signature against the provider's JWKS, `iss`, `aud`,
//! `exp`, `nonce`, `at_hash`), userinfo, refresh, and back-channel logout
//! tokens (checked with `jsonwebtoken` against the same JWKS).
//!
//! Only asymmetric signatures are taken (RSA, ECDSA, EdDSA): never `none`,
//! never an HMAC keyed with the client secret. A token signed by a key the
//! cached JWKS does not hold makes the provider's keys be fetched again (at
//! most every [`REFETCH_EVERY`]), which is how a key rotation is followed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardErrorResponse, StandardTokenResponse, SubjectIdentifier, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use super::rules::Claims;
use super::ProviderConfig;

/// Every claim beyond the standard ones, kept as JSON (groups, `hd`, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra(pub serde_json::Map<String, serde_json::Value>);
impl AdditionalClaims for Extra {}

type Fields = IdTokenFields<
    Extra,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenResponse = StandardTokenResponse<Fields, CoreTokenType>;
type OidcClient = openidconnect::Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long discovered metadata and keys are used before they are fetched again.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The soonest the keys are fetched again for a token signed by an unknown key.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);

/// The signatures taken: asymmetric only.
const ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What went wrong talking to a provider. The detail is for logs and the
/// audit log, never for a page.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered nonsense (retry later).
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused (a code used or expired, a refresh token revoked).
    #[error("the provider refused: {0}")]
    Refused(String),
    /// A token that fails its checks (signature, issuer, audience, expiry, nonce).
    #[error("the provider's token is not valid: {0}")]
    Invalid(String),
}

/// A person the provider vouched for at the end of a code flow.
#[derive(Clone)]
pub struct Verified {
    pub issuer: String,
    pub claims: Claims,
    pub refresh_token: Option<String>,
    /// The provider's session id (`sid`), if it sent one.
    pub sid: Option<String>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").field("issuer", &self.issuer).field("subject", &self.claims.subject).finish()
    }
}

/// What a refresh said.
pub enum Refreshed {
    /// Still there: the claims now (when the provider sent any) and the
    /// refresh token to keep (when it rotated it).
    Alive { claims: Option<Claims>, refresh_token: Option<String> },
    /// Gone: the refresh token is refused (`invalid_grant`): the person is
    /// disabled or removed upstream, or signed out everywhere.
    Gone(String),
}

/// A verified back-channel logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub subject: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Unix seconds.
    pub issued_at: u64,
}

struct Discovered {
    client: OidcClient,
    jwks: jsonwebtoken::jwk::JwkSet,
    fetched: Instant,
}

/// One provider: its settings and what discovery found.
pub struct Provider {
    pub config: ProviderConfig,
    http: reqwest::Client,
    redirect: RedirectUrl,
    found: RwLock<Option<Arc<Discovered>>>,
    /// Held while fetching (one fetch at a time).
    fetching: Mutex<()>,
    /// When the keys were last fetched again for an unknown key.
    last_refetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("id", &self.config.id).field("issuer", &self.config.issuer).finish()
    }
}

impl Provider {
    /// A provider whose callback is `redirect_uri`. Nothing is fetched yet.
    pub fn new(config: ProviderConfig, redirect_uri: &str) -> Result<Provider, String> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent("Gatehouse");
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?;
            http = http.tls_built_in_root_certs(false);
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http.build().map_err(|e| format!("HTTP client: {e}"))?;
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| format!("redirect URI: {e}"))?;
        Ok(Provider {
            config,
            http,
            redirect,
            found: RwLock::new(None),
            fetching: Mutex::new(()),
            last_refetch: Mutex::new(None),
        })
    }

    /// The callback URL the provider sends browsers back to.
    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }

    async fn fetch(&self) -> Result<Arc<Discovered>, ProviderError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| ProviderError::Unavailable(format!("{what}: {e}"));
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| unavailable("issuer", &e))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| unavailable("discovery", &error_chain(&e)))?;
        // The same keys again, as jsonwebtoken reads them (logout tokens).
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(meta.jwks_uri().url().clone())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("keys", &e))?
            .json()
            .await
            .map_err(|e| unavailable("keys", &e))?;
        let secret = self.config.client_secret.clone().map(ClientSecret::new);
        let client = OidcClient::from_provider_metadata(meta, ClientId::new(self.config.client_id.clone()), secret)
            .set_redirect_uri(self.redirect.clone());
        let found = Arc::new(Discovered { client, jwks, fetched: Instant::now() });
        *self.found.write().await = Some(found.clone());
        tracing::info!(provider = %self.config.id, "fetched the provider's metadata and keys");
        Ok(found)
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, ProviderError> {
        if let Some(d) = self.found.read().await.clone().filter(|d| d.fetched.elapsed() < METADATA_TTL) {
            return Ok(d);
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(d) = self.found.read().await.clone().filter(|d| d.fetched.elapsed() < METADATA_TTL) {
            return Ok(d);
        }
        self.fetch().await
    }

    /// Fetches the keys again, unless that was done for an unknown key
    /// within [`REFETCH_EVERY`]; `None` when it was (the keys at hand are as
    /// new as they get), so forged tokens cannot make this node hammer the
    /// provider. A fetch that fails is the provider being unavailable.
    async fn refetched(&self) -> Result<Option<Arc<Discovered>>, ProviderError> {
        {
            let mut last = self.last_refetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < REFETCH_EVERY) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let _one = self.fetching.lock().await;
        self.fetch().await.map(Some)
    }

    /// Where to send the browser: the code flow with PKCE S256.
    pub async fn authorize_url(&self, state: &str, nonce: &str, verifier: &str) -> Result<String, ProviderError> {
        let d = self.discovered().await?;
        let state = state.to_string();
        let nonce = nonce.to_string();
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.to_string()));
        let mut req = d.client.authorize_url(
            AuthenticationFlow::<openidconnect::core::CoreResponseType>::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        );
        for s in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        for (k, v) in &self.config.auth_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, _, _) = req.set_pkce_challenge(challenge).url();
        Ok(url.to_string())
    }

    /// Trades a code for tokens and checks the ID token (see the module docs).
    pub async fn exchange(&self, code: &str, verifier: &str, nonce: &str) -> Result<Verified, ProviderError> {
        let d = self.discovered().await?;
        let request = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| ProviderError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()));
        let tokens = request.request_async(&self.http).await.map_err(token_error)?;
        let nonce = Nonce::new(nonce.to_string());
        let (issuer, subject, all, sid) = match self.check_id_token(&d, &tokens, Some(&nonce)) {
            Err(ProviderError::Invalid(e)) if e.starts_with("signature") => match self.refetched().await? {
                Some(fresh) => self.check_id_token(&fresh, &tokens, Some(&nonce))?,
                None => return Err(ProviderError::Invalid(e)),
            },
            other => other?,
        }
        .ok_or_else(|| ProviderError::Invalid("the token response has no ID token".into()))?;
        let mut all = all;
        if self.config.userinfo {
            self.merge_userinfo(&d, tokens.access_token(), &subject, &mut all).await?;
        }
        let claims = Claims::from_json(&subject, &all, &self.config.rules);
        Ok(Verified { issuer, claims, refresh_token: tokens.refresh_token().map(|t| t.secret().clone()), sid })
    }

    /// The ID token in `tokens`, checked: (issuer, subject, every claim as
    /// JSON, sid). `nonce`: the one it must carry (none on a refresh).
    #[allow(clippy::type_complexity)]
    fn check_id_token(
        &self,
        d: &Discovered,
        tokens: &TokenResponse,
        nonce: Option<&Nonce>,
    ) -> Result<Option<(String, String, serde_json::Map<String, serde_json::Value>, Option<String>)>, ProviderError>
    {
        let Some(id_token) = tokens.id_token() else { return Ok(None) };
        let verifier = d.client.id_token_verifier().set_allowed_algs(ALGS);
        let checked = match nonce {
            Some(n) => id_token.claims(&verifier, n),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        };
        let claims = checked.map_err(|e| match e {
            openidconnect::ClaimsVerificationError::SignatureVerification(s) => {
                ProviderError::Invalid(format!("signature: {s}"))
            }
            e => ProviderError::Invalid(e.to_string()),
        })?;
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| ProviderError::Invalid(format!("signature: {e}")))?;
            let key = id_token.signing_key(&verifier).map_err(|e| ProviderError::Invalid(format!("signature: {e}")))?;
            let actual = AccessTokenHash::from_token(tokens.access_token(), alg, key)
                .map_err(|e| ProviderError::Invalid(format!("at_hash: {e}")))?;
            if actual != *expected {
                return Err(ProviderError::Invalid("at_hash does not match the access token".into()));
            }
        }
        // Everything as JSON: the standard claims and the provider's own.
        let mut all = claims.additional_claims().0.clone();
        if let Ok(serde_json::Value::Object(standard)) = serde_json::to_value(claims) {
            for (k, v) in standard {
                all.entry(k).or_insert(v);
            }
        }
        let sid = all.get("sid").and_then(|v| v.as_str()).map(str::to_string);
        Ok(Some((claims.issuer().to_string(), claims.subject().to_string(), all, sid)))
    }

    async fn merge_userinfo(
        &self,
        d: &Discovered,
        access: &AccessToken,
        subject: &str,
        all: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProviderError> {
        let req = d
            .client
            .user_info(access.clone(), Some(SubjectIdentifier::new(subject.to_string())))
            .map_err(|e| ProviderError::Unavailable(format!("no userinfo endpoint: {e}")))?;
        let info: openidconnect::UserInfoClaims<Extra, CoreGenderClaim> =
            req.request_async(&self.http).await.map_err(|e| match e {
                // Not reached, or the provider failing: ask again later.
                openidconnect::UserInfoError::Request(_) => {
                    ProviderError::Unavailable(format!("userinfo: {}", error_chain(&e)))
                }
                openidconnect::UserInfoError::Response(status, ..)
                    if status.is_server_error() || status.as_u16() == 429 =>
                {
                    ProviderError::Unavailable(format!("userinfo: {status}"))
                }
                e => ProviderError::Invalid(format!("userinfo: {}", error_chain(&e))),
            })?;
        // An address and its verification come from the same answer: an
        // address from userinfo is not vouched for by the ID token's flag.
        if info.email().is_some() {
            all.remove("email_verified");
        }
        // Userinfo speaks last: groups and addresses may be fresher there.
        for (k, v) in info.additional_claims().0.clone() {
            all.insert(k, v);
        }
        if let Ok(serde_json::Value::Object(standard)) = serde_json::to_value(&info) {
            for (k, v) in standard {
                all.insert(k, v);
            }
        }
        Ok(())
    }

    /// Asks the provider about a person again with their refresh token.
    pub async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<Refreshed, ProviderError> {
        let d = self.discovered().await?;
        let token = RefreshToken::new(refresh_token.to_string());
        let request = d
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| ProviderError::Unavailable(format!("no token endpoint: {e}")))?;
        let tokens = match request.request_async(&self.http).await.map_err(token_error) {
            Ok(t) => t,
            Err(ProviderError::Refused(why)) => return Ok(Refreshed::Gone(why)),
            Err(e) => return Err(e),
        };
        let checked = match self.check_id_token(&d, &tokens, None) {
            Err(ProviderError::Invalid(e)) if e.starts_with("signature") => match self.refetched().await? {
                Some(fresh) => self.check_id_token(&fresh, &tokens, None)?,
                None => return Err(ProviderError::Invalid(e)),
            },
            other => other?,
        };
        let mut all = match checked {
            Some((_, sub, all, _)) if sub == subject => Some(all),
            Some(_) => return Err(ProviderError::Invalid("a refreshed ID token names another subject".into())),
            None => None,
        };
        if self.config.userinfo {
            let mut merged = all.take().unwrap_or_default();
            self.merge_userinfo(&d, tokens.access_token(), subject, &mut merged).await?;
            all = Some(merged);
        }
        let claims = all.map(|all| Claims::from_json(subject, &all, &self.config.rules));
        Ok(Refreshed::Alive { claims, refresh_token: tokens.refresh_token().map(|t| t.secret().clone()) })
    }

    /// Checks a back-channel logout token (OIDC Back-Channel Logout 1.0,
    /// section 2.6): signature against the provider's keys, `iss`, `aud`,
    /// `iat` within the last [`LOGOUT_MAX_AGE_SECS`], the logout event, no
    /// `nonce`, a `jti`, and a `sub` or a `sid`.
    pub async fn verify_logout(&self, token: &str, now_secs: u64) -> Result<Logout, ProviderError> {
        let d = self.discovered().await?;
        match check_logout(&d.jwks, &self.config, token, now_secs) {
            Err(ProviderError::Invalid(e)) if e.starts_with("no key") => match self.refetched().await? {
                Some(fresh) => check_logout(&fresh.jwks, &self.config, token, now_secs),
                None => Err(ProviderError::Invalid(e)),
            },
            other => other,
        }
    }
}

/// How old a logout token may be.
pub const LOGOUT_MAX_AGE_SECS: u64 = 300;
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

#[derive(Deserialize)]
struct LogoutClaims {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    iat: u64,
    exp: Option<u64>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}

fn check_logout(
    jwks: &jsonwebtoken::jwk::JwkSet,
    config: &ProviderConfig,
    token: &str,
    now_secs: u64,
) -> Result<Logout, ProviderError> {
    use jsonwebtoken::Algorithm as A;
    let invalid = |m: String| ProviderError::Invalid(m);
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("malformed: {e}")))?;
    let asymmetric = matches!(
        header.alg,
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 | A::ES256 | A::ES384 | A::EdDSA
    );
    if !asymmetric {
        return Err(invalid(format!("algorithm {:?} is not taken", header.alg)));
    }
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| invalid("no key of the provider signed it".into()))?;
    // A key published for encryption, or for another algorithm, signs nothing here.
    if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
        return Err(invalid("the key is published for encryption".into()));
    }
    if jwk.common.key_algorithm.is_some_and(|a| a != jsonwebtoken::jwk::KeyAlgorithm::from(header.alg)) {
        return Err(invalid("the key is published for another algorithm".into()));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[config.issuer.trim_end_matches('/'), config.issuer.as_str()]);
    validation.set_audience(&[&config.client_id]);
    validation.set_required_spec_claims(&["iss", "aud", "iat"]);
    // Times are checked below against `now_secs`, one clock for all of them.
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<LogoutClaims>(token, &key, &validation).map_err(|e| invalid(e.to_string()))?;
    let c = data.claims;
    if c.iat > now_secs + 60 || c.iat + LOGOUT_MAX_AGE_SECS < now_secs {
        return Err(invalid("issued too long ago or in the future".into()));
    }
    if c.exp.is_some_and(|exp| exp + 60 < now_secs) {
        return Err(invalid("expired".into()));
    }
    if !c.events.as_ref().is_some_and(|e| e.get(LOGOUT_EVENT).is_some_and(|v| v.is_object())) {
        return Err(invalid("not a logout token (no logout event)".into()));
    }
    if c.nonce.is_some() {
        return Err(invalid("a logout token carries no nonce".into()));
    }
    let jti = c.jti.filter(|j| !j.is_empty() && j.len() <= 256).ok_or_else(|| invalid("no jti".into()))?;
    let sub = c.sub.filter(|s| !s.is_empty());
    let sid = c.sid.filter(|s| !s.is_empty());
    if sub.is_none() && sid.is_none() {
        return Err(invalid("neither sub nor sid".into()));
    }
    Ok(Logout { subject: sub, sid, jti, issued_at: c.iat })
}

/// A token endpoint's error. Only `invalid_grant` speaks of the person (a
/// code used or expired, a refresh token revoked: disabled, removed or
/// signed out upstream); anything else (`invalid_client` after the client
/// secret expired, `server_error`, rate limits, the network) is the
/// provider or our registration failing, never a reason to sign anyone out.
fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) if *r.error() == CoreErrorResponseType::InvalidGrant => {
            ProviderError::Refused(r.error().to_string())
        }
        RequestTokenError::ServerResponse(r) => {
            ProviderError::Unavailable(format!("the token endpoint answered {}", r.error()))
        }
        e => ProviderError::Unavailable(error_chain(&e)),
    }
}

/// An error with its causes, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s += ": ";
        s += &cause.to_string();
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::signature::KeyPair as _;

    const ISS: &str = "https://idp.example.com";
    const NOW: u64 = 1_800_000_000;

    fn config() -> ProviderConfig {
        ProviderConfig {
            id: "corp".into(),
            name: "Corp".into(),
            issuer: ISS.into(),
            client_id: "gatehouse".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            ca_pem: None,
            userinfo: false,
            rules: Default::default(),
            create_users: true,
            offboard: super::super::Offboard::Disable,
            auth_params: vec![],
            timeout: Duration::from_secs(1),
        }
    }

    /// An Ed25519 key: the encoding half, and its JWK with `extra` fields.
    fn key(extra: serde_json::Value) -> (jsonwebtoken::EncodingKey, jsonwebtoken::jwk::JwkSet) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let mut jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1" });
        for (k, v) in extra.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        let set = serde_json::from_value(serde_json::json!({ "keys": [jwk] })).unwrap();
        (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), set)
    }

    fn token(enc: &jsonwebtoken::EncodingKey, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, enc).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "aud": "gatehouse", "iat": NOW - 10, "exp": NOW + 110, "jti": "j-1", "sub": "s-1",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        })
    }

    #[test]
    fn a_logout_token_is_taken_only_as_the_spec_says() {
        let (enc, jwks) = key(serde_json::json!({ "alg": "EdDSA", "use": "sig" }));
        let ok = check_logout(&jwks, &config(), &token(&enc, good()), NOW).unwrap();
        assert_eq!((ok.subject.as_deref(), ok.sid, ok.jti.as_str()), (Some("s-1"), None, "j-1"));
        let changed = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good();
            f(&mut c);
            check_logout(&jwks, &config(), &token(&enc, c), NOW)
        };
        type Change<'a> = &'a dyn Fn(&mut serde_json::Value);
        let refused: [(&str, Change); 9] = [
            ("another audience", &|c| c["aud"] = "someone-else".into()),
            ("another issuer", &|c| c["iss"] = "https://evil.example.com".into()),
            ("issued too long ago (exp still ahead)", &|c| {
                c["iat"] = (NOW - LOGOUT_MAX_AGE_SECS - 61).into();
                c["exp"] = (NOW + 600).into();
            }),
            ("issued in the future", &|c| c["iat"] = (NOW + 120).into()),
            ("expired", &|c| c["exp"] = (NOW - 120).into()),
            ("no jti", &|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            ("a nonce", &|c| c["nonce"] = "n".into()),
            ("no logout event", &|c| c["events"] = serde_json::json!({})),
            ("neither sub nor sid", &|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ];
        for (why, f) in refused {
            assert!(matches!(changed(f), Err(ProviderError::Invalid(_))), "{why}");
        }
        // A sid alone is enough.
        let by_sid = changed(&|c| {
            c.as_object_mut().unwrap().remove("sub");
            c["sid"] = "sid-1".into();
        })
        .unwrap();
        assert_eq!(by_sid.sid.as_deref(), Some("sid-1"));
    }

    #[test]
    fn a_logout_token_needs_a_signing_key_of_the_provider_for_its_algorithm() {
        let (enc, _) = key(serde_json::json!({}));
        let (_, other) = key(serde_json::json!({}));
        let t = token(&enc, good());
        assert!(matches!(check_logout(&other, &config(), &t, NOW), Err(ProviderError::Invalid(_))), "another key");
        let (enc, for_rsa) = key(serde_json::json!({ "alg": "RS256" }));
        let e = check_logout(&for_rsa, &config(), &token(&enc, good()), NOW).unwrap_err();
        assert!(e.to_string().contains("another algorithm"), "{e}");
        let (enc, for_enc) = key(serde_json::json!({ "use": "enc" }));
        let e = check_logout(&for_enc, &config(), &token(&enc, good()), NOW).unwrap_err();
        assert!(e.to_string().contains("encryption"), "{e}");
        // HMAC (with anything as the secret) and unsigned tokens.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &good(),
            &jsonwebtoken::EncodingKey::from_secret(b"client-secret").unwrap(),
        )
        .unwrap();
        let (_, jwks) = key(serde_json::json!({}));
        assert!(check_logout(&jwks, &config(), &hs, NOW).unwrap_err().to_string().contains("not taken"));
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(serde_json::json!({ "alg": "none", "typ": "JWT" })), b64(good()));
        assert!(matches!(check_logout(&jwks, &config(), &none, NOW), Err(ProviderError::Invalid(_))));
        assert!(matches!(check_logout(&jwks, &config(), "not a token", NOW), Err(ProviderError::Invalid(_))));
    }
}
