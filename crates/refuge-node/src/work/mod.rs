//! What the node does, for its handlers and its schedules: the checks
//! behind ingest (`ingest`), retention, verification and garbage
//! collection (`maintenance`), its own drills (`drills`, through
//! `self_drill`, which uses the client library) and its watches of the
//! disk and of systemd (`watch`); replication: this node's end of it
//! (`replica`: what it sends and what it checks before it stores) and the
//! passes to and from each peer (`replicate`, which uses the client
//! library's mutual-TLS channel to reach the peer).
//!
//! Imports from the rest of the crate: `config`, `floor`, `catalog` and
//! `policy`. Nothing here is a gRPC service.

pub(crate) mod drills;
pub(crate) mod ingest;
pub(crate) mod maintenance;
pub(crate) mod purge;
pub(crate) mod replica;
pub(crate) mod replicate;
pub(crate) mod self_drill;
pub(crate) mod watch;
