//! The backup node: configuration, the TLS 1.3 mutual-auth server loop and
//! the gRPC services (`Ingest`, `Restore`, `Audit`, `Admin`,
//! `Supervision`, beside `grpc.health.v1`).
//!
//! The `refuged` binary parses arguments and calls [`run`]. [`serve`] takes
//! any [`Store`] and a bound listener, for embedding and in-process tests;
//! the end-to-end tests run the real binary.
//!
//! # Floors
//!
//! Modules are layered; each imports only from the floors below it
//! (`tests/layers.rs` checks this, and that no two modules import each
//! other in a loop):
//!
//! | floor | modules | holds |
//! |---|---|---|
//! | 7 | `server` | `run`, `serve`, the accept loop, gates, the metrics endpoint, reloads |
//! | 6 | `console` | the web console: its HTTPS listener and pages |
//! | 5 | `services` | one module per gRPC service, handlers only |
//! | 4 | `work` | ingest checks, maintenance, the node's drills (the only client use), the watches |
//! | 3 | `policy` | access (roles, tenants), quotas, the audit log |
//! | 2 | `catalog` | snapshot queries, retention settings, drill and failure records, status |
//! | 1 | `floor` | clock, store access and blocking helpers, disk, health names, the metrics registry |
//! | 0 | `config` | `node.toml` |
//!
//! What is deliberately absent here: chunking, manifest writing and any
//! client logic (the node drills itself through its own port in
//! `work::self_drill`, the one module that uses `refuge-client`); and any
//! way for a request to widen its scope. Role and tenants always come
//! from the verified client certificate (`policy::access`); a request may
//! only narrow them.
//!
//! Audit events (authentication failures, permission denials, rejected
//! chunks and commits, committed and opened snapshots, configuration
//! reloads) go to the store's hash-chained audit log (`policy::audit`)
//! and to the tracing target `audit`.

mod catalog;
mod config;
mod console;
mod floor;
mod policy;
mod server;
mod services;
mod work;

pub use config::{
    ConsoleConfig, DrillConfig, EncryptionPolicy, GcConfig, HealthConfig, LimitsConfig,
    MetricsConfig, NodeConfig, QuotaConfig, RetentionConfig, RocksConfig, SloConfig, SloTarget,
    TenantQuota, TlsFiles, VerifyConfig,
};
pub use server::{ServeOptions, run, serve};
pub use services::supervision::NodeFacts;

/// Named fail points of the store, for the fault tests (a `failpoints`
/// build only; `REFUGE_FAILPOINTS`).
pub use refuge_store_rocksdb::failpoints;

/// Re-exported so callers of [`serve`] can pass any store.
pub use refuge_store::Store;
