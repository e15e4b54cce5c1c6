//! `node.toml`: the node's configuration file (template:
//! `daemon/node.example.toml`, which a test checks against these defaults).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Address to listen on for gRPC over TLS.
    pub listen: SocketAddr,
    /// Directory of the RocksDB store (created if missing).
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsFiles,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where chunk bodies are kept (`[store]`).
    #[serde(default)]
    pub store: StoreConfig,
    /// RocksDB tuning.
    #[serde(default)]
    pub rocksdb: RocksConfig,
    /// Scheduled retention and the default policy.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcConfig,
    /// Per-tenant quotas.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Scheduled verification (scrub).
    #[serde(default)]
    pub verify: VerifyConfig,
    /// Which tenants must back up encrypted.
    #[serde(default)]
    pub encryption: EncryptionPolicy,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Health reporting (`grpc.health.v1`) and the disk-space reserve.
    #[serde(default)]
    pub health: HealthConfig,
    /// Drills run by the node itself.
    #[serde(default)]
    pub drill: DrillConfig,
    /// This node's site name, as status, metrics, drill reports and the
    /// audit log name it (default: `node`). Must come before the first
    /// table in the file.
    #[serde(default = "default_site")]
    pub site: String,
    /// Peers this node copies snapshots to or from (`[[replication]]`).
    #[serde(default)]
    pub replication: Vec<ReplicationPeer>,
    /// The web console (`[console]`, docs/console.md).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Recovery targets per tenant (`[slo]`): what counts as a breach.
    #[serde(default)]
    pub slo: SloConfig,
    /// Second factors for administrators and operators.
    #[serde(default)]
    pub second_factor: SecondFactorConfig,
    /// Purges of a tenant or source.
    #[serde(default)]
    pub purge: PurgeConfig,
    /// The file this was read from (watched for revocations), if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_site() -> String {
    "node".into()
}

/// Which way a replication runs, seen from this node.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This node sends its snapshots to the peer.
    #[default]
    Push,
    /// This node fetches the peer's snapshots.
    Pull,
}

impl Direction {
    /// `push` or `pull`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// One peer node (`[[replication]]`): where it is, how this node proves
/// itself to it, which tenants travel, which way, and when.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationPeer {
    /// The peer's name, in status, metrics labels and the audit log.
    pub name: String,
    /// `host:port` of the peer's gRPC listener.
    pub address: String,
    /// Name the peer's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA that signed the peer's node certificate.
    pub ca: PathBuf,
    /// This node's replica certificate for the peer (role replica, issued
    /// by the CA the peer trusts) and its key.
    pub cert: PathBuf,
    /// The key of `cert`.
    pub key: PathBuf,
    /// Tenants to copy; `["*"]` (the default): every tenant both this
    /// node has and the certificate grants.
    #[serde(default = "all_tenants")]
    pub tenants: Vec<String>,
    /// `push` (default): send this node's snapshots; `pull`: fetch the
    /// peer's.
    #[serde(default)]
    pub direction: Direction,
    /// Seconds between passes (and before a retry after a failed one).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Also start a pass as soon as a snapshot is committed or imported
    /// here (push): the peer lags by seconds, not by `interval_secs`.
    #[serde(default)]
    pub continuous: bool,
    /// Most chunk bytes sent (push) or fetched (pull) per second, in MiB;
    /// 0: no limit.
    #[serde(default)]
    pub bandwidth_mib: u64,
    /// Seconds to wait for a connection to the peer.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds the peer has to answer one call; a stalled link fails the
    /// pass within this, and the next pass resumes.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// Pull only: delete this node's copy of a snapshot the peer deleted
    /// (pruned), unless it is pinned here. Off by default: deletions do
    /// not travel, so a prune or an attacker on one site cannot remove
    /// another site's restore points. The node that holds the copy
    /// decides; no peer can ask it to delete.
    #[serde(default)]
    pub follow_deletions: bool,
    /// Push: keep a copy of this node's audit log at the peer, sent after
    /// each pass; pull: keep a copy of the peer's log here, fetched after
    /// each pass (on by default). The replica certificate must grant
    /// every tenant; turn it off for a peer that holds only some tenants.
    #[serde(default = "yes")]
    pub copy_audit: bool,
}

