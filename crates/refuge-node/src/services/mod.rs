//! The gRPC services, one module each, holding only their handlers:
//! each admits the caller (`policy::access`), parses the request, calls
//! the catalog, the policies or the work below on the blocking pool, and
//! turns the result into a response. Wire conversions of refuge values
//! are `refuge_proto`'s.
//!
//! Imports from the rest of the crate: every layer below (`config`,
//! `floor`, `catalog`, `policy`, `work`); services never import each
//! other (the `Admin` service's handlers are split over `admin/`: the
//! trait impl in `mod.rs` calls those of `second_factors.rs` and
//! `purges.rs`).

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod ingest;
pub(crate) mod replication;
pub(crate) mod restore;
pub(crate) mod supervision;
