//! The admin gRPC API: every RPC authenticates an API key and checks RBAC
//! first ([`auth`]), then does its work through the [`Cluster`](crate::Cluster).

pub mod auth;
pub mod cluster;