fn yes() -> bool {
    true
}

impl ReplicationPeer {
    /// Whether `tenant` is one this peer entry copies.
    pub fn copies(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == "*" || t == tenant)
    }
}

fn default_server_name() -> String {
    "localhost".into()
}
fn all_tenants() -> Vec<String> {
    vec!["*".into()]
}
fn default_interval() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_call_timeout() -> u64 {
    120
}

/// Certificate files (PEM). Relative paths are relative to the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA that signs client certificates (and the node's).
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// Serial numbers (hex, as `refuge certs show` prints them) of client
    /// certificates that are refused. Re-read on SIGHUP and when the file
    /// changes; no restart needed.
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

impl TlsFiles {
    /// The revoked serials, normalised (checked when the file is parsed).
    pub fn revoked(&self) -> std::collections::HashSet<String> {
        self.revoked_serials
            .iter()
            .filter_map(|s| refuge_tls::normalize_serial(s).ok())
            .collect()
    }
}

/// Limits on client input.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest chunk accepted, uncompressed, in bytes (at most 16 MiB).
    pub max_chunk_size: u32,
    /// Seconds a client has to finish the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Open client connections (handshakes included); more are closed at
    /// once and audited.
    pub max_connections: u32,
    /// Open connections of one client certificate; more are closed right
    /// after the handshake and audited, so one client cannot take every
    /// slot of `max_connections` from the others.
    pub max_connections_per_client: u32,
    /// Uploaded chunk data the node buffers before storing it, across all
    /// streams and agents, in MiB (uploads wait when it is full).
    pub ingest_buffer_mib: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_chunk_size: refuge_core::format::MAX_CHUNK_LEN,
            handshake_timeout_secs: 10,
            max_concurrent_streams: 64,
            max_connections: 256,
            max_connections_per_client: 16,
            ingest_buffer_mib: 128,
        }
    }
}

/// Scheduled retention.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds between scheduled runs (prune every tenant, then collect
    /// garbage); 0: only on demand (`refuge admin prune`).
    pub interval_secs: u64,
    /// The policy of tenants without one of their own (`refuge admin
    /// retention set`). All zeros keeps everything.
    pub default: refuge_core::retention::Policy,
}

/// Per-tenant quotas over a sliding 24 hours (0: unlimited).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Snapshots a tenant may commit per 24 hours.
    pub max_snapshots_per_day: u64,
    /// Bytes of new chunks (compressed) a tenant may upload per 24 hours.
    pub max_upload_bytes_per_day: u64,
    /// Overrides per tenant (`[quota.tenants.NAME]`).
    pub tenants: std::collections::BTreeMap<String, TenantQuota>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_snapshots_per_day: 10_000,
            max_upload_bytes_per_day: 0,
            tenants: Default::default(),
        }
    }
}

/// One tenant's quota overrides.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantQuota {
    /// Overrides `quota.max_snapshots_per_day`.
    pub max_snapshots_per_day: Option<u64>,
    /// Overrides `quota.max_upload_bytes_per_day`.
    pub max_upload_bytes_per_day: Option<u64>,
}

/// Which tenants must send encrypted snapshots: a commit whose manifest
/// is not encrypted is refused for them (the node cannot and does not
/// need to read the data to tell).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionPolicy {
    /// Every tenant.
    pub required: bool,
    /// These tenants (when `required` is false).
    pub tenants: Vec<String>,
}

impl EncryptionPolicy {
    /// Whether `tenant` must back up encrypted.
    pub fn requires(&self, tenant: &str) -> bool {
        self.required || self.tenants.iter().any(|t| t == tenant)
    }
}

/// The web console: HTTPS with the node's certificate and CA, client
/// certificates of the auditor, admin or operator role (docs/console.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address to serve the console on; none: no console.
    pub listen: Option<SocketAddr>,
}

