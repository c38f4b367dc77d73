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
}

impl Table {
    /// Every table, in the order snapshots list them.
    pub const ALL: [Table; 5] = [Table::Users, Table::ApiKeys, Table::Sessions, Table::Roles, Table::Requests];

    /// A stable name, used as the column family name and in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::ApiKeys => "api_keys",
            Table::Sessions => "sessions",
            Table::Roles => "roles",
            Table::Requests => "requests",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One write to a projection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put { table: Table, key: Vec<u8>, value: Vec<u8> },
    Delete { table: Table, key: Vec<u8> },
}
