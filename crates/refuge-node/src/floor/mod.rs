//! The ground floor: what every other layer of the node stands on, and
//! which itself knows nothing of services, policies or the catalog.
//!
//! - `changes`: the signal that a snapshot was committed or imported.
//! - `clock`: the node's time (`now_micros`) and random numbers.
//! - `store`: calling the store from async code (`blocking`), the one
//!   mapping of store errors to gRPC statuses (`store_status`), and
//!   reading a manifest back from stored chunks (`StoredStream`).
//! - `disk`: free space of the store's disk and the ingest refusal it
//!   implies (`Disk`).
//! - `health`: the names the node reports to `grpc.health.v1` and
//!   systemd's notify protocol.
//! - `metrics`: the Prometheus registry; it is fed values and never reads
//!   the store or the catalog itself.
//!
//! Imports from the rest of the crate: `config` only. Nothing here
//! audits (the audit log is a policy, one floor up).

pub(crate) mod changes;
pub(crate) mod clock;
pub(crate) mod disk;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod store;
