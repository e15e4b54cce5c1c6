//! What the node does, for its handlers and its schedules: the checks
//! behind ingest (`ingest`), retention, verification and garbage
//! collection (`maintenance`), its own drills (`drills`, through
//! `self_drill`, the one module that uses the client library) and its
//! watches of the disk and of systemd (`watch`).
//!
//! Imports from the rest of the crate: `config`, `floor`, `catalog` and
//! `policy`. Nothing here is a gRPC service.

pub(crate) mod drills;
pub(crate) mod ingest;
pub(crate) mod maintenance;
pub(crate) mod self_drill;
pub(crate) mod watch;
