//! The voter's `SignInService`: a stateless front sends on a login, a
//! logout or the revocation of one's own session, and the voter decides as
//! its own HTTP front would ([`super::check`]), with its own settings
//! (session lifetime, lockouts) and its own argon2 pool. Admitted with a
//! front's secret ([`gatehouse_cluster::fronts`]). The client address and
//! user agent are the front's word: lockouts by address hold only as far as
//! the fronts are honest (the lockout of the account itself holds anyway).

use std::net::IpAddr;

use std::sync::Arc;

use gatehouse_cluster::fronts::{FrontId, Fronts};
use gatehouse_cluster::Cluster;
use gatehouse_proto::front as pb;
use gatehouse_proto::front::sign_in_service_server::{SignInService, SignInServiceServer};
use tonic::{Request, Response, Status};

use super::check::{self, Attempt};
use super::links::{self, LinkRequest, LinkSpend};
use super::own::{self, OwnKey};
use crate::http::front::Front;
use crate::mfa::check::Presented;
use crate::mfa::passkey;
use crate::sso::logout::LogoutError;
use crate::sso::sign_in::{Callback, SsoError};
use crate::ApiError;

/// Sign-ins (logins, link requests and spends) one front may have under
/// way on this voter at once: a stolen front's secret cannot take the
/// whole argon2 pool.
const LOGINS_PER_FRONT: usize = 8;

pub struct SignIns {
    front: Front,
    under_way: std::sync::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Semaphore>>>,
}

/// The service, behind the front check: `front` is this voter's own HTTP
/// front state (settings, argon2 pool).
pub fn server(
    front: Front,
    fronts: Fronts,
    cluster: Cluster,
) -> tonic::service::interceptor::InterceptedService<
    SignInServiceServer<SignIns>,
    impl tonic::service::Interceptor + Clone,
> {
    let svc =
        SignInServiceServer::new(SignIns { front, under_way: Default::default() }).max_decoding_message_size(64 << 10);
    let trust = cluster.peers().tls().map(|t| t.trust().clone());
    tonic::service::interceptor::InterceptedService::new(svc, move |req| {
        fronts.admit(|id| cluster.is_member(id), trust.as_ref(), req)
    })
}

fn login_response(opened: check::Opened) -> pb::LoginResponse {
    pb::LoginResponse {
        user_id: opened.user_id,
        username: opened.username,
        roles: opened.roles,
        session_id: opened.session_id,
        token: opened.token,
        expires_at: opened.expires_at,
        log_index: opened.log_index,
        factor_due: opened.factor_due,
    }
}

#[allow(clippy::result_large_err)]
fn hash32(bytes: &[u8]) -> Result<[u8; 32], Status> {
    bytes.try_into().map_err(|_| ApiError::InvalidArgument("browser_sha256 must be 32 bytes".into()).into())
}

#[allow(clippy::result_large_err)]
fn client_ip(ip: &str) -> Result<IpAddr, Status> {
    ip.parse().map_err(|_| ApiError::InvalidArgument("client_ip must be an IP address".into()).into())
}

impl SignIns {
    /// A place among the sign-ins the calling front has under way here.
    #[allow(clippy::result_large_err)]
    fn place<T>(&self, req: &Request<T>) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let front = req.extensions().get::<FrontId>().map_or(0, |f| f.0);
        let permits = {
            let mut all = self.under_way.lock().unwrap_or_else(|p| p.into_inner());
            all.entry(front).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(LOGINS_PER_FRONT))).clone()
        };
        permits.try_acquire_owned().map_err(|_| ApiError::Busy.into())
    }

    /// The caller `credential` belongs to, resolved here again.
    async fn caller(&self, credential: &str) -> Result<crate::identity::Principal, ApiError> {
        let node = &self.front.node;
        if !node.ensure_fresh().await {
            return Err(ApiError::Stale);
        }
        crate::identity::resolve(node, credential).await
    }
}

