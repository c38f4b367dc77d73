//! `Debug` for the messages that carry a secret (a password, a session
//! token, a credential): the secret is never printed, so a `?request` in a
//! log line cannot leak it. Generated without `Debug` (see `build.rs`).

use std::fmt;

use crate::admin::EnrollTicket;
use crate::front::{
    ChangeOwnPasswordRequest, CreateOwnKeyRequest, CreateOwnKeyResponse, EnrolledResponse, FinishUpstreamRequest,
    LinkRequest, LoginRequest, LoginResponse, LogoutRequest, MintTokenRequest, MintTokenResponse, OwnFactorRequest,
    PresentFactorRequest, RecoveryCodesResponse, RevokeOwnKeyRequest, RevokeOwnSessionRequest, SpendLinkRequest,
    StartUpstreamResponse, TotpOffer,
};

impl fmt::Debug for PresentFactorRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentFactorRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for MintTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintTokenRequest").field("audience", &self.audience).finish_non_exhaustive()
    }
}

impl fmt::Debug for MintTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintTokenResponse").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl fmt::Debug for OwnFactorRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnFactorRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for TotpOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpOffer").finish_non_exhaustive()
    }
}

impl fmt::Debug for RecoveryCodesResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodesResponse").field("log_index", &self.log_index).finish_non_exhaustive()
    }
}

impl fmt::Debug for EnrolledResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolledResponse").field("login", &self.login).finish_non_exhaustive()
    }
}

impl fmt::Debug for EnrollTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollTicket")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StartUpstreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartUpstreamResponse").finish_non_exhaustive()
    }
}

impl fmt::Debug for FinishUpstreamRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishUpstreamRequest")
            .field("provider", &self.provider)
            .field("client_ip", &self.client_ip)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CreateOwnKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOwnKeyRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for CreateOwnKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOwnKeyResponse").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl fmt::Debug for RevokeOwnKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeOwnKeyRequest").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl fmt::Debug for ChangeOwnPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeOwnPasswordRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for SpendLinkRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendLinkRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .field("log_index", &self.log_index)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LogoutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogoutRequest").field("client_ip", &self.client_ip).finish_non_exhaustive()
    }
}

impl fmt::Debug for RevokeOwnSessionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeOwnSessionRequest")
            .field("session_id", &self.session_id)
            .field("client_ip", &self.client_ip)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_is_printed() {
        let printed = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            LoginRequest { username: "u".into(), password: "hunter2-hunter2".into(), ..Default::default() },
            MintTokenRequest { credential: "gs_CREDENTIAL".into(), audience: "app".into() },
            MintTokenResponse { token: "eyJTOKEN".into(), expires_at: 1 },
            LoginResponse { token: "gs_TOKEN".into(), ..Default::default() },
            LogoutRequest { credential: "gs_CREDENTIAL".into(), ..Default::default() },
            RevokeOwnSessionRequest { credential: "gk_KEY".into(), ..Default::default() },
            StartUpstreamResponse { flow_cookie: "v1.FLOW".into(), ..Default::default() },
            FinishUpstreamRequest { code: "CODE".into(), flow_cookie: "v1.FLOW".into(), ..Default::default() },
        );
        for secret in ["hunter2", "TOKEN", "CREDENTIAL", "KEY", "FLOW", "CODE"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn no_second_factor_secret_is_printed() {
        let own = OwnFactorRequest {
            credential: "gs_CREDENTIAL".into(),
            code: "123456".into(),
            password: "hunter2-hunter2".into(),
            sealed: "SEALED".into(),
            ticket: "TICKET".into(),
            ..Default::default()
        };
        let printed = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            own,
            PresentFactorRequest { token: "gs_TOKEN".into(), code: "654321".into(), ..Default::default() },
            TotpOffer {
                secret: "BASE32SECRET".into(),
                uri: "otpauth://x".into(),
                sealed: "SEALED".into(),
                ..Default::default()
            },
            RecoveryCodesResponse { codes: vec!["abcd-RECOVERY".into()], log_index: 1 },
            EnrolledResponse {
                login: Some(LoginResponse { token: "gs_TOKEN".into(), ..Default::default() }),
                codes: vec!["abcd-RECOVERY".into()],
            },
            EnrollTicket { ticket: "TICKET".into(), ..Default::default() },
        );
        for secret in [
            "CREDENTIAL",
            "123456",
            "hunter2",
            "SEALED",
            "TICKET",
            "TOKEN",
            "654321",
            "BASE32SECRET",
            "otpauth",
            "RECOVERY",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
