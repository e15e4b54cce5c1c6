//! The one place where the node uses the client library
//! (`refuge-client`): a node drill connects to the node's own gRPC port
//! with `[drill] client_config` (an operator certificate) and runs the
//! same drill as `refuge drill` (`refuge_client::run_drill`).
//!
//! Why through the port and not in-process: a drill must prove that a DR
//! operator could restore after a disaster, so it takes the path such a
//! restore takes (TLS, the certificate's role and tenants, the Restore
//! service, the client's verification of every chunk and file). Reading
//! the store directly would skip exactly what a drill is for, and would
//! need the tenant keys the node must never hold (an encrypted tenant's
//! key is in that client configuration, or its drill fails saying so).
//! So the node is its own client here, and nowhere else: nothing else in
//! `refuge-node` imports `refuge_client`, and the layer check
//! (`tests/layers.rs`) keeps it that way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use refuge_client::{DrillOptions, DrillSelection, Point, ProgressMode};

/// What a node drill covers (empty names: everything in the client
/// certificate's scope) and at which point.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ask {
    pub(crate) tenant: String,
    pub(crate) host: String,
    pub(crate) source: String,
    /// A snapshot chosen at random with this seed; `None`: the newest.
    pub(crate) random_seed: Option<u64>,
}

impl Ask {
    /// `latest` or `random (seed N)`, as `refuge drill` says it.
    pub(crate) fn point(&self) -> String {
        match self.random_seed {
            Some(seed) => format!("random (seed {seed})"),
            None => "latest".into(),
        }
    }
}

/// What a finished node drill found.
pub(crate) struct Finished {
    /// Every snapshot drilled passed.
    pub(crate) passed: bool,
    /// Results the node could not record.
    pub(crate) record_errors: Vec<String>,
    /// The drill report, as `refuge drill --json` writes it.
    pub(crate) json: String,
    /// The same report in Markdown.
    pub(crate) markdown: String,
}

/// Runs drill `id` of `ask` against the node's own port with the client
/// configuration at `client`, restoring under `scratch`.
pub(crate) async fn run(
    client: &Path,
    scratch: PathBuf,
    ask: &Ask,
    id: &str,
) -> anyhow::Result<Finished> {
    let cfg = refuge_client::load_config(client)?;
    let key = cfg.tenant_key()?;
    let node = refuge_client::connect(&cfg.node).await?;
    let opts = DrillOptions {
        scratch,
        check: None,
        checks: cfg.drill.checks.clone(),
        postgres: cfg.drill.postgres.clone(),
        mariadb: cfg.drill.mariadb.clone(),
        check_timeout: Duration::from_secs(cfg.drill.check_timeout_secs),
        keep: false,
        threads: cfg.limits.restore_threads(),
        key,
        progress: ProgressMode::Hidden,
    };
    let sel = DrillSelection {
        tenant: ask.tenant.clone(),
        host: ask.host.clone(),
        source: ask.source.clone(),
    };
    let point = match ask.random_seed {
        Some(seed) => Point::Random(seed),
        None => Point::Latest,
    };
    let r = refuge_client::run_drill(&node, &sel, &point, &opts, true, id, |_| {}).await?;
    Ok(Finished {
        passed: r.passed,
        record_errors: r.record_errors.clone(),
        json: serde_json::to_string_pretty(&r).unwrap_or_default(),
        markdown: refuge_client::drill_markdown(&r),
    })
}
