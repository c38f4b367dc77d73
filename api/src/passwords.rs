//! Password hashing and verification (argon2id, OWASP parameters: 19 MiB,
//! t = 2, p = 1) on a bounded pool, so a flood of logins cannot take every
//! core from request verification: at most `workers` hashes run at once and
//! at most `queue` wait; beyond that a login is refused with `busy`.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::ApiError;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Clone)]
pub struct PasswordPool {
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    /// Verified against when the user does not exist, so both cases take as long.
    dummy: Arc<str>,
}

impl PasswordPool {
    pub fn new(workers: usize, queue: usize) -> Self {
        let dummy = Argon2::default()
            .hash_password(b"gatehouse-timing-equaliser", &SaltString::generate(&mut OsRng))
            .expect("argon2 with default parameters")
            .to_string();
        PasswordPool {
            running: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(Semaphore::new(queue.max(1))),
            dummy: dummy.into(),
        }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let _queued = self.waiting.clone().try_acquire_owned().map_err(|_| ApiError::Busy)?;
        let _running = tokio::time::timeout(Duration::from_secs(5), self.running.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Busy)?
            .map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(work).await.map_err(|_| ApiError::Internal)
    }

    /// The argon2id PHC string of a new password, after the length rules.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        check_policy(&password)?;
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|_| ApiError::Internal)
    }

    /// Whether `password` matches `phc`; with `None` (no such user) it
    /// spends the same time and answers false.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        let (phc, real) = match phc {
            Some(p) if !p.is_empty() => (p, true),
            _ => (self.dummy.to_string(), false),
        };
        self.run(move || {
            let ok = PasswordHash::new(&phc)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
            ok && real
        })
        .await
    }
}

/// Length rules for a new password.
pub fn check_policy(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(ApiError::InvalidArgument(format!("password must be at least {MIN_PASSWORD_LEN} characters")));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::InvalidArgument(format!("password must be at most {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let pool = PasswordPool::new(1, 8);
        let phc = pool.hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(pool.verify("correct horse battery".into(), Some(phc.clone())).await.unwrap());
        assert!(!pool.verify("wrong horse battery!".into(), Some(phc)).await.unwrap());
        assert!(!pool.verify("gatehouse-timing-equaliser".into(), None).await.unwrap());
        assert!(!pool.verify("x".into(), Some("not a phc".into())).await.unwrap());
        assert!(matches!(pool.hash("short".into()).await, Err(ApiError::InvalidArgument(_))));
        assert!(matches!(pool.hash("x".repeat(2000)).await, Err(ApiError::InvalidArgument(_))));
    }
}
