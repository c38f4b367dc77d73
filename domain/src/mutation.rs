//! The writes apply asks the storage layer to make.
//!
//! Apply returns mutations instead of writing, so the domain stays free of
//! any storage engine and storage can put every mutation of a log entry and
//! the new `last_applied` into one atomic batch.

/// A projection table. Storage maps each to its own column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Users,
    ApiKeys,
    Sessions,
    Roles,
    Requests,
    /// Rate-limit buckets.
    Limits,
    /// Audit records by sequence number. Kept in storage only, never loaded into the view.
    Audit,
    /// The audit chain's head and anchor.
    AuditChain,
    /// The cluster version (`gatehouse_domain::version`).
    Cluster,
    /// Unspent sign-in links (`gatehouse_domain::links`).
    SignInLinks,
    /// Users' links to upstream OIDC identities (`gatehouse_domain::upstream`).
    UpstreamIdentities,
    /// Spent one-time values: upstream flows, logout tokens.
    Spent,
    /// Users' second factors (`gatehouse_domain::factors`).
    Factors,
    /// Cluster-wide settings kept in the log (the MFA policy).
    Settings,
    /// Keys that sign downstream JWTs (`gatehouse_domain::signing`).
    SigningKeys,
}

impl Table {
    /// Every table, in the order snapshots list them.
    pub const ALL: [Table; 15] = [
        Table::Users,
        Table::ApiKeys,
        Table::Sessions,
        Table::Roles,
        Table::Requests,
        Table::Limits,
        Table::Audit,
        Table::AuditChain,
        Table::Cluster,
        Table::SignInLinks,
        Table::UpstreamIdentities,
        Table::Spent,
        Table::Factors,
        Table::Settings,
        Table::SigningKeys,
    ];

    /// Whether the in-memory view holds this table (audit records stay on disk).
    pub fn in_view(self) -> bool {
        self != Table::Audit
    }

    /// A stable name, used as the column family name and in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::ApiKeys => "api_keys",
            Table::Sessions => "sessions",
            Table::Roles => "roles",
            Table::Requests => "requests",
            Table::Limits => "rate_limits",
            Table::Audit => "audit",
            Table::AuditChain => "audit_chain",
            Table::Cluster => "cluster",
            Table::SignInLinks => "sign_in_links",
            Table::UpstreamIdentities => "upstream_identities",
            Table::Spent => "spent",
            Table::Factors => "factors",
            Table::Settings => "settings",
            Table::SigningKeys => "signing_keys",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One write to a projection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    /// Deletes every key in `[from, to)`.
    DeleteRange {
        table: Table,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}