/// Second factors (TOTP, RFC 6238) for the roles in `roles`: with
/// `enabled`, every RPC but `WhoAmI` and `SignIn` of such a caller needs a
/// session opened by a code (docs/security.md "Second factor").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecondFactorConfig {
    /// Whether second factors are required.
    pub enabled: bool,
    /// Roles that need one (`admin`, `operator`).
    pub roles: Vec<String>,
    /// 32 random bytes (hex) that seal the enrolled secrets; created (mode
    /// 0600) when missing. Keep it outside `data_dir`, so that a copy of
    /// the store does not hold what opens the secrets.
    pub key_file: Option<PathBuf>,
    /// Failed codes in a row that lock the identity.
    pub max_failures: u32,
    /// How long a locked identity stays locked.
    pub lockout_secs: u64,
    /// Wait after the first failed code; it doubles with each failure
    /// (at most 60 s), and a code sent sooner is refused unchecked.
    pub backoff_secs: u64,
    /// A session ends after this long without a call (the console's too).
    pub idle_secs: u64,
    /// ...and this long after its sign-in at the latest.
    pub session_secs: u64,
    /// Certificate names (CN) that need no second factor: service
    /// identities such as the node's own drill client or a timer's
    /// verification. Their calls are audited as usual.
    pub exempt: Vec<String>,
}

impl Default for SecondFactorConfig {
    fn default() -> Self {
        SecondFactorConfig {
            enabled: false,
            roles: vec!["admin".into(), "operator".into()],
            key_file: None,
            max_failures: 5,
            lockout_secs: 900,
            backoff_secs: 1,
            idle_secs: 900,
            session_secs: 8 * 3600,
            exempt: Vec::new(),
        }
    }
}

/// Purges (`refuge admin purge`): a request is confirmed by another admin
/// after `delay_secs`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeConfig {
    /// Least time between a purge's request and its confirmation.
    pub delay_secs: u64,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig { delay_secs: 86_400 }
    }
}

/// Recovery targets: a source breaches when its newest snapshot is older
/// than `rpo_secs`, or its last drill is older than `drill_age_secs` (or it
/// was never drilled), or its last drill failed. 0 switches a target off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// Largest recovery point (age of the newest snapshot), seconds.
    pub rpo_secs: u64,
    /// Largest age of the last drill, seconds.
    pub drill_age_secs: u64,
    /// Overrides per tenant (`[slo.tenants.NAME]`).
    pub tenants: std::collections::BTreeMap<String, SloTarget>,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            rpo_secs: 86_400,
            drill_age_secs: 30 * 86_400,
            tenants: Default::default(),
        }
    }
}

/// One tenant's recovery targets (unset: the `[slo]` default).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SloTarget {
    /// Overrides `slo.rpo_secs`.
    pub rpo_secs: Option<u64>,
    /// Overrides `slo.drill_age_secs`.
    pub drill_age_secs: Option<u64>,
}

impl SloConfig {
    /// `tenant`'s targets: (RPO, drill age) in seconds, 0 for none.
    pub fn targets(&self, tenant: &str) -> (u64, u64) {
        let t = self.tenants.get(tenant);
        (
            t.and_then(|t| t.rpo_secs).unwrap_or(self.rpo_secs),
            t.and_then(|t| t.drill_age_secs)
                .unwrap_or(self.drill_age_secs),
        )
    }
}

/// Prometheus metrics (`GET /metrics`, plain HTTP: bind it to a loopback
/// or management address).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve metrics on; none: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// Drills the node runs itself (`StartDrill`, and unannounced ones in a
/// daily window), as a DR operator would: through its own gRPC port with
/// the client configuration `client_config`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// A client configuration (`agent.toml` format; only `[node]`,
    /// `[limits]` and `[encryption]` are used) with an operator
    /// certificate for the tenants to drill. None: the node runs no
    /// drills.
    pub client_config: Option<PathBuf>,
    /// Where restores go (a temporary directory per drill, removed after
    /// it); default: the system's temporary directory.
    pub scratch_dir: Option<PathBuf>,
    /// Unannounced drills: every day at a random time inside this local
    /// time window, "HH:MM-HH:MM" (or with seconds); empty: none.
    pub window: String,
    /// A random snapshot of each source (true) or the newest (false), for
    /// scheduled drills.
    pub random_point: bool,
}

