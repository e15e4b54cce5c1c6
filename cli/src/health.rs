//! `refuge health`: asks the node's `grpc.health.v1` service how the node
//! and each refuge service are, over mutual TLS (any client certificate of
//! the node's CA) or, with `--plaintext`, on the node's loopback-only
//! plaintext health port.

use std::path::Path;

use anyhow::anyhow;
use refuge_client::{Health, command_config};
use serde::Serialize;

use crate::{Failure, Outcome, print_json};

/// What `refuge health` asks about by default: the node, then each service.
pub const SERVICES: [&str; 7] = [
    "",
    "refuge.v1.Ingest",
    "refuge.v1.Restore",
    "refuge.v1.Audit",
    "refuge.v1.Admin",
    "refuge.v1.Supervision",
    "refuge.v1.Replication",
];

#[derive(Serialize)]
struct Row {
    service: String,
    status: &'static str,
}

/// `refuge health`: exit 0 when everything asked about is SERVING, 1
/// otherwise.
pub async fn health(
    path: &Path,
    services: &[String],
    plaintext: Option<&str>,
    json: bool,
) -> Outcome {
    let mut health = match plaintext {
        Some(addr) => {
            Health::plaintext(addr)
                .map_err(|e| Failure::Usage(anyhow!("--plaintext {e}")))?
                .connect()
                .await?
        }
        None => Health::tls(&command_config(path)?.node).await?,
    };
    let asked: Vec<String> = if services.is_empty() {
        SERVICES.iter().map(|s| s.to_string()).collect()
    } else {
        services.to_vec()
    };
    let mut rows = Vec::new();
    for s in asked {
        let status = health.check(&s).await?;
        rows.push(Row { service: s, status });
    }
    let all_serving = rows.iter().all(|r| r.status == "SERVING");
    if json {
        print_json(&rows)?;
    } else {
        for r in &rows {
            let name = if r.service.is_empty() {
                "(node)"
            } else {
                &r.service
            };
            println!("{name:<24} {}", r.status);
        }
    }
    Ok(if all_serving { 0 } else { 1 })
}
