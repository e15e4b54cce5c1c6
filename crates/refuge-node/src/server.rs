//! The server loop: accept TCP, complete a TLS 1.3 handshake that requires
//! a client certificate signed by the configured CA, then serve gRPC.
//!
//! The handshake runs here, not inside tonic, so that the node controls the
//! protocol version and logs every refused handshake as an audit event.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use refuge_proto::pb::admin_server::AdminServer;
use refuge_proto::pb::audit_server::AuditServer;
use refuge_proto::pb::ingest_server::IngestServer;
use refuge_proto::pb::restore_server::RestoreServer;
use refuge_store::Store;
use refuge_store_rocksdb::{ReopeningStore, RocksOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{info, warn};

use crate::access::Access;
use crate::audit::{AuditLog, Outcome};
use crate::config::{
    GcConfig, LimitsConfig, NodeConfig, QuotaConfig, RetentionConfig, VerifyConfig,
};
use crate::health::Gate;
use crate::maintenance::{AdminService, Maintenance};
use crate::quota::Quotas;
use crate::service::{AuditService, IngestService, RestoreService};
use crate::supervision::SupervisionService;
use refuge_proto::pb::supervision_server::SupervisionServer;
use tonic_health::ServingStatus;

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
    pub encryption: crate::config::EncryptionPolicy,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Health reporting and the free-space reserve.
    pub health: crate::config::HealthConfig,
    /// The store's directory (its free space is watched).
    pub data_dir: std::path::PathBuf,
    /// Certificate expiry dates, for `Status`.
    pub facts: crate::supervision::NodeFacts,
    /// Drills the node runs itself.
    pub drill: crate::config::DrillConfig,
}