#[tonic::async_trait]
impl SignInService for SignIns {
    #[tracing::instrument(level = "info", name = "front.login", skip_all, fields(outcome))]
    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let attempt = Attempt {
            client_ip: client_ip(&r.client_ip)?,
            username: r.username,
            password: r.password,
            user_agent: r.user_agent,
            second_factor: (!r.second_factor.is_empty()).then_some(r.second_factor),
            factor_later: r.factor_later,
            device_token: (!r.device_token.is_empty()).then_some(r.device_token),
        };
        let node = &self.front.node;
        if !node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        // The login endpoint's strict limits, by the address the front
        // names, counted here (the front leaves them to its voter).
        let limits = &self.front.limits;
        let ip = attempt.client_ip;
        limits.login_attempt(ip).await?;
        let opened = match check::login(&self.front, attempt).await {
            Ok(o) => o,
            Err(e) => {
                tracing::Span::current().record("outcome", "denied");
                if e == ApiError::InvalidCredentials {
                    limits.login_refused(ip).await?;
                }
                return Err(e.into());
            }
        };
        tracing::Span::current().record("outcome", "ok");
        Ok(Response::new(login_response(opened)))
    }

    /// Admitted under the login endpoint's limits, by the address the
    /// front names; the rest runs after the answer ([`links::request`]).
    async fn request_link(&self, req: Request<pb::LinkRequest>) -> Result<Response<pb::LinkRequestResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let request = LinkRequest {
            browser_sha256: hash32(&r.browser_sha256)?,
            client_ip: client_ip(&r.client_ip)?,
            email: r.email,
            return_to: r.return_to,
        };
        if request.email.len() > links::MAX_EMAIL || request.return_to.len() > crate::pages::return_to::MAX_LEN {
            return Err(ApiError::InvalidArgument("email or return_to too long".into()).into());
        }
        // The front checked the return URL against its domains; this
        // voter's own must allow it too, or the mail carries none.
        let pages = self.front.config.pages.as_deref();
        let allowed = pages.and_then(|p| p.return_domains.check(&request.return_to)).unwrap_or_default();
        let request = LinkRequest { return_to: allowed, ..request };
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        self.front.limits.login_attempt(request.client_ip).await?;
        self.front.sign_in.request_link(&self.front, request).await?;
        Ok(Response::new(pb::LinkRequestResponse {}))
    }

    async fn spend_link(&self, req: Request<pb::SpendLinkRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let spend = LinkSpend {
            browser_sha256: hash32(&r.browser_sha256)?,
            client_ip: client_ip(&r.client_ip)?,
            token: r.token,
            user_agent: r.user_agent,
        };
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        self.front.limits.login_attempt(spend.client_ip).await?;
        let opened = links::spend(&self.front, spend).await?;
        Ok(Response::new(login_response(opened)))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = match self.caller(&r.credential).await {
            Ok(p) => p,
            // A session still waiting for its second factor ends as well
            // (the second step's "cancel").
            Err(ApiError::Unauthenticated) => crate::mfa::check::waiting_principal(&self.front.node, &r.credential)
                .ok_or(ApiError::Unauthenticated)?,
            Err(e) => return Err(e.into()),
        };
        let log_index = check::logout(&self.front.node, &p, &ip.to_string()).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    async fn revoke_own_session(
        &self,
        req: Request<pb::RevokeOwnSessionRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let log_index = check::revoke_own(&self.front.node, &p, &r.session_id, &ip.to_string()).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    async fn create_own_key(
        &self,
        req: Request<pb::CreateOwnKeyRequest>,
    ) -> Result<Response<pb::CreateOwnKeyResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let role = Some(r.role).filter(|role| !role.is_empty());
        let key = OwnKey { name: r.name, role, days: r.days, password: r.password, code: r.code };
        let made = own::create_key(&self.front, &p, key, ip).await?;
        Ok(Response::new(pb::CreateOwnKeyResponse { key_id: made.key_id, key: made.key, log_index: made.log_index }))
    }

    async fn revoke_own_key(
        &self,
        req: Request<pb::RevokeOwnKeyRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let log_index = own::revoke_key(&self.front, &p, &r.key_id, ip).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    /// Under the calling front's sign-in budget and the login limits: it
    /// checks a password.
    async fn change_own_password(
        &self,
        req: Request<pb::ChangeOwnPasswordRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let opened =
            own::change_password(&self.front, &p, r.current_password, r.new_password, ip, r.user_agent).await?;
        Ok(Response::new(login_response(opened)))
    }

    async fn start_upstream(
        &self,
        req: Request<pb::StartUpstreamRequest>,
    ) -> Result<Response<pb::StartUpstreamResponse>, Status> {
        let r = req.into_inner();
        if r.provider.len() > 32 || r.return_to.len() > crate::pages::return_to::MAX_LEN {
            return Err(ApiError::InvalidArgument("provider or return_to too long".into()).into());
        }
        // The front checked the return URL against its domains; this
        // voter's own must allow it too, or the flow carries none.
        let pages = self.front.config.pages.as_deref();
        let rd = pages.and_then(|p| p.return_domains.check(&r.return_to)).unwrap_or_default();
        match crate::sso::sign_in::start(&self.front, &r.provider, &rd).await {
            Ok(s) => Ok(Response::new(pb::StartUpstreamResponse { url: s.url, flow_cookie: s.cookie })),
            Err(SsoError::Api(e)) => Err(e.into()),
            Err(SsoError::Unavailable | SsoError::Refused(_)) => Err(ApiError::Unavailable { leader: None }.into()),
        }
    }

    /// Under the calling front's sign-in budget: each call may reach the provider.
    async fn finish_upstream(
        &self,
        req: Request<pb::FinishUpstreamRequest>,
    ) -> Result<Response<pb::FinishUpstreamResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let cb = Callback {
            client_ip: client_ip(&r.client_ip)?,
            provider: r.provider,
            code: r.code,
            state: r.state,
            flow: r.flow_cookie,
            user_agent: r.user_agent,
        };
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        // The login limits, by the address the front names.
        self.front.limits.login_attempt(cb.client_ip).await?;
        let refused = |word: &str| pb::FinishUpstreamResponse { refused: word.to_string(), ..Default::default() };
        let answer = match crate::sso::sign_in::finish(&self.front, cb).await {
            Ok((opened, return_to)) => {
                pb::FinishUpstreamResponse { session: Some(login_response(opened)), return_to, refused: String::new() }
            }
            Err(SsoError::Refused(why)) => refused(why.word()),
            Err(SsoError::Unavailable) => refused("unavailable"),
            Err(SsoError::Api(e)) => return Err(e.into()),
        };
        Ok(Response::new(answer))
    }

    async fn upstream_logout(
        &self,
        req: Request<pb::UpstreamLogoutRequest>,
    ) -> Result<Response<pb::UpstreamLogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let outcome =
            |word: &str, n: usize| pb::UpstreamLogoutResponse { outcome: word.into(), sessions_ended: n as u64 };
        let answer =
            match crate::sso::logout::back_channel(&self.front, &r.provider, &r.logout_token, &ip.to_string()).await {
                Ok(n) => outcome("ok", n),
                Err(LogoutError::Invalid) => outcome("invalid", 0),
                Err(LogoutError::Replayed) => outcome("replayed", 0),
                Err(LogoutError::Unavailable) => outcome("unavailable", 0),
                Err(LogoutError::Api(e)) => return Err(e.into()),
            };
        Ok(Response::new(answer))
    }

    async fn offer_totp(&self, req: Request<pb::OwnFactorRequest>) -> Result<Response<pb::TotpOffer>, Status> {
        let r = req.into_inner();
        let p = match self.caller(&r.credential).await {
            Ok(p) => p,
            // A session waiting to enroll its first factor is offered one too.
            Err(ApiError::Unauthenticated) => crate::mfa::check::waiting_principal(&self.front.node, &r.credential)
                .ok_or(ApiError::Unauthenticated)?,
            Err(e) => return Err(e.into()),
        };
        let e = crate::mfa::check::enrolling(&self.front, &p)?;
        Ok(Response::new(pb::TotpOffer { secret: e.secret, uri: e.uri, qr_svg: e.qr_svg, sealed: e.sealed }))
    }

    /// Under the calling front's sign-in budget: it checks a password.
    async fn enroll_own_totp(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::RecoveryCodesResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let (codes, log_index) = crate::mfa::check::enroll(&self.front, &p, &r.sealed, &r.code, r.password, ip).await?;
        Ok(Response::new(pb::RecoveryCodesResponse { codes, log_index }))
    }

    async fn remove_own_totp(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let log_index = crate::mfa::check::remove_totp(&self.front, &p, &r.code, r.password, ip).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    async fn new_recovery_codes(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::RecoveryCodesResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let (codes, log_index) =
            crate::mfa::check::new_recovery_codes(&self.front, &p, &r.code, r.password, ip).await?;
        Ok(Response::new(pb::RecoveryCodesResponse { codes, log_index }))
    }

    /// Under the login endpoint's limits, by the address the front names.
    #[tracing::instrument(level = "info", name = "front.present_factor", skip_all, fields(outcome))]
    async fn present_factor(
        &self,
        req: Request<pb::PresentFactorRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        if r.token.len() > crate::identity::MAX_CREDENTIAL_LEN || r.code.len() > crate::mfa::check::MAX_CODE {
            return Err(ApiError::InvalidArgument("token or code too long".into()).into());
        }
        let presented = Presented::of(r.code, r.passkey_ceremony, r.passkey_response);
        // The front minted the device token; the hash is all it sends.
        let trust = <[u8; 32]>::try_from(r.trust_device_sha256.as_slice())
            .ok()
            .map(|sha256| crate::mfa::devices::Trust { sha256, label: crate::mfa::devices::label(&r.trust_label) });
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        let limits = &self.front.limits;
        limits.login_attempt(ip).await?;
        let opened = crate::mfa::check::present(&self.front, &r.token, &presented, ip, trust.as_ref()).await;
        tracing::Span::current().record("outcome", if opened.is_ok() { "ok" } else { "denied" });
        if matches!(opened, Err(ApiError::InvalidSecondFactor)) {
            limits.login_refused(ip).await?;
        }
        Ok(Response::new(login_response(opened?)))
    }

    /// Under the login endpoint's limits, by the address the front names.
    async fn step_up(&self, req: Request<pb::OwnFactorRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        if r.code.len() > crate::mfa::check::MAX_CODE {
            return Err(ApiError::InvalidArgument("code too long".into()).into());
        }
        let p = self.caller(&r.credential).await?;
        let limits = &self.front.limits;
        limits.login_attempt(ip).await?;
        let presented = Presented::of(r.code, r.passkey_ceremony, r.passkey_response);
        let done = crate::mfa::check::step_up_with(&self.front, &p, &presented, ip).await;
        if matches!(done, Err(ApiError::InvalidSecondFactor)) {
            limits.login_refused(ip).await?;
        }
        Ok(Response::new(pb::LogoutResponse { log_index: done? }))
    }

    /// Under the login endpoint's limits, by the address the front names.
    async fn enroll_waiting(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::EnrolledResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        if r.credential.len() > crate::identity::MAX_CREDENTIAL_LEN || r.ticket.len() > crate::mfa::check::MAX_TICKET {
            return Err(ApiError::InvalidArgument("credential or ticket too long".into()).into());
        }
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        let limits = &self.front.limits;
        limits.login_attempt(ip).await?;
        let done =
            crate::mfa::check::enroll_waiting(&self.front, &r.credential, &r.sealed, &r.code, &r.ticket, ip).await;
        if matches!(done, Err(ApiError::InvalidSecondFactor)) {
            limits.login_refused(ip).await?;
        }
        let (opened, codes) = done?;
        Ok(Response::new(pb::EnrolledResponse { login: Some(login_response(opened)), codes }))
    }

    async fn offer_passkey(&self, req: Request<pb::PasskeyOfferRequest>) -> Result<Response<pb::PasskeyOffer>, Status> {
        let r = req.into_inner();
        if r.credential.len() > crate::identity::MAX_CREDENTIAL_LEN {
            return Err(ApiError::InvalidArgument("credential too long".into()).into());
        }
        let offer = match r.kind.as_str() {
            "discover" => passkey::discoverable(&self.front)?,
            "assert" => {
                // The session's second step (waiting) or a step-up.
                let p = match crate::mfa::check::waiting_principal(&self.front.node, &r.credential) {
                    Some(p) => p,
                    None => self.caller(&r.credential).await?,
                };
                passkey::assertion(&self.front, &p.user_id, super::passkeys::session_id(&p))?
            }
            "register" => {
                let p = self.caller(&r.credential).await?;
                Some(passkey::registration(&self.front, &p)?)
            }
            _ => return Err(ApiError::InvalidArgument("kind is discover, assert or register".into()).into()),
        };
        let offer = offer.ok_or_else(|| ApiError::FailedPrecondition("no passkey to offer".into()))?;
        Ok(Response::new(pb::PasskeyOffer { options: offer.options, ceremony: offer.ceremony }))
    }

    /// Under the login endpoint's limits, by the address the front names.
    #[tracing::instrument(level = "info", name = "front.passkey_sign_in", skip_all, fields(outcome))]
    async fn passkey_sign_in(
        &self,
        req: Request<pb::PasskeySignInRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        if !self.front.node.ensure_fresh().await {
            return Err(ApiError::Stale.into());
        }
        let limits = &self.front.limits;
        limits.login_attempt(ip).await?;
        let opened = passkey::sign_in(&self.front, &r.ceremony, &r.response, ip, &r.user_agent).await;
        tracing::Span::current().record("outcome", if opened.is_ok() { "ok" } else { "denied" });
        if matches!(opened, Err(ApiError::InvalidCredentials)) {
            limits.login_refused(ip).await?;
        }
        Ok(Response::new(login_response(opened?)))
    }

    /// Under the calling front's sign-in budget: it checks a password.
    async fn add_own_passkey(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::RecoveryCodesResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let (codes, log_index) = passkey::add_own(
            &self.front,
            &p,
            &r.name,
            &r.passkey_ceremony,
            &r.passkey_response,
            r.password,
            &r.code,
            ip,
        )
        .await?;
        Ok(Response::new(pb::RecoveryCodesResponse { codes, log_index }))
    }

    async fn rename_own_passkey(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let actor = crate::audit::Actor::of(&p, ip.to_string());
        let log_index = passkey::rename(&self.front, &p, &r.passkey_id, &r.name, &actor).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    /// Under the calling front's sign-in budget: it checks a password.
    async fn remove_own_passkey(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let _permit = self.place(&req)?;
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let log_index = passkey::remove_own(&self.front, &p, &r.passkey_id, r.password, &r.code, ip).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    async fn forget_own_devices(
        &self,
        req: Request<pb::OwnFactorRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = req.into_inner();
        let ip = client_ip(&r.client_ip)?;
        let p = self.caller(&r.credential).await?;
        let actor = crate::audit::Actor::of(&p, ip.to_string());
        let log_index = crate::mfa::devices::forget_all(&self.front, &p, &actor).await?;
        Ok(Response::new(pb::LogoutResponse { log_index }))
    }

    /// A token only for an audience this voter's own `[jwt]` and route
    /// rules name, and for a rule's audience only to a caller that rule
    /// lets through (its roles, its second factor): a front chooses which
    /// of those it asks for, never more than the voter would grant.
    async fn mint_token(&self, req: Request<pb::MintTokenRequest>) -> Result<Response<pb::MintTokenResponse>, Status> {
        let r = req.into_inner();
        let Some(jwt) = self.front.jwt.as_deref() else {
            return Err(ApiError::FailedPrecondition("this voter has no [jwt] section".into()).into());
        };
        let p = self.caller(&r.credential).await?;
        let rules: Vec<&crate::http::RouteRule> =
            self.front.config.routes.iter().filter(|rule| rule.audience.as_deref() == Some(&r.audience)).collect();
        let allowed = if r.audience == jwt.config.audience {
            true
        } else if rules.is_empty() {
            return Err(ApiError::InvalidArgument("no route rule of this voter names that audience".into()).into());
        } else {
            rules.iter().any(|rule| crate::http::verify::admits(rule, &p))
        };
        if !allowed {
            return Err(ApiError::PermissionDenied("the caller does not pass the rules of that audience".into()).into());
        }
        let minted = crate::jwt::mint::token(&self.front, &r.credential, &p, &r.audience).await?;
        Ok(Response::new(pb::MintTokenResponse { token: minted.token.to_string(), expires_at: minted.expires_at }))
    }
}
