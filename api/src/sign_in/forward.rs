//! A stateless front's side of signing in: the attempt, the logout or the
//! revocation goes to a voter's `SignInService` (the one the front follows,
//! then the others while none can take it), and the voter's answer comes
//! back as the error it stands for.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use gatehouse_cluster::front::Voters;
use gatehouse_proto::front as pb;
use gatehouse_proto::front::sign_in_service_client::SignInServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::check::{Attempt, Opened};
use super::links::{LinkRequest, LinkSpend};
use super::own::{NewOwnKey, OwnKey};
use crate::sso::logout::LogoutError;
use crate::sso::sign_in::{Callback, SsoError, Started, Why};
use crate::ApiError;

/// How long a sign-in may wait for a voter that can take it.
const DEADLINE: Duration = Duration::from_secs(5);

type Client = SignInServiceClient<InterceptedService<Channel, gatehouse_cluster::front::FrontAuth>>;

/// The voters a front sends sign-ins to.
#[derive(Clone, Debug)]
pub struct VoterSignIn {
    voters: Voters,
}

impl VoterSignIn {
    pub fn new(voters: Voters) -> VoterSignIn {
        VoterSignIn { voters }
    }

    /// Calls `call` on the voter followed, then on the next ones while the
    /// answer is "unavailable" (a voter down or stale), until [`DEADLINE`].
    async fn on_a_voter<T, Fut>(&self, mut call: impl FnMut(Client, Duration) -> Fut) -> Result<T, ApiError>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + DEADLINE;
        let (first, _) = self.voters.current();
        for attempt in 0.. {
            let client = SignInServiceClient::new(self.voters.channel(first + attempt));
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match call(client, left).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = ApiError::from_status(&status);
                    let retry = matches!(e, ApiError::Unavailable { .. } | ApiError::Stale);
                    if !retry || Instant::now() >= deadline {
                        return Err(e);
                    }
                }
            }
            let pause = Duration::from_millis(50 * (attempt as u64 + 1).min(4));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        unreachable!("the loop returns")
    }

    pub async fn login(&self, attempt: Attempt) -> Result<Opened, ApiError> {
        let request = pb::LoginRequest {
            username: attempt.username,
            password: attempt.password,
            client_ip: attempt.client_ip.to_string(),
            user_agent: attempt.user_agent,
            second_factor: attempt.second_factor.unwrap_or_default(),
            factor_later: attempt.factor_later,
            device_token: attempt.device_token.unwrap_or_default(),
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.login(req).await }
            })
            .await?;
        Ok(opened(r))
    }

    /// Pays the second factor the session of `token` waits for.
    pub async fn present_factor(
        &self,
        token: &str,
        presented: &crate::mfa::check::Presented,
        ip: IpAddr,
        trust: Option<&crate::mfa::devices::Trust>,
    ) -> Result<Opened, ApiError> {
        let mut own = pb::OwnFactorRequest::default();
        presented.write_to(&mut own);
        let request = pb::PresentFactorRequest {
            token: token.to_string(),
            code: own.code,
            client_ip: ip.to_string(),
            user_agent: String::new(),
            passkey_ceremony: own.passkey_ceremony,
            passkey_response: own.passkey_response,
            trust_device_sha256: trust.map(|t| t.sha256.to_vec()).unwrap_or_default(),
            trust_label: trust.map(|t| t.label.clone()).unwrap_or_default(),
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.present_factor(req).await }
            })
            .await?;
        Ok(opened(r))
    }

    async fn own_factor<T, F, Fut>(&self, request: pb::OwnFactorRequest, call: F) -> Result<T, ApiError>
    where
        F: Fn(Client, tonic::Request<pb::OwnFactorRequest>) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.on_a_voter(|c, left| {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(left);
            call.clone()(c, req)
        })
        .await
    }

    /// A fresh TOTP secret offered to the caller of `credential`.
    pub async fn offer_totp(&self, credential: &str) -> Result<crate::mfa::check::Enrolling, ApiError> {
        let request = pb::OwnFactorRequest { credential: credential.to_string(), ..Default::default() };
        let r = self.own_factor(request, |mut c, req| async move { c.offer_totp(req).await }).await?;
        Ok(crate::mfa::check::Enrolling { secret: r.secret, uri: r.uri, qr_svg: r.qr_svg, sealed: r.sealed })
    }

    /// Enrolls an offered secret: the recovery codes and the log index.
    pub async fn enroll_totp(&self, request: pb::OwnFactorRequest) -> Result<(Vec<String>, u64), ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.enroll_own_totp(req).await }).await?;
        Ok((r.codes, r.log_index))
    }

    /// Turns the caller's authenticator off: the log index.
    pub async fn remove_totp(&self, request: pb::OwnFactorRequest) -> Result<u64, ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.remove_own_totp(req).await }).await?;
        Ok(r.log_index)
    }

    /// A step-up of the caller's session: the log index.
    pub async fn step_up(&self, request: pb::OwnFactorRequest) -> Result<u64, ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.step_up(req).await }).await?;
        Ok(r.log_index)
    }

    /// A passkey ceremony begun on a voter (`kind`: see `OfferPasskey`).
    pub async fn offer_passkey(&self, kind: &str, credential: &str) -> Result<crate::mfa::passkey::Offer, ApiError> {
        let request = pb::PasskeyOfferRequest { kind: kind.to_string(), credential: credential.to_string() };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.offer_passkey(req).await }
            })
            .await?;
        Ok(crate::mfa::passkey::Offer { options: r.options, ceremony: r.ceremony })
    }

    /// A sign-in by passkey alone, checked on a voter.
    pub async fn passkey_sign_in(&self, request: pb::PasskeySignInRequest) -> Result<Opened, ApiError> {
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.passkey_sign_in(req).await }
            })
            .await?;
        Ok(opened(r))
    }

    /// Adds a passkey for the caller: recovery codes (for a first factor)
    /// and the log index.
    pub async fn add_passkey(&self, request: pb::OwnFactorRequest) -> Result<(Vec<String>, u64), ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.add_own_passkey(req).await }).await?;
        Ok((r.codes, r.log_index))
    }

    /// Renames one of the caller's passkeys: the log index.
    pub async fn rename_passkey(&self, request: pb::OwnFactorRequest) -> Result<u64, ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.rename_own_passkey(req).await }).await?;
        Ok(r.log_index)
    }

    /// A downstream JWT for the caller of `credential`, signed by a voter.
    pub async fn mint_token(&self, credential: &str, audience: &str) -> Result<pb::MintTokenResponse, ApiError> {
        let request = pb::MintTokenRequest { credential: credential.to_string(), audience: audience.to_string() };
        self.on_a_voter(|mut c, left| {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(left);
            async move { c.mint_token(req).await }
        })
        .await
    }

    /// Forgets every browser the caller trusted: the log index.
    pub async fn forget_devices(&self, request: pb::OwnFactorRequest) -> Result<u64, ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.forget_own_devices(req).await }).await?;
        Ok(r.log_index)
    }

    /// Removes one of the caller's passkeys: the log index.
    pub async fn remove_passkey(&self, request: pb::OwnFactorRequest) -> Result<u64, ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.remove_own_passkey(req).await }).await?;
        Ok(r.log_index)
    }

    /// Enrolls from a waiting session (`request.credential` its token).
    pub async fn enroll_waiting(&self, request: pb::OwnFactorRequest) -> Result<(Opened, Vec<String>), ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.enroll_waiting(req).await }).await?;
        let login = r.login.ok_or(ApiError::Internal)?;
        Ok((opened(login), r.codes))
    }

    /// New recovery codes for the caller: the codes and the log index.
    pub async fn new_recovery_codes(&self, request: pb::OwnFactorRequest) -> Result<(Vec<String>, u64), ApiError> {
        let r = self.own_factor(request, |mut c, req| async move { c.new_recovery_codes(req).await }).await?;
        Ok((r.codes, r.log_index))
    }

    /// Ends the session `credential` belongs to; the index it was applied at.
    pub async fn logout(&self, credential: &str, ip: IpAddr) -> Result<u64, ApiError> {
        let request = pb::LogoutRequest { credential: credential.to_string(), client_ip: ip.to_string() };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.logout(req).await }
            })
            .await?;
        Ok(r.log_index)
    }

    /// Asks a voter for a sign-in link; returns once the voter admitted it.
    pub async fn request_link(&self, req: LinkRequest) -> Result<(), ApiError> {
        let request = pb::LinkRequest {
            email: req.email,
            browser_sha256: req.browser_sha256.to_vec(),
            client_ip: req.client_ip.to_string(),
            return_to: req.return_to,
        };
        self.on_a_voter(|mut c, left| {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(left);
            async move { c.request_link(req).await }
        })
        .await?;
        Ok(())
    }

    /// Spends a sign-in link on a voter.
    pub async fn spend_link(&self, spend: LinkSpend) -> Result<Opened, ApiError> {
        let request = pb::SpendLinkRequest {
            token: spend.token,
            browser_sha256: spend.browser_sha256.to_vec(),
            client_ip: spend.client_ip.to_string(),
            user_agent: spend.user_agent,
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.spend_link(req).await }
            })
            .await?;
        Ok(opened(r))
    }

    /// Ends session `session_id` of the user `credential` belongs to.
    pub async fn revoke_own(&self, credential: &str, session_id: &str, ip: IpAddr) -> Result<u64, ApiError> {
        let request = pb::RevokeOwnSessionRequest {
            credential: credential.to_string(),
            session_id: session_id.to_string(),
            client_ip: ip.to_string(),
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.revoke_own_session(req).await }
            })
            .await?;
        Ok(r.log_index)
    }

    pub async fn create_own_key(&self, credential: &str, key: OwnKey, ip: IpAddr) -> Result<NewOwnKey, ApiError> {
        let request = pb::CreateOwnKeyRequest {
            credential: credential.to_string(),
            name: key.name,
            role: key.role.unwrap_or_default(),
            days: key.days,
            client_ip: ip.to_string(),
            password: key.password,
            code: key.code,
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.create_own_key(req).await }
            })
            .await?;
        Ok(NewOwnKey { key_id: r.key_id, key: r.key, log_index: r.log_index })
    }

    pub async fn revoke_own_key(&self, credential: &str, key_id: &str, ip: IpAddr) -> Result<u64, ApiError> {
        let request = pb::RevokeOwnKeyRequest {
            credential: credential.to_string(),
            key_id: key_id.to_string(),
            client_ip: ip.to_string(),
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.revoke_own_key(req).await }
            })
            .await?;
        Ok(r.log_index)
    }

    pub async fn change_password(
        &self,
        credential: &str,
        current: String,
        new: String,
        ip: IpAddr,
        user_agent: String,
    ) -> Result<Opened, ApiError> {
        let request = pb::ChangeOwnPasswordRequest {
            credential: credential.to_string(),
            current_password: current,
            new_password: new,
            client_ip: ip.to_string(),
            user_agent,
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.change_own_password(req).await }
            })
            .await?;
        Ok(opened(r))
    }
}

