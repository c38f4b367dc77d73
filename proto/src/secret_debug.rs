//! `Debug` for the messages that carry a secret (a password, a session
//! token, a credential): the secret is never printed, so a `?request` in a
//! log line cannot leak it. Generated without `Debug` (see `build.rs`).

use std::fmt;

use crate::front::{
    ChangeOwnPasswordRequest, CreateOwnKeyRequest, CreateOwnKeyResponse, FinishUpstreamRequest, LinkRequest,
    LoginRequest, LoginResponse, LogoutRequest, RevokeOwnKeyRequest, RevokeOwnSessionRequest, SpendLinkRequest,
    StartUpstreamResponse,
};

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
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            LoginRequest { username: "u".into(), password: "hunter2-hunter2".into(), ..Default::default() },
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
}
