//! A source's backup tried again after transient failures, and the
//! failure told to the node: what `backup`, `run` and `wal-push` share.

use refuge_client::{AgentConfig, connect_serving};

/// Backs up one source, trying again (with a fresh connection and the
/// checkpoint of the failed try) after transient failures, up to
/// `[limits] retries` times with doubling waits. Every try commits with the
/// same token, so a commit made by a try whose answer was lost is not
/// made twice.
pub(crate) async fn backup_with_retries(
    cfg: &AgentConfig,
    node: &mut Option<refuge_client::Node>,
    source: &refuge_client::SourceConfig,
    mut opts: refuge_client::BackupOptions,
) -> anyhow::Result<refuge_client::BackupReport> {
    // One token for every try: a try that finds its commit already made
    // (an earlier try's answer was lost) gets that snapshot back.
    opts.commit_token
        .get_or_insert_with(refuge_client::new_commit_token);
    let tries = cfg.limits.retries + 1;
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1..=tries {
        let result = match node.clone() {
            Some(n) => refuge_client::backup_source(&n, cfg, source, opts.clone()).await,
            // The first of [node] address and fallback whose ingest serves.
            None => match connect_serving(&cfg.node, "refuge.v1.Ingest").await {
                Ok(n) => {
                    *node = Some(n.clone());
                    refuge_client::backup_source(&n, cfg, source, opts.clone()).await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(r) => return Ok(r),
            Err(e) if refuge_client::is_transient(&e) && attempt < tries => {
                tracing::warn!(
                    "source {}: {e:#}; retrying in {}s (try {} of {tries})",
                    source.name,
                    wait.as_secs(),
                    attempt + 1
                );
                *node = None;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
            Err(e) if refuge_client::is_transient(&e) && tries > 1 => {
                return Err(e.context(format!(
                    "giving up after {tries} tries ([limits] retries = {})",
                    cfg.limits.retries
                )));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last try returns")
}

/// Tells the node (if it can be reached) that a source's backup failed,
/// so that its status shows the failure; best effort.
pub(crate) async fn report_failure(node: Option<&refuge_client::Node>, source: &str, error: &str) {
    let Some(n) = node else { return };
    let call = n.report_backup_failure(source, error);
    match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot report the failure to the node: {e:#}"),
        Err(_) => tracing::warn!("cannot report the failure to the node: timed out"),
    }
}
