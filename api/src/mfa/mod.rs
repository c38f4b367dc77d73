//! Second factors on the voters: TOTP authenticators, passkeys and
//! recovery codes.
//!
//! The log holds what every node must agree on (`gatehouse_domain::factors`:
//! which step or code was spent, who owes a factor, lockouts); this module
//! holds what only a voter may do: open a sealed TOTP secret, check a
//! code, make a new secret and recovery codes. A stateless front sends
//! every such step on to a voter, as it does logins.
//!
//! - [`totp`]: RFC 6238 codes, the `otpauth://` URI and its QR code.
//! - [`recovery`]: one-time recovery codes, stored as SHA-256.
//! - [`passkey`]: WebAuthn ceremonies (webauthn-rs), their state sealed
//!   into the page, as a second factor and as a sign-in of their own.
//! - [`devices`]: trusted browsers (a cookie's token, its hash in the log).
//! - [`check`]: a code checked against a user's factors (failures
//!   counted through the log, lockout, audit), a waiting session paid,
//!   enrollment and removal from "my account".

pub mod check;
pub mod devices;
pub mod passkey;
pub mod recovery;
pub mod totp;

use std::sync::Arc;
use std::time::Duration;

use crate::seal::Sealer;

/// `[mfa]` as the voters run it.
#[derive(Debug, Clone)]
pub struct MfaConfig {
    /// The name an authenticator app shows beside the code.
    pub issuer: String,
    /// Wrong codes in `failure_window` that lock the factor for `lockout`.
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    /// The relying party passkeys are for (`[mfa.passkeys]`; `None`: off).
    pub passkeys: Option<Arc<passkey::Passkeys>>,
    /// How long a browser may be trusted to skip the second step
    /// (`trusted_device_days`; `None`: never).
    pub trusted_device: Option<Duration>,
}

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            issuer: "Gatehouse".into(),
            max_failures: 5,
            failure_window: Duration::from_secs(300),
            lockout: Duration::from_secs(900),
            passkeys: None,
            trusted_device: None,
        }
    }
}

/// Second factors on this node: the config, and on a voter the sealer
/// for TOTP secrets (`[secrets]`; `None` on fronts, or when unset).
#[derive(Debug)]
pub struct Mfa {
    pub config: MfaConfig,
    sealer: Option<Arc<Sealer>>,
}

impl Mfa {
    pub fn new(config: MfaConfig, sealer: Option<Arc<Sealer>>) -> Mfa {
        Mfa { config, sealer }
    }

    /// The key-encryption keys, when this node holds them.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }
}
