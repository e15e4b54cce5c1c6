//! The top floor: [`run`] opens the RocksDB store and calls [`serve`],
//! which puts everything together. Health is served at once (and every
//! refuge service answers UNAVAILABLE through its `gate`) while the store
//! opens; then the audit log, the policies, the maintenance schedules,
//! the node's drills and the watches start, and the gates open.
//!
//! - `accept`: the accept loop, the TLS handshake and connection limits.
//! - `backend`: opening the configured store backend, flushing it.
//! - `gate`: a service that answers UNAVAILABLE until it is opened.
//! - `metrics_http`: `GET /metrics`.
//! - `reload`: re-reading the revocation list and disk reserve.

mod accept;
mod backend;
mod gate;
mod metrics_http;
mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context as _;
use refuge_proto::pb::admin_server::AdminServer;
use refuge_proto::pb::audit_server::AuditServer;
use refuge_proto::pb::ingest_server::IngestServer;
use refuge_proto::pb::replication_server::ReplicationServer;
use refuge_proto::pb::restore_server::RestoreServer;
use refuge_proto::pb::supervision_server::SupervisionServer;
use refuge_store::Store;
use refuge_store_rocksdb::RocksOptions;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use self::gate::Gate;
use crate::config::{
    DrillConfig, EncryptionPolicy, GcConfig, HealthConfig, LimitsConfig, NodeConfig, PurgeConfig,
    QuotaConfig, ReplicationPeer, RetentionConfig, SecondFactorConfig, SloConfig, VerifyConfig,
    parse_window,
};
use crate::console::Console;
use crate::floor::changes::Changes;
use crate::floor::disk::Disk;
use crate::floor::health::{INGEST, clear_all, set_all, systemd};
use crate::floor::metrics::Metrics;
use crate::policy::access::Access;
use crate::policy::audit::{AuditLog, Outcome};
use crate::policy::quota::Quotas;
use crate::policy::second_factor::SecondFactor;
use crate::services::admin::AdminService;
use crate::services::audit::AuditService;
use crate::services::ingest::IngestService;
use crate::services::replication::ReplicationService;
use crate::services::restore::RestoreService;
use crate::services::supervision::{NodeFacts, Supervised, SupervisionService};
use crate::work::drills::NodeDrills;
use crate::work::maintenance::Maintenance;
use crate::work::replicate::{Board, Local, PeerTask};
use crate::work::watch::{monitor_disk, watchdog};

/// What [`serve`] needs besides the store and listener.
pub struct ServeOptions {
    /// TLS 1.3 server configuration requiring client certificates.
    pub tls: rustls_config::ServerConfig,
    /// Client input limits.
    pub limits: LimitsConfig,
    /// Serial numbers of revoked client certificates (normalised hex).
    pub revoked: std::collections::HashSet<String>,
    /// The config file to re-read for `tls.revoked_serials` on SIGHUP and
    /// when it changes (`None`: the list is fixed).
    pub reload_from: Option<std::path::PathBuf>,
    /// Scheduled retention and the default policy.
    pub retention: RetentionConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Per-tenant quotas.
    pub quota: QuotaConfig,
    /// Scheduled verification.
    pub verify: VerifyConfig,
    /// Which tenants must back up encrypted.
    pub encryption: EncryptionPolicy,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Health reporting and the free-space reserve.
    pub health: HealthConfig,
    /// The store's directory (its free space is watched).
    pub data_dir: std::path::PathBuf,
    /// Certificate expiry dates, for `Status`.
    pub facts: NodeFacts,
    /// Drills the node runs itself.
    pub drill: DrillConfig,
    /// Peers to replicate with.
    pub replication: Vec<ReplicationPeer>,
    /// Recovery targets.
    pub slo: SloConfig,
    /// Where to serve the web console, if anywhere, and its TLS
    /// configuration (client certificates optional: a page says why one
    /// is needed).
    pub console: Option<(SocketAddr, rustls_config::ServerConfig)>,
    /// Second factors for admins and operators.
    pub second_factor: SecondFactorConfig,
    /// Purges of a tenant or source.
    pub purge: PurgeConfig,
}

/// Re-export of the rustls type used in [`ServeOptions`].
pub mod rustls_config {
    pub use tokio_rustls::rustls::ServerConfig;
}

