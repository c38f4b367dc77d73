//! The invariants a chaos run must keep, one file each. Every checker reads
//! the [`history`](crate::history) and, where it needs to, the healed
//! cluster's final state, and returns the violations it found (empty = held).

pub mod convergence;
pub mod exactly_once;
pub mod large_entries;
pub mod linearizable;
pub mod lost_writes;
pub mod revocation;

use std::collections::HashMap;

use crate::history::{Kind, Op, Value};

/// Session id → the username it was opened for (from acknowledged logins).
pub fn session_owners(history: &[Op]) -> HashMap<String, String> {
    history
        .iter()
        .filter(|o| o.kind == Kind::Login)
        .filter_map(|o| match o.ok() {
            Some(Value::Created(id)) => Some((id.clone(), o.target.clone())),
            _ => None,
        })
        .collect()
}

/// Key id → the username it was created for (from key creates that learned
/// the id: acknowledged, or a retry that named the first attempt's key).
pub fn key_owners(history: &[Op]) -> HashMap<String, String> {
    history
        .iter()
        .filter(|o| o.kind == Kind::CreateKey)
        .filter_map(|o| match (o.ok(), &o.owner) {
            (Some(Value::Created(id) | Value::AlreadyExists(id)), Some(owner)) if !id.is_empty() => {
                Some((id.clone(), owner.clone()))
            }
            _ => None,
        })
        .collect()
}
