//! What a source is: its kind (tree, image, postgres, its WAL, mariadb)
//! and the naming of a postgres source's WAL source. Below both the
//! manifest (whose header names the kind) and the snapshot record.

use crate::format::{
    SOURCE_IMAGE, SOURCE_MARIADB, SOURCE_POSTGRES, SOURCE_POSTGRES_WAL, SOURCE_TREE,
};

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory tree.
    Tree,
    /// One file or block device, read as a byte stream.
    Image,
    /// A PostgreSQL cluster's data directory, copied between the server's
    /// backup start and stop with the WAL that makes it consistent (and
    /// the server's `backup_label`): a tree that starts as a database.
    Postgres,
    /// WAL files a PostgreSQL server archived through `refuge-agent
    /// wal-push`, one file per snapshot (a tree holding that file), of the
    /// source `NAME.wal` beside the `postgres` source `NAME`.
    #[serde(rename = "postgres-wal")]
    PostgresWal,
    /// A MariaDB (or MySQL) data directory copied with `mariadb-backup`
    /// and prepared: a tree that starts as a server.
    Mariadb,
}

impl SourceKind {
    /// The format id.
    pub fn id(self) -> u8 {
        match self {
            SourceKind::Tree => SOURCE_TREE,
            SourceKind::Image => SOURCE_IMAGE,
            SourceKind::Postgres => SOURCE_POSTGRES,
            SourceKind::PostgresWal => SOURCE_POSTGRES_WAL,
            SourceKind::Mariadb => SOURCE_MARIADB,
        }
    }
    /// From a format id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            SOURCE_TREE => Some(SourceKind::Tree),
            SOURCE_IMAGE => Some(SourceKind::Image),
            SOURCE_POSTGRES => Some(SourceKind::Postgres),
            SOURCE_POSTGRES_WAL => Some(SourceKind::PostgresWal),
            SOURCE_MARIADB => Some(SourceKind::Mariadb),
            _ => None,
        }
    }
    /// `tree`, `image`, `postgres`, `postgres-wal` or `mariadb`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Tree => "tree",
            SourceKind::Image => "image",
            SourceKind::Postgres => "postgres",
            SourceKind::PostgresWal => "postgres-wal",
            SourceKind::Mariadb => "mariadb",
        }
    }
    /// Whether its manifest is a directory tree (restored, compared and
    /// drilled as one): every kind but `image`.
    pub fn is_tree(self) -> bool {
        self != SourceKind::Image
    }
}

/// The suffix of a `postgres` source's WAL source: `NAME.wal`.
pub const WAL_SOURCE_SUFFIX: &str = ".wal";

/// The name of the WAL source of the `postgres` source `base`.
pub fn wal_source_of(base: &str) -> String {
    format!("{base}{WAL_SOURCE_SUFFIX}")
}

/// The `postgres` source whose WAL the source `wal` holds.
pub fn base_of_wal(wal: &str) -> Option<&str> {
    wal.strip_suffix(WAL_SOURCE_SUFFIX)
        .filter(|b| !b.is_empty())
}