/// A daily window of local time, seconds after midnight: `[start, end)`;
/// `end < start` crosses midnight.
pub fn parse_window(text: &str) -> anyhow::Result<(u32, u32)> {
    let secs = |t: &str| -> Option<u32> {
        let mut it = t.trim().split(':');
        let h: u32 = it.next()?.parse().ok()?;
        let m: u32 = it.next()?.parse().ok()?;
        let s: u32 = match it.next() {
            Some(s) => s.parse().ok()?,
            None => 0,
        };
        (it.next().is_none() && h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
    };
    let (a, b) = text.split_once('-').ok_or_else(|| {
        anyhow::anyhow!("drill.window {text:?}: give a window like \"02:00-05:00\"")
    })?;
    match (secs(a), secs(b)) {
        (Some(a), Some(b)) if a != b => Ok((a, b)),
        _ => bail!(
            "drill.window {text:?}: give a window like \"02:00-05:00\" (HH:MM or HH:MM:SS, start and end differ)"
        ),
    }
}

/// Health reporting and the free-space reserve of the store's disk.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Below this much free space on the store's file system (MiB), ingest
    /// refuses uploads and commits with RESOURCE_EXHAUSTED and reports
    /// NOT_SERVING; restores go on. Re-read on SIGHUP and when the file
    /// changes.
    pub min_free_mib: u64,
    /// Seconds between checks of the free space.
    pub check_interval_secs: u64,
    /// Also serve `grpc.health.v1` without TLS on this loopback address,
    /// for local probes; none: only over mutual TLS on `listen`.
    pub plaintext_listen: Option<SocketAddr>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            min_free_mib: 1024,
            check_interval_secs: 10,
            plaintext_listen: None,
        }
    }
}

/// Scheduled verification.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Seconds between scheduled runs; 0: only on demand (`refuge admin
    /// verify`).
    pub interval_secs: u64,
    /// Share of chunks each scheduled run checks, 1 to 100 (a different
    /// random share each time).
    pub sample_percent: u32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval_secs: 0,
            sample_percent: 100,
        }
    }
}

/// Garbage collection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// A chunk is deleted only after it has been unreferenced, and not
    /// reported to any client as present, for this long: a backup that
    /// takes longer than this may have to upload a chunk again.
    pub grace_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { grace_secs: 86_400 }
    }
}

/// Where chunk bodies are kept: in RocksDB with the catalog (the default),
/// or in pack objects in an S3-compatible bucket.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `rocksdb` or `s3`.
    pub backend: Backend,
    /// The bucket (`[store.s3]`), for `backend = "s3"`.
    pub s3: Option<refuge_store_s3::S3Config>,
}

/// The store backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Everything in RocksDB in `data_dir`.
    #[default]
    Rocksdb,
    /// Chunk bodies in packs in a bucket, the rest in RocksDB.
    S3,
}

/// RocksDB tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RocksConfig {
    /// Block cache, MiB.
    pub block_cache_mib: usize,
    /// Memtable of the chunk column family, MiB.
    pub chunk_write_buffer_mib: usize,
    /// Flushes and compactions (blob and table files) written with
    /// `O_DIRECT` where the file system takes it, past the page cache.
    pub direct_io: bool,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_mib: 64,
            chunk_write_buffer_mib: 64,
            direct_io: false,
        }
    }
}