impl VoterSignIn {
    pub async fn upstream_start(&self, provider: &str, return_to: &str) -> Result<Started, SsoError> {
        let request = pb::StartUpstreamRequest { provider: provider.to_string(), return_to: return_to.to_string() };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.start_upstream(req).await }
            })
            .await?;
        Ok(Started { url: r.url, cookie: r.flow_cookie })
    }

    /// A voter finishes the sign-in. Sent once: a retry elsewhere would
    /// trade the same one-time code again.
    pub async fn upstream_finish(&self, cb: Callback) -> Result<(Opened, String), SsoError> {
        let request = pb::FinishUpstreamRequest {
            provider: cb.provider,
            code: cb.code,
            state: cb.state,
            flow_cookie: cb.flow,
            client_ip: cb.client_ip.to_string(),
            user_agent: cb.user_agent,
        };
        let (first, _) = self.voters.current();
        let mut client = SignInServiceClient::new(self.voters.channel(first));
        let mut req = tonic::Request::new(request);
        req.set_timeout(DEADLINE);
        let r = client.finish_upstream(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
        if r.refused == "unavailable" {
            return Err(SsoError::Unavailable);
        }
        if let Some(why) = Why::from_word(&r.refused) {
            return Err(SsoError::Refused(why));
        }
        let session = r.session.ok_or(ApiError::Unavailable { leader: None })?;
        Ok((opened(session), r.return_to))
    }

    pub async fn upstream_logout(&self, provider: &str, token: &str, ip: IpAddr) -> Result<usize, LogoutError> {
        let request = pb::UpstreamLogoutRequest {
            provider: provider.to_string(),
            logout_token: token.to_string(),
            client_ip: ip.to_string(),
        };
        let r = self
            .on_a_voter(|mut c, left| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(left);
                async move { c.upstream_logout(req).await }
            })
            .await
            .map_err(LogoutError::Api)?;
        match r.outcome.as_str() {
            "ok" => Ok(r.sessions_ended as usize),
            "replayed" => Err(LogoutError::Replayed),
            "unavailable" => Err(LogoutError::Unavailable),
            _ => Err(LogoutError::Invalid),
        }
    }
}

fn opened(r: pb::LoginResponse) -> Opened {
    Opened {
        user_id: r.user_id,
        username: r.username,
        roles: r.roles,
        session_id: r.session_id,
        token: r.token,
        expires_at: r.expires_at,
        log_index: r.log_index,
        factor_due: r.factor_due,
    }
}
