//! The backup node: configuration, the TLS 1.3 mutual-auth server loop and
//! the `Ingest` and `Restore` gRPC services.
//!
//! The `refuged` binary parses arguments and calls [`run`]. Tests call
//! [`serve`] with a listener on `127.0.0.1:0` and any [`Store`].
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