/// How long a stop waits for open calls before it cuts them.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the node from its configuration until `shutdown` completes: serves
/// health (NOT_SERVING) at once, opens the RocksDB store, serves
/// everything, then flushes the store.
pub async fn run(
    cfg: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let ca = read(&cfg.tls.ca, "CA certificate")?;
    let pair = refuge_tls::CertPair {
        cert_pem: read(&cfg.tls.cert, "node certificate")?,
        key_pem: read(&cfg.tls.key, "node key")?,
    };
    let tls = refuge_tls::server_config(&ca, &pair).context("building the TLS configuration")?;
    let console = match cfg.console.listen {
        Some(at) => Some((
            at,
            refuge_tls::console_server_config(&ca, &pair)
                .context("building the console's TLS configuration")?,
        )),
        None => None,
    };
    let expiry = |pem: &str| {
        refuge_tls::not_after(pem)
            .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
            .unwrap_or(0)
    };
    let facts = NodeFacts {
        node_cert_not_after: expiry(&pair.cert_pem),
        ca_cert_not_after: expiry(&ca),
        site: cfg.site.clone(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let opts = RocksOptions {
        block_cache_bytes: cfg.rocksdb.block_cache_mib << 20,
        chunk_write_buffer_bytes: cfg.rocksdb.chunk_write_buffer_mib << 20,
        direct_io: cfg.rocksdb.direct_io,
        ..RocksOptions::default()
    };
    let dir = cfg.data_dir.clone();
    let opened: Arc<std::sync::Mutex<Option<Arc<backend::Opened>>>> = Arc::default();
    let store_cfg = cfg.store.clone();
    let slot = opened.clone();
    let open = async move {
        // Tests use this to watch the node before its store is open.
        if let Some(ms) = std::env::var("REFUGED_TEST_OPEN_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let d = dir.clone();
        let opened =
            tokio::task::spawn_blocking(move || backend::Opened::open(&d, &store_cfg, &opts))
                .await??;
        let opened = Arc::new(opened);
        let store = opened.store();
        info!(data_dir = %dir.display(), bodies = %opened.describe(), "store open");
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
        Ok::<Arc<dyn Store>, anyhow::Error>(store)
    };
    let served = serve(
        open,
        listener,
        ServeOptions {
            tls,
            revoked: cfg.tls.revoked(),
            reload_from: cfg.source.clone(),
            limits: cfg.limits,
            retention: cfg.retention,
            gc: cfg.gc,
            quota: cfg.quota,
            verify: cfg.verify,
            encryption: cfg.encryption,
            metrics_listen: cfg.metrics.listen,
            health: cfg.health,
            data_dir: cfg.data_dir.clone(),
            facts,
            drill: cfg.drill,
            replication: cfg.replication,
            slo: cfg.slo,
            console,
            second_factor: cfg.second_factor,
            purge: cfg.purge,
        },
        shutdown,
    )
    .await;
    let store = opened.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(store) = store {
        tokio::task::spawn_blocking(move || store.flush())
            .await?
            .context("flushing the store at shutdown")?;
        info!("store flushed; stopped");
    }
    served
}

/// Serves the refuge services on `listener` until `shutdown`: health (and
/// UNAVAILABLE from every refuge service) at once, everything once `store`
/// has opened.
pub async fn serve(
    store: impl Future<Output = anyhow::Result<Arc<dyn Store>>> + Send,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // A metrics or health address that cannot be bound is a configuration
    // error, reported before anything is served.
    let metrics_listener =
        match opts.metrics_listen {
            Some(at) => Some(TcpListener::bind(at).await.with_context(|| {
                format!("cannot listen for metrics on {at} ([metrics] listen)")
            })?),
            None => None,
        };
    let plain_health = match opts.health.plaintext_listen {
        Some(at) => Some(TcpListener::bind(at).await.with_context(|| {
            format!("cannot listen for plaintext health checks on {at} ([health] plaintext_listen)")
        })?),
        None => None,
    };
    let console_listener = match &opts.console {
        Some((at, _)) => Some(TcpListener::bind(at).await.with_context(|| {
            format!("cannot listen for the console on {at} ([console] listen)")
        })?),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    systemd(&[sd_notify::NotifyState::Status("opening the store")]);
    // Health first: everything NOT_SERVING until the store is open.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_all(&health, ServingStatus::NotServing).await;
    let ingest_gate = Gate::new();
    let restore_gate = Gate::new();
    let audit_gate = Gate::new();
    let admin_gate = Gate::new();
    let supervision_gate = Gate::new();
    let replication_gate = Gate::new();

    // The accept loop runs from the start; refusals are audited once the
    // audit log exists (before that, only logged).
    let audit_slot: Arc<std::sync::OnceLock<AuditLog>> = Arc::default();
    let (conn_tx, conn_rx) = mpsc::channel(64);
    tokio::spawn({
        let acceptor = TlsAcceptor::from(Arc::new(opts.tls));
        let (log, limits, stop) = (audit_slot.clone(), opts.limits.clone(), stop_rx.clone());
        async move { accept::accept_loop(listener, acceptor, &limits, log, conn_tx, stop).await }
    });

    // On stop: NOT_SERVING everywhere, a moment for watchers to hear it,
    // then the statuses are removed, which ends their Watch streams.
    let drained = {
        let mut stop = stop_rx.clone();
        let mut h = health.clone();
        async move {
            let _ = stop.changed().await;
            systemd(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("stopping"),
            ]);
            set_all(&h, ServingStatus::NotServing).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            clear_all(&mut h).await;
        }
    };
    let (drained_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    {
        let tx = drained_tx.clone();
        tokio::spawn(async move {
            drained.await;
            let _ = tx.send(());
        });
    }
    if let Some(l) = plain_health {
        let at = l.local_addr()?;
        let mut done = drained_tx.subscribe();
        let svc = health_service.clone();
        tokio::spawn(async move {
            info!(%at, "plaintext health checks (grpc.health.v1 only) on {at}");
            let r = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    async move {
                        let _ = done.recv().await;
                    },
                )
                .await;
            if let Err(e) = r {
                tracing::error!("plaintext health endpoint failed: {e:#}");
            }
        });
    }
    let mut done = drained_tx.subscribe();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(opts.limits.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(ingest_gate.clone())
            .add_service(restore_gate.clone())
            .add_service(audit_gate.clone())
            .add_service(admin_gate.clone())
            .add_service(supervision_gate.clone())
            .add_service(replication_gate.clone())
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                let _ = done.recv().await;
            }),
    );
    info!(%addr, "refuged listening (gRPC over TLS 1.3, client certificates required); opening the store");

    // Now the store; a node stopped while it opens stops cleanly.
    let mut early_stop = stop_rx.clone();
    let store = tokio::select! {
        s = store => s?,
        _ = early_stop.changed() => {
            let _ = server.await;
            return Ok(());
        }
    };
    let metrics = Metrics::new();
    let audit = AuditLog::start(store.clone(), metrics.clone());
    let _ = audit_slot.set(audit.clone());
    let second = {
        let (cfg, site, store, audit) = (
            opts.second_factor.clone(),
            opts.facts.site.clone(),
            store.clone(),
            audit.clone(),
        );
        tokio::task::spawn_blocking(move || SecondFactor::open(&cfg, &site, store, audit)).await??
    };
    let access = Arc::new(Access::new(audit.clone(), opts.revoked, second));
    audit.record(
        "node",
        "",
        "node_started",
        Outcome::Ok,
        &format!(
            "listening on {addr}; {} revoked serials",
            access.revoked_count()
        ),
    );
    let disk = Disk::new(opts.health.min_free_mib, opts.data_dir.clone());
    let board = Board::default();
    let changes = Changes::new();
    let slo = Arc::new(opts.slo);
    if let Some(l) = metrics_listener {
        let stop = stop_rx.clone();
        let (metrics, store, disk) = (metrics.clone(), store.clone(), disk.clone());
        let (board, slo) = (board.clone(), slo.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics_http::serve(l, metrics, store, disk, board, slo, stop).await {
                tracing::error!("metrics endpoint failed: {e:#}");
            }
        });
    }
    if let Some(path) = opts.reload_from {
        tokio::spawn(reload::watch_config(
            path,
            access.clone(),
            disk.clone(),
            stop_rx.clone(),
        ));
    }
    let maintenance = Maintenance::new(
        store.clone(),
        access.clone(),
        opts.retention.default,
        Duration::from_secs(opts.gc.grace_secs),
        opts.verify.sample_percent,
    );
    if opts.verify.interval_secs > 0 {
        tokio::spawn(maintenance.clone().every(
            Duration::from_secs(opts.verify.interval_secs),
            "verification",
            Maintenance::scheduled_verify,
            stop_rx.clone(),
        ));
    }
    if opts.retention.interval_secs > 0 {
        tokio::spawn(maintenance.clone().every(
            Duration::from_secs(opts.retention.interval_secs),
            "retention_failed",
            Maintenance::scheduled_retention,
            stop_rx.clone(),
        ));
    }

    let node_drills = NodeDrills::new(opts.drill.clone(), store.clone(), audit.clone());
    if !opts.drill.window.is_empty() {
        let w = parse_window(&opts.drill.window)?;
        tokio::spawn(node_drills.clone().scheduled(w, stop_rx.clone()));
    }
    let max = refuge_proto::MAX_MESSAGE_BYTES;
    ingest_gate.open(
        IngestServer::new(IngestService::new(
            store.clone(),
            access.clone(),
            Arc::new(Quotas::new(opts.quota)),
            opts.encryption.clone(),
            &opts.limits,
            disk.clone(),
            changes.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    restore_gate.open(
        RestoreServer::new(RestoreService::new(
            store.clone(),
            access.clone(),
            opts.facts.site.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    let supervised = Arc::new(Supervised {
        store: store.clone(),
        access: access.clone(),
        disk: disk.clone(),
        metrics: metrics.clone(),
        facts: opts.facts.clone(),
        drills: node_drills.clone(),
        replication: board.clone(),
        slo: slo.clone(),
    });
    supervision_gate.open(
        SupervisionServer::new(SupervisionService::new(supervised.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    audit_gate.open(
        AuditServer::new(AuditService::new(store.clone(), access.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    admin_gate.open(
        AdminServer::new(AdminService::new(maintenance, opts.purge.delay_secs))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    replication_gate.open(
        ReplicationServer::new(ReplicationService::new(
            store.clone(),
            access.clone(),
            disk.clone(),
            opts.encryption.clone(),
            opts.limits.max_chunk_size,
            changes.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    // The first disk check decides whether ingest starts SERVING.
    let low = disk.first_check();
    if !*stop_rx.borrow() {
        set_all(&health, ServingStatus::Serving).await;
        if low {
            health
                .set_service_status(INGEST, ServingStatus::NotServing)
                .await;
            audit.record(
                "node",
                "",
                "disk_low",
                Outcome::Failed,
                &format!(
                    "{} MiB free in {} (reserve {} MiB): ingest refuses uploads and commits",
                    disk.free.load(Relaxed) >> 20,
                    opts.data_dir.display(),
                    disk.min_free.load(Relaxed) >> 20
                ),
            );
        }
    }
    if !*stop_rx.borrow() {
        systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(if low {
                "serving; ingest refusing: free space below [health] min_free_mib"
            } else {
                "serving"
            }),
        ]);
    }
    for peer in opts.replication {
        let task = PeerTask {
            local: Local {
                store: store.clone(),
                audit: audit.clone(),
                subject: format!("replication:{}", peer.name),
                encryption: opts.encryption.clone(),
                max_chunk: opts.limits.max_chunk_size,
                disk: disk.clone(),
                changes: changes.clone(),
            },
            peer,
            board: board.clone(),
            health: health.clone(),
        };
        tokio::spawn(task.run(stop_rx.clone()));
    }
    if let (Some(l), Some((_, tls))) = (console_listener, opts.console) {
        let mut form_key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *form_key).context("no randomness for the console's forms")?;
        let console = Arc::new(Console {
            node: supervised.clone(),
            form_key,
        });
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::console::serve(l, tls, console, stop).await {
                tracing::error!("web console failed: {e:#}");
            }
        });
    }
    tokio::spawn(watchdog(store.clone(), stop_rx.clone()));
    tokio::spawn(monitor_disk(
        opts.data_dir.clone(),
        disk,
        store.clone(),
        health.clone(),
        audit.clone(),
        Duration::from_secs(opts.health.check_interval_secs),
        stop_rx.clone(),
    ));
    info!(%addr, "store open: serving");
    // A stop waits for open calls, but not for ever: a peer or client
    // whose link stalled mid-stream would hold it. What was acknowledged
    // is durable already; a call cut here is retried by its client.
    let mut stopping = stop_rx.clone();
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let mut server = server;
    tokio::select! {
        r = &mut server => {
            r.context("gRPC server task failed")?
                .context("gRPC server failed")?;
        }
        _ = grace => {
            warn!(
                "calls still open {} s after the stop were cut",
                STOP_GRACE.as_secs()
            );
            server.abort();
        }
    }
    audit.record("node", "", "node_stopped", Outcome::Ok, "shut down");
    if tokio::time::timeout(Duration::from_secs(10), audit.flush())
        .await
        .is_err()
    {
        warn!("audit records still queued at shutdown were not all written");
    }
    info!("server stopped");
    Ok(())
}
