//! The backup node: configuration, the TLS 1.3 mutual-auth server loop and
//! the `Ingest`, `Restore` and `Audit` gRPC services.
//!
//! The `refuged` binary parses arguments and calls [`run`]. [`serve`] takes
//! any [`Store`] and a bound listener, for embedding and in-process tests;
//! the end-to-end tests run the real binary.
//!
//! What is deliberately absent here: chunking, manifest writing and any
//! client logic; and any way for a request to widen its scope. Role and
//! tenants always come from the verified client certificate (`access`);
//! a request may only narrow them.
//!
//! Audit events (authentication failures, permission denials, rejected
//! chunks and commits, committed and opened snapshots, configuration
//! reloads) go to the store's hash-chained audit log (`audit`) and to the
//! tracing target `audit`.

mod access;
mod audit;
mod config;
mod drills;
mod health;
mod maintenance;
mod metrics;
mod quota;
mod server;
mod service;
mod supervision;

pub use config::{
    DrillConfig, EncryptionPolicy, GcConfig, HealthConfig, LimitsConfig, MetricsConfig, NodeConfig,
    QuotaConfig, RetentionConfig, RocksConfig, TenantQuota, TlsFiles, VerifyConfig,
};
pub use server::{ServeOptions, run, serve};
pub use supervision::NodeFacts;

/// Named fail points of the store, for the fault tests (a `failpoints`
/// build only; `REFUGE_FAILPOINTS`).
pub use refuge_store_rocksdb::failpoints;

/// Re-exported so callers of [`serve`] can pass any store.
pub use refuge_store::Store;
