//! The policies every request passes through: who may call what and on
//! which tenants (`access`), how much a tenant may store per day
//! (`quota`), and what is put on the record (`audit`).
//!
//! Imports from the rest of the crate: `config`, `floor` and `catalog`.
//! Nothing here is a gRPC service; the handlers in `services` call these.

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod quota;
pub(crate) mod second_factor;
