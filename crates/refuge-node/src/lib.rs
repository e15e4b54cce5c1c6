//! The backup node: configuration, the TLS 1.3 mutual-auth server loop and
//! the `Ingest` and `Restore` gRPC services.
//!
//! The `refuged` binary parses arguments and calls [`run`]. [`serve`] takes
//! any [`Store`] and a bound listener, for embedding and in-process tests;
//! the end-to-end tests run the real binary.
//!
//! What is deliberately absent here: chunking, manifest writing and any
//! client logic; and any way for a request to name its own tenant. The
//! tenant always comes from the verified client certificate.
//!
//! Audit events (authentication failures, rejected chunks and commits,
//! committed snapshots) are logged with the tracing target `audit`.

mod config;
mod server;
mod service;

pub use config::{LimitsConfig, NodeConfig, RocksConfig, TlsFiles};
pub use server::{ServeOptions, run, serve};

/// Re-exported so callers of [`serve`] can pass any store.
pub use refuge_store::Store;
