//! The commands behind the `refuge` operator CLI: certificates and tenant
//! keys (local files only), and everything an operator, admin or auditor
//! asks the node: snapshots, restores, drills, status, health, the audit
//! log, retention and verification. The binary only parses arguments and
//! calls these; the calls to the node and the restore and drill work are
//! in `refuge-client`, and so are [`Failure`], [`finish`] and the exit
//! codes this binary shares with `refuge-agent` (`refuge_client::Failure`).

pub mod access;
pub mod admin;
pub mod audit;
pub mod audit_export;
pub mod certs;
pub mod commands;
pub mod drill;
pub mod health;
pub mod keys;
pub mod session;
pub mod status;

pub use refuge_client::{Failure, Outcome, finish, human_bytes, init_logging};

/// Prints `v` as pretty JSON on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(())
}

/// A fresh table in the CLI's style (no borders) with `header`.
pub(crate) fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header);
    t
}