/// Re-export of the rustls type used in [`ServeOptions`].
pub mod rustls_config {
    pub use tokio_rustls::rustls::ServerConfig;
}

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
    let expiry = |pem: &str| {
        refuge_tls::not_after(pem)
            .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
            .unwrap_or(0)
    };
    let facts = crate::supervision::NodeFacts {
        node_cert_not_after: expiry(&pair.cert_pem),
        ca_cert_not_after: expiry(&ca),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let opts = RocksOptions {
        block_cache_bytes: cfg.rocksdb.block_cache_mib << 20,
        chunk_write_buffer_bytes: cfg.rocksdb.chunk_write_buffer_mib << 20,
        ..RocksOptions::default()
    };
    let dir = cfg.data_dir.clone();
    let opened: Arc<std::sync::Mutex<Option<Arc<ReopeningStore>>>> = Arc::default();
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
        let store = tokio::task::spawn_blocking(move || ReopeningStore::open(&d, &opts))
            .await?
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
        let store = Arc::new(store);
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());
        info!(data_dir = %dir.display(), "store open");
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
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    crate::health::systemd(&[sd_notify::NotifyState::Status("opening the store")]);
    // Health first: everything NOT_SERVING until the store is open.
    let (health, health_service) = tonic_health::server::health_reporter();
    crate::health::set_all(&health, ServingStatus::NotServing).await;
    let ingest_gate = Gate::new();
    let restore_gate = Gate::new();
    let audit_gate = Gate::new();
    let admin_gate = Gate::new();
    let supervision_gate = Gate::new();

    // The accept loop runs from the start; refusals are audited once the
    // audit log exists (before that, only logged).
    let audit_slot: Arc<std::sync::OnceLock<AuditLog>> = Arc::default();
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let handshake_timeout = Duration::from_secs(opts.limits.handshake_timeout_secs);
    // Each connection (from accept to close, handshake included) holds a
    // permit: the node's connection buffers do not grow past the limit.
    let slots = Arc::new(Semaphore::new(opts.limits.max_connections as usize));
    let clients = Arc::new(ClientSlots::new(opts.limits.max_connections_per_client));
    let mut accept_stop = stop_rx.clone();
    let refused_log = audit_slot.clone();
    let acceptor = TlsAcceptor::from(Arc::new(opts.tls));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accept_stop.changed() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                audit_refused(
                    &refused_log,
                    peer,
                    "too many connections (limits.max_connections)",
                );
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            let log = refused_log.clone();
            let clients = clients.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        // The handshake required a client certificate.
                        let cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| refuge_core::ChunkId::of(c.as_ref()).0)
                            .unwrap_or_default();
                        let Some(client) = clients.admit(cert) else {
                            audit_refused(
                                &log,
                                peer,
                                "too many connections from this client certificate \
                                 (limits.max_connections_per_client)",
                            );
                            return;
                        };
                        let conn = Limited {
                            inner: tls,
                            _permit: permit,
                            _client: client,
                        };
                        let _ = tx.send(Ok::<_, std::io::Error>(conn)).await;
                    }
                    Ok(Err(e)) => audit_refused(&log, peer, &e.to_string()),
                    Err(_) => audit_refused(&log, peer, "TLS handshake timed out"),
                }
            });
        }
    });

    // On stop: NOT_SERVING everywhere, a moment for watchers to hear it,
    // then the statuses are removed, which ends their Watch streams.
    let drained = {
        let mut stop = stop_rx.clone();
        let mut h = health.clone();
        async move {
            let _ = stop.changed().await;
            crate::health::systemd(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("stopping"),
            ]);
            crate::health::set_all(&h, ServingStatus::NotServing).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            crate::health::clear_all(&mut h).await;
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
    let metrics = crate::metrics::Metrics::new();
    let audit = AuditLog::start(store.clone(), metrics.clone());
    let _ = audit_slot.set(audit.clone());
    let access = Arc::new(Access::new(audit.clone(), opts.revoked));
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
    let disk = crate::health::Disk::new(opts.health.min_free_mib, opts.data_dir.clone());
    metrics.attach(store.clone(), disk.clone());
    if let Some(l) = metrics_listener {
        let stop = stop_rx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(l, metrics, stop).await {
                tracing::error!("metrics endpoint failed: {e:#}");
            }
        });
    }
    if let Some(path) = opts.reload_from {
        tokio::spawn(watch_config(
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

    let node_drills =
        crate::drills::NodeDrills::new(opts.drill.clone(), store.clone(), audit.clone());
    if !opts.drill.window.is_empty() {
        let w = crate::config::parse_window(&opts.drill.window)?;
        tokio::spawn(node_drills.clone().scheduled(w, stop_rx.clone()));
    }
    let max = refuge_proto::MAX_MESSAGE_BYTES;
    ingest_gate.open(
        IngestServer::new(IngestService::new(
            store.clone(),
            access.clone(),
            Arc::new(Quotas::new(opts.quota)),
            opts.encryption,
            opts.limits.max_chunk_size,
            opts.limits.ingest_buffer_mib,
            disk.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    restore_gate.open(
        RestoreServer::new(RestoreService::new(store.clone(), access.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    supervision_gate.open(
        SupervisionServer::new(SupervisionService::new(
            store.clone(),
            access.clone(),
            disk.clone(),
            metrics.clone(),
            opts.facts.clone(),
            node_drills.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
    );
    audit_gate.open(
        AuditServer::new(AuditService::new(store.clone(), access))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    admin_gate.open(
        AdminServer::new(AdminService::new(maintenance))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    // The first disk check decides whether ingest starts SERVING.
    let min = disk.min_free.load(std::sync::atomic::Ordering::Relaxed);
    if let Ok(s) = rustix::fs::statvfs(&opts.data_dir) {
        let free = s.f_bavail.saturating_mul(s.f_frsize);
        disk.free.store(free, std::sync::atomic::Ordering::Relaxed);
        disk.total.store(
            s.f_blocks.saturating_mul(s.f_frsize),
            std::sync::atomic::Ordering::Relaxed,
        );
        disk.low
            .store(free < min, std::sync::atomic::Ordering::Relaxed);
    }
    if !*stop_rx.borrow() {
        crate::health::set_all(&health, ServingStatus::Serving).await;
        if disk.low.load(std::sync::atomic::Ordering::Relaxed) {
            health
                .set_service_status(crate::health::INGEST, ServingStatus::NotServing)
                .await;
            audit.record(
                "node",
                "",
                "disk_low",
                Outcome::Failed,
                &format!(
                    "{} MiB free in {} (reserve {} MiB): ingest refuses uploads and commits",
                    disk.free.load(std::sync::atomic::Ordering::Relaxed) >> 20,
                    opts.data_dir.display(),
                    min >> 20
                ),
            );
        }
    }
    if !*stop_rx.borrow() {
        let low = disk.low.load(std::sync::atomic::Ordering::Relaxed);
        crate::health::systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(if low {
                "serving; ingest refusing: free space below [health] min_free_mib"
            } else {
                "serving"
            }),
        ]);
    }
    tokio::spawn(crate::health::watchdog(store.clone(), stop_rx.clone()));
    tokio::spawn(crate::health::monitor_disk(
        opts.data_dir.clone(),
        disk,
        store.clone(),
        health.clone(),
        audit.clone(),
        Duration::from_secs(opts.health.check_interval_secs),
        stop_rx.clone(),
    ));
    info!(%addr, "store open: serving");
    server
        .await
        .context("gRPC server task failed")?
        .context("gRPC server failed")?;
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

/// A connection that holds one of the node's connection slots until it is
/// dropped.
struct Limited<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// Open connections per client certificate (by the BLAKE3 hash of its
/// DER), at most `max` each.
struct ClientSlots {
    max: u32,
    open: std::sync::Mutex<std::collections::HashMap<[u8; 32], u32>>,
}

impl ClientSlots {
    fn new(max: u32) -> Self {
        ClientSlots {
            max,
            open: Default::default(),
        }
    }

    /// A slot for one more connection of `cert`, if it has fewer than
    /// `max`; given back when dropped.
    fn admit(self: &Arc<Self>, cert: [u8; 32]) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(cert).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            cert,
        })
    }
}

/// One connection's place in [`ClientSlots`].
struct ClientSlot {
    slots: Arc<ClientSlots>,
    cert: [u8; 32],
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.cert) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.cert);
            }
        }
    }
}

impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn audit_refused(log: &std::sync::OnceLock<AuditLog>, peer: SocketAddr, why: &str) {
    let Some(log) = log.get() else {
        warn!(%peer, "connection refused before the store was open: {why}");
        return;
    };
    log.record(
        &peer.to_string(),
        "",
        "auth_failed",
        Outcome::Refused,
        &format!("connection refused: {why}"),
    );
}

/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Re-reads the revocation list and the disk reserve (`[health]
/// min_free_mib`) from `path` on SIGHUP and whenever the file's
/// modification time or size changes; a file that no longer parses keeps
/// the previous values (and says so in the audit log).
async fn watch_config(
    path: std::path::PathBuf,
    access: Arc<Access>,
    disk: Arc<crate::health::Disk>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the config file is still watched");
            None
        }
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(CONFIG_POLL);
    loop {
        let why = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last { continue; }
                last = now;
                "file changed"
            }
        };
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || NodeConfig::load(&p)).await;
        match loaded {
            Ok(Ok(cfg)) => {
                let revoked = cfg.tls.revoked();
                let n = revoked.len();
                access.set_revoked(revoked);
                disk.min_free.store(
                    cfg.health.min_free_mib << 20,
                    std::sync::atomic::Ordering::Relaxed,
                );
                access.audit.record(
                    "node",
                    "",
                    "config_reloaded",
                    Outcome::Ok,
                    &format!(
                        "{} ({why}): {n} revoked serials and a disk reserve of {} MiB in effect; other settings apply at the next restart",
                        path.display(),
                        cfg.health.min_free_mib
                    ),
                );
            }
            Ok(Err(e)) => access.audit.record(
                "node",
                "",
                "config_reloaded",
                Outcome::Failed,
                &format!(
                    "{} ({why}): {e:#}; the previous revocation list stays in effect",
                    path.display()
                ),
            ),
            Err(e) => warn!(error = %e, "config reload failed"),
        }
    }
}
