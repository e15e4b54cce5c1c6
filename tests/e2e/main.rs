//! End-to-end tests: the real `refuged`, `refuge-agent` and `refuge`
//! binaries on 127.0.0.1, certificates made by `refuge certs`, RocksDB in a
//! temporary directory, real files.

#![allow(clippy::unwrap_used, missing_docs)]

mod audit_export;
mod backup_restore;
mod clock;
mod console;
mod crash;
mod delta;
mod drill;
mod failpoints;
mod full_disk;
mod health;
mod hooks;
mod hostile;
mod hostile_wire;
mod journald;
mod mariadb;
mod network;
mod postgres;
mod power_loss;
mod purge;
mod rejections;
mod replication;
mod retention;
mod s3;
mod scrub;
mod sealed;
mod second_factor;
mod security;
mod service;
mod sm_suite;
mod status;
mod systemd;
mod wire;
