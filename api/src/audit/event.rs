//! Who did what: the actor of an audit event, and an event by an actor.

use gatehouse_cluster::clock::now_ms;
use gatehouse_proto::events::AuditEvent;

/// Who did something: filled from an authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub key_id: String,
    pub session_id: String,
    pub client_ip: String,
}

impl Actor {
    pub fn of(p: &crate::identity::Principal, client_ip: String) -> Actor {
        let (key_id, session_id) = match &p.via {
            crate::identity::Via::ApiKey { key_id } => (key_id.clone(), String::new()),
            crate::identity::Via::Session { session_id } => (String::new(), session_id.clone()),
        };
        Actor { user_id: p.user_id.clone(), key_id, session_id, client_ip }
    }
}

/// An event by `actor` on `resource`.
pub fn event(action: &str, outcome: &str, actor: &Actor, resource: String) -> AuditEvent {
    AuditEvent {
        at: now_ms(),
        action: action.into(),
        outcome: outcome.into(),
        actor_user_id: actor.user_id.clone(),
        actor_key_id: actor.key_id.clone(),
        actor_session_id: actor.session_id.clone(),
        client_ip: actor.client_ip.clone(),
        resource,
        ..Default::default()
    }
}
