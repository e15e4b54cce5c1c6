//! `refuge health`: asks the node's `grpc.health.v1` service how the node
//! and each refuge service are, over mutual TLS (any client certificate of
//! the node's CA) or, with `--plaintext`, on the node's loopback-only
//! plaintext health port.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::commands::config;
use crate::{Failure, Outcome};

/// What `refuge health` asks about by default: the node, then each service.
pub const SERVICES: [&str; 6] = [
    "",
    "refuge.v1.Ingest",
    "refuge.v1.Restore",
    "refuge.v1.Audit",
    "refuge.v1.Admin",
    "refuge.v1.Supervision",
];

#[derive(Serialize)]
struct Row {
    service: String,
    status: String,
}

/// `refuge health`: exit 0 when everything asked about is SERVING, 1
/// otherwise.
pub async fn health(
    path: &Path,
    services: &[String],
    plaintext: Option<&str>,
    json: bool,
) -> Outcome {
    let channel = match plaintext {
        Some(addr) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Failure::Usage(anyhow!("--plaintext {addr:?} is not host:port: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the plaintext health port {addr}: {e}"))?,
        None => refuge_client::channel(&config(path)?.node).await?,
    };
    let mut client = HealthClient::new(channel);
    let asked: Vec<String> = if services.is_empty() {
        SERVICES.iter().map(|s| s.to_string()).collect()
    } else {
        services.to_vec()
    };
    let mut rows = Vec::new();
    let mut all_serving = true;
    for s in asked {
        let status = match client
            .check(HealthCheckRequest { service: s.clone() })
            .await
        {
            Ok(r) => match ServingStatus::try_from(r.into_inner().status) {
                Ok(ServingStatus::Serving) => "SERVING".to_string(),
                Ok(other) => other.as_str_name().to_string(),
                Err(_) => "UNKNOWN".to_string(),
            },
            Err(st) if st.code() == tonic::Code::NotFound => "SERVICE_UNKNOWN".to_string(),
            Err(st) => return Err(anyhow!("{}", refuge_client::explain_status(&st)).into()),
        };
        all_serving &= status == "SERVING";
        rows.push(Row { service: s, status });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
        );
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