impl NodeConfig {
    /// Reads and checks a config file; relative paths are resolved against
    /// the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Self::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        cfg.source = Some(path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ]
        .into_iter()
        .chain(cfg.drill.client_config.as_mut())
        .chain(
            cfg.store
                .s3
                .iter_mut()
                .flat_map(|s| std::iter::once(&mut s.credentials_file).chain(s.ca_file.as_mut())),
        )
        .chain(cfg.drill.scratch_dir.as_mut())
        .chain(cfg.second_factor.key_file.as_mut())
        .chain(
            cfg.replication
                .iter_mut()
                .flat_map(|r| [&mut r.ca, &mut r.cert, &mut r.key]),
        ) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: NodeConfig = toml::from_str(text)?;
        let l = &cfg.limits;
        if l.max_chunk_size == 0 || l.max_chunk_size > refuge_core::format::MAX_CHUNK_LEN {
            bail!(
                "limits.max_chunk_size must be between 1 and 16777216, got {}",
                l.max_chunk_size
            );
        }
        if l.ingest_buffer_mib == 0 || l.ingest_buffer_mib > 65_536 {
            bail!(
                "limits.ingest_buffer_mib must be between 1 and 65536, got {}",
                l.ingest_buffer_mib
            );
        }
        if l.max_connections == 0 {
            bail!("limits.max_connections must be at least 1");
        }
        if l.max_connections_per_client == 0 {
            bail!("limits.max_connections_per_client must be at least 1");
        }
        if l.handshake_timeout_secs == 0 {
            bail!("limits.handshake_timeout_secs must be at least 1");
        }
        if !(1..=100).contains(&cfg.verify.sample_percent) {
            bail!(
                "verify.sample_percent must be between 1 and 100, got {}",
                cfg.verify.sample_percent
            );
        }
        if cfg.health.check_interval_secs == 0 {
            bail!("health.check_interval_secs must be at least 1");
        }
        if let Some(a) = cfg.health.plaintext_listen
            && !a.ip().is_loopback()
        {
            bail!(
                "health.plaintext_listen must be a loopback address (127.0.0.0/8 or ::1), got {a}: \
                 anything else is served over mutual TLS on `listen`"
            );
        }
        if !cfg.drill.window.is_empty() {
            parse_window(&cfg.drill.window)?;
            if cfg.drill.client_config.is_none() {
                bail!("drill.window needs drill.client_config (the identity the node drills with)");
            }
        }
        match (cfg.store.backend, &cfg.store.s3) {
            (Backend::S3, None) => bail!(
                "store.backend = \"s3\" needs a [store.s3] section (endpoint, bucket, credentials_file)"
            ),
            (Backend::Rocksdb, Some(_)) => bail!(
                "[store.s3] is set but store.backend is \"rocksdb\": set backend = \"s3\" to use the bucket, or remove [store.s3]"
            ),
            (Backend::S3, Some(s3)) if !(1..=1024).contains(&s3.pack_mib) => bail!(
                "store.s3.pack_mib must be between 1 and 1024, got {}",
                s3.pack_mib
            ),
            _ => {}
        }
        let sf = &cfg.second_factor;
        if sf.enabled {
            if sf.key_file.is_none() {
                bail!(
                    "second_factor.enabled needs second_factor.key_file (where the key that seals the enrolled secrets is kept; created when missing)"
                );
            }
            for r in &sf.roles {
                if r != "admin" && r != "operator" {
                    bail!(
                        "second_factor.roles: {r:?} is not admin or operator (agents, replicas and auditors have no second factor)"
                    );
                }
            }
            if sf.max_failures == 0 || sf.idle_secs == 0 || sf.session_secs == 0 {
                bail!("second_factor.max_failures, idle_secs and session_secs must be at least 1");
            }
        }
        if cfg.site.is_empty() || cfg.site.len() > 64 {
            bail!("site must be 1 to 64 characters");
        }
        let mut names = std::collections::HashSet::new();
        for r in &cfg.replication {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                bail!(
                    "replication: every peer needs a name of its own ({:?} is empty or repeated)",
                    r.name
                );
            }
            if r.interval_secs == 0 {
                bail!("replication {:?}: interval_secs must be at least 1", r.name);
            }
            if r.follow_deletions && r.direction != Direction::Pull {
                bail!(
                    "replication {:?}: follow_deletions needs direction = \"pull\" (the node that holds the copy decides; a pushing node cannot delete at its peer)",
                    r.name
                );
            }
            if r.tenants.is_empty() {
                bail!(
                    "replication {:?}: tenants is empty (use [\"*\"] for every tenant)",
                    r.name
                );
            }
            for t in r.tenants.iter().filter(|t| *t != "*") {
                refuge_core::TenantId::new(t.clone())
                    .map_err(|e| anyhow::anyhow!("replication {:?}: {e}", r.name))?;
            }
            if r.address.parse::<SocketAddr>().is_err() && !r.address.contains(':') {
                bail!(
                    "replication {:?}: address {:?} is not host:port",
                    r.name,
                    r.address
                );
            }
        }
        for t in cfg.slo.tenants.keys() {
            refuge_core::TenantId::new(t.clone())
                .map_err(|e| anyhow::anyhow!("slo.tenants: {e}"))?;
        }
        if let (Some(c), l) = (cfg.console.listen, cfg.listen)
            && c == l
        {
            bail!("console.listen ({c}) must differ from listen (the gRPC port)");
        }
        for s in &cfg.tls.revoked_serials {
            refuge_tls::normalize_serial(s)
                .map_err(|e| anyhow::anyhow!("tls.revoked_serials: {e}"))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_matches_the_defaults() {
        let text = include_str!("../../../daemon/node.example.toml");
        let cfg = NodeConfig::parse(text).expect("template parses");
        assert_eq!(cfg.limits, LimitsConfig::default());
        assert_eq!(cfg.rocksdb, RocksConfig::default());
        assert_eq!(cfg.retention, RetentionConfig::default());
        assert_eq!(cfg.gc, GcConfig::default());
        assert_eq!(cfg.quota, QuotaConfig::default());
        assert_eq!(cfg.verify, VerifyConfig::default());
        assert_eq!(cfg.encryption, EncryptionPolicy::default());
        assert_eq!(cfg.metrics, MetricsConfig::default());
        assert_eq!(cfg.health, HealthConfig::default());
        assert_eq!(cfg.drill, DrillConfig::default());
        assert_eq!(cfg.site, "node");
        assert!(cfg.replication.is_empty());
        assert_eq!(cfg.console, ConsoleConfig::default());
        assert_eq!(cfg.slo, SloConfig::default());
        assert_eq!(cfg.second_factor, SecondFactorConfig::default());
        assert_eq!(cfg.purge, PurgeConfig::default());
    }

    #[test]
    fn a_second_factor_needs_a_key_file_and_known_roles() {
        let base = "listen = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[second_factor]\nenabled = true\n";
        let e = NodeConfig::parse(base).unwrap_err().to_string();
        assert!(e.contains("needs second_factor.key_file"), "{e}");
        let e = NodeConfig::parse(&format!("{base}key_file = \"k\"\nroles = [\"auditor\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"auditor\" is not admin or operator"), "{e}");
        let e = NodeConfig::parse(&format!("{base}key_file = \"k\"\nidle_secs = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1"), "{e}");
        let ok = NodeConfig::parse(&format!("{base}key_file = \"k\"\n")).unwrap();
        assert_eq!(ok.second_factor.roles, ["admin", "operator"]);
    }

    #[test]
    fn replication_peers_parse_with_defaults_and_bad_ones_are_refused() {
        let base = "listen = \"127.0.0.1:7443\"\ndata_dir = \"d\"\nsite = \"prov\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let peer = "[[replication]]\nname = \"dr\"\naddress = \"127.0.0.1:7444\"\nca = \"p.pem\"\ncert = \"r.pem\"\nkey = \"r.key\"\n";
        let cfg = NodeConfig::parse(&format!("{base}{peer}")).unwrap();
        assert_eq!(cfg.site, "prov");
        let r = &cfg.replication[0];
        assert_eq!(r.direction, Direction::Push);
        assert_eq!(r.interval_secs, 60);
        assert!(r.copies("anyone") && !r.continuous);
        let two = format!("{base}{peer}direction = \"pull\"\ntenants = [\"finance\"]\n");
        let r = &NodeConfig::parse(&two).unwrap().replication[0];
        assert_eq!(r.direction, Direction::Pull);
        assert!(r.copies("finance") && !r.copies("health"));
        for (extra, needle) in [
            (format!("{peer}{peer}"), "repeated"),
            (format!("{peer}interval_secs = 0\n"), "interval_secs"),
            (format!("{peer}tenants = []\n"), "tenants"),
            (format!("{peer}tenants = [\"bad name!\"]\n"), "replication"),
            (format!("{peer}direction = \"sideways\"\n"), "direction"),
            (peer.replace("127.0.0.1:7444", "nowhere"), "host:port"),
        ] {
            let e = NodeConfig::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{needle}: {e:#}");
        }
    }

    #[test]
    fn the_store_section_picks_a_backend_and_refuses_half_configurations() {
        let base = "listen = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        assert_eq!(
            NodeConfig::parse(base).unwrap().store.backend,
            Backend::Rocksdb
        );
        let s3 = "[store.s3]\nendpoint = \"http://127.0.0.1:7480\"\nbucket = \"refuge\"\ncredentials_file = \"creds.toml\"\n";
        let cfg = NodeConfig::parse(&format!("{base}[store]\nbackend = \"s3\"\n{s3}")).unwrap();
        assert_eq!(cfg.store.backend, Backend::S3);
        assert_eq!(cfg.store.s3.unwrap().pack_mib, 32);
        for (extra, needle) in [
            (
                "[store]\nbackend = \"s3\"\n".to_string(),
                "needs a [store.s3]",
            ),
            (s3.to_string(), "is set but store.backend is \"rocksdb\""),
            (
                format!("[store]\nbackend = \"s3\"\n{s3}pack_mib = 0\n"),
                "pack_mib",
            ),
            ("[store]\nbackend = \"ceph\"\n".to_string(), "backend"),
        ] {
            let e = NodeConfig::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{needle}: {e:#}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let base = "listen = \"127.0.0.1:7443\"\ndata_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        NodeConfig::parse(base).unwrap();
        let e = NodeConfig::parse(&format!("{base}typo = 1\n")).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e =
            NodeConfig::parse(&format!("{base}[limits]\nmax_chunk_size = 99999999\n")).unwrap_err();
        assert!(e.to_string().contains("max_chunk_size"), "{e}");
        assert!(NodeConfig::parse("listen = \"nope\"").is_err());
        let e = NodeConfig::parse(&format!("{base}[limits]\ningest_buffer_mib = 0\n")).unwrap_err();
        assert!(e.to_string().contains("ingest_buffer_mib"), "{e}");
        let e = NodeConfig::parse(&format!("{base}[limits]\nmax_connections_per_client = 0\n"))
            .unwrap_err();
        assert!(e.to_string().contains("max_connections_per_client"), "{e}");
        let e = NodeConfig::parse(&format!("{base}revoked_serials = [\"zz\"]\n")).unwrap_err();
        assert!(e.to_string().contains("revoked_serials"), "{e}");
        let e = NodeConfig::parse(&format!(
            "{base}[health]\nplaintext_listen = \"0.0.0.0:9000\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e =
            NodeConfig::parse(&format!("{base}[health]\ncheck_interval_secs = 0\n")).unwrap_err();
        assert!(e.to_string().contains("check_interval_secs"), "{e}");
        NodeConfig::parse(&format!(
            "{base}[health]\nplaintext_listen = \"127.0.0.1:9000\"\n"
        ))
        .unwrap();
        for bad in ["2-5", "02:00", "25:00-03:00", "02:00-02:00", "02:61-03:00"] {
            let e = NodeConfig::parse(&format!(
                "{base}[drill]\nclient_config = \"d.toml\"\nwindow = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("drill.window"), "{bad}: {e}");
        }
        let e =
            NodeConfig::parse(&format!("{base}[drill]\nwindow = \"02:00-05:00\"\n")).unwrap_err();
        assert!(e.to_string().contains("client_config"), "{e}");
        assert_eq!(parse_window("23:30-01:00").unwrap(), (84_600, 3600));
        assert_eq!(parse_window("02:00:05-02:00:09").unwrap(), (7205, 7209));
        let ok = NodeConfig::parse(&format!(
            "{base}revoked_serials = [\"0x0A:bc\", \"00ff\"]\n"
        ))
        .unwrap();
        let mut got: Vec<String> = ok.tls.revoked().into_iter().collect();
        got.sort();
        assert_eq!(got, ["0abc", "ff"]);
    }
}
