//! `agent.toml`: where the node is, which certificate to present, and what
//! to back up (template: `agent/agent.example.toml`). The operator CLI reads
//! the same file and ignores the sources.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use refuge_core::{ChunkerParams, SourceKind, SourceName};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// How to reach and authenticate to the node.
    pub node: ConnectionConfig,
    /// Chunking and compression.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// Directory for the agent's state (checkpoints of running backups).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Resource limits, so the agent never disturbs its host.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// What to back up.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Client-side encryption.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// `refuge-agent run`: change detection and metrics.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Recovery drills run with this configuration (`refuge drill`, and
    /// the node's own drills when this is its `[drill] client_config`).
    #[serde(default)]
    pub drill: DrillClientConfig,
}

/// `[drill]`: how drills check restored data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrillClientConfig {
    /// A check command per source name, run (`sh -c`) in the restored data
    /// of that source: for example start an application on the restored
    /// data and ask it something. Its exit code decides. `--check`
    /// applies to sources without one.
    pub checks: std::collections::BTreeMap<String, String>,
    /// Seconds a check may run before it is killed (and fails).
    pub check_timeout_secs: u64,
    /// What the drill of a `postgres` source checks once the restored
    /// cluster has started, per source name (`[drill.postgres.NAME]`); a
    /// source without a table here gets the defaults (`SELECT 1`).
    pub postgres: std::collections::BTreeMap<String, PostgresDrillConfig>,
    /// The same for `mariadb` sources (`[drill.mariadb.NAME]`).
    pub mariadb: std::collections::BTreeMap<String, MariadbDrillConfig>,
}

impl Default for DrillClientConfig {
    fn default() -> Self {
        DrillClientConfig {
            checks: Default::default(),
            check_timeout_secs: 600,
            postgres: Default::default(),
            mariadb: Default::default(),
        }
    }
}

/// `[drill.mariadb.NAME]`: the drill of a `mariadb` source starts the
/// restored data directory (`mariadbd --no-defaults`, as its owner, on a
/// Unix socket in the scratch space, no network, no grant tables), runs
/// these checks with the `mariadb` client, and stops it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MariadbDrillConfig {
    /// SQL statements that must succeed (the first value of each is
    /// reported); none given: `SELECT 1`.
    pub queries: Vec<String>,
    /// Tables (`db.table`) whose rows are counted and which must pass
    /// `CHECK TABLE`; one that is missing fails the drill.
    pub tables: Vec<String>,
    /// The server program.
    pub mariadbd: PathBuf,
    /// The client program.
    pub client: PathBuf,
    /// Further server options (`innodb_buffer_pool_size = "128M"`).
    pub settings: std::collections::BTreeMap<String, String>,
}

impl Default for MariadbDrillConfig {
    fn default() -> Self {
        MariadbDrillConfig {
            queries: Vec::new(),
            tables: Vec::new(),
            mariadbd: "/usr/sbin/mariadbd".into(),
            client: "mariadb".into(),
            settings: Default::default(),
        }
    }
}

/// `[drill.postgres.NAME]`: the drill of a `postgres` source starts the
/// restored cluster (the server of its `PG_VERSION`, as the data
/// directory's owner, on a Unix socket in the scratch space, archiving
/// off), then runs these checks, and stops it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresDrillConfig {
    /// Role the checks log in as (trust, on the drill's private socket).
    pub user: String,
    /// Database the checks run in.
    pub dbname: String,
    /// SQL statements that must succeed (the first value of each is
    /// reported); none given: `SELECT 1`.
    pub queries: Vec<String>,
    /// Tables (`schema.table`) whose rows are counted and reported; one
    /// that is missing fails the drill.
    pub tables: Vec<String>,
    /// Also run `pg_amcheck --all --heapallindexed` (installs amcheck in
    /// the restored cluster).
    pub amcheck: bool,
    /// The server's `bin` directory; default
    /// `/usr/lib/postgresql/MAJOR/bin` for the cluster's `PG_VERSION`.
    pub bin_dir: Option<PathBuf>,
    /// Further server settings for the drill (`shared_buffers = "128MB"`
    /// where the source's does not fit the drill host).
    pub settings: std::collections::BTreeMap<String, String>,
}

impl Default for PostgresDrillConfig {
    fn default() -> Self {
        PostgresDrillConfig {
            user: "postgres".into(),
            dbname: "postgres".into(),
            queries: Vec::new(),
            tables: Vec::new(),
            amcheck: false,
            bin_dir: None,
            settings: Default::default(),
        }
    }
}

/// The resident agent (`[service]`, used by `refuge-agent run`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// After a change in an `on_change` source, wait until it has been
    /// quiet this many seconds (at most 10 times as long under constant
    /// change) before backing it up.
    pub debounce_secs: u64,
    /// Serve Prometheus metrics on this address (`GET /metrics`, plain
    /// HTTP: use loopback); none: no endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            debounce_secs: 2,
            metrics_listen: None,
        }
    }
}

/// Client-side encryption (`[encryption]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// The tenant's key file (`refuge key create`). With it, chunks and
    /// manifest entries are sealed before they leave the host and chunk
    /// ids are keyed; restores need it. Without it, data is stored as
    /// compressed plaintext.
    pub key_file: Option<PathBuf>,
}

impl AgentConfig {
    /// Reads the tenant key named by `[encryption] key_file`, if any.
    pub fn tenant_key(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<refuge_core::crypto::TenantKey>>> {
        let Some(p) = &self.encryption.key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(p).with_context(|| {
            format!(
                "cannot read the tenant key [encryption] key_file = {}",
                p.display()
            )
        })?;
        let key = refuge_core::crypto::TenantKey::parse(&text)
            .with_context(|| format!("[encryption] key_file = {}", p.display()))?;
        Ok(Some(std::sync::Arc::new(key)))
    }
}

/// Connection settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `host:port` of the node.
    pub address: String,
    /// Further nodes (`host:port`), tried in this order when `address` is
    /// down or does not serve what the command needs (NOT_SERVING in
    /// grpc.health.v1): the other sites of a dual-active centre, which
    /// replicate to each other. They share `server_name`, `ca`, `cert` and
    /// `key`: the sites' node certificates come from one CA, which also
    /// issued this client's.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Name the node's certificate must carry (DNS name or IP).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA certificate that signed the node's certificate.
    pub ca: PathBuf,
    /// This client's certificate (names its tenant and host).
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
    /// Seconds to wait for a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds between HTTP/2 pings on an open connection.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Seconds a ping may go unanswered before the connection counts as
    /// dead (a stalled link, a node that froze): the call fails and the
    /// backup's retries take over. Noticed within `keepalive_secs +
    /// keepalive_timeout_secs`.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_secs: u64,
    /// Seconds the node has to answer one call of a backup (asking which
    /// chunks it lacks, uploading one batch, committing) or to send the
    /// next chunk of a restore: a node that keeps the connection alive but
    /// does not answer (stuck, or overloaded) fails the call, and the
    /// backup's retries take over. Admin commands are not limited by it.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/refuge-agent")
}

fn default_server_name() -> String {
    "localhost".into()
}
fn default_connect_timeout() -> u64 {
    10
}

fn default_keepalive() -> u64 {
    30
}

fn default_keepalive_timeout() -> u64 {
    20
}

fn default_call_timeout() -> u64 {
    300
}

/// FastCDC sizes and zstd level.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingConfig {
    /// Minimum chunk size, bytes.
    pub min_size: u32,
    /// Average chunk size, bytes.
    pub avg_size: u32,
    /// Maximum chunk size, bytes (at most 16 MiB).
    pub max_size: u32,
    /// zstd level, 1 (fast) to 19 (small).
    pub zstd_level: i32,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        let p = ChunkerParams::default();
        ChunkingConfig {
            min_size: p.min_size,
            avg_size: p.avg_size,
            max_size: p.max_size,
            zstd_level: 1,
        }
    }
}

impl ChunkingConfig {
    /// The chunker parameters.
    pub fn params(&self) -> ChunkerParams {
        ChunkerParams {
            min_size: self.min_size,
            avg_size: self.avg_size,
            max_size: self.max_size,
        }
    }
}

/// Resource limits of the agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Upload workers (compression and network); 0 means one per CPU.
    pub threads: usize,
    /// Upload limit in bytes per second (compressed bytes on the wire);
    /// 0 means unlimited.
    pub max_upload_rate: u64,
    /// Restore fetch workers; 0 means two per CPU, at least 4.
    pub restore_threads: usize,
    /// Memory budget of the agent in MiB (the upload pipeline is sized to
    /// fit; at least 32).
    pub memory_mib: u64,
    /// CPU niceness of the agent (0 = unchanged, up to 19).
    pub nice: i32,
    /// IO priority of the agent.
    pub io_priority: IoPriority,
    /// How often a backup of a source is tried again after the node was
    /// unreachable or the connection was cut (waiting 1, 2, 4, ... up to
    /// 60 seconds in between); 0 never retries. Each try resumes from the
    /// last one's checkpoint.
    pub retries: u32,
}

impl Default for LimitsConfig {
    /// Gentle by default: nice 10 and the lowest best-effort IO level.
    fn default() -> Self {
        LimitsConfig {
            threads: 0,
            max_upload_rate: 0,
            restore_threads: 0,
            memory_mib: 256,
            nice: 10,
            io_priority: IoPriority::Low,
            retries: 5,
        }
    }
}

/// IO scheduling priority.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoPriority {
    /// Unchanged.
    #[default]
    Normal,
    /// Best-effort class, lowest level.
    Low,
    /// Idle class: only when no one else uses the disk.
    Idle,
}

impl LimitsConfig {
    /// The restore worker count to use.
    pub fn restore_threads(&self) -> usize {
        if self.restore_threads > 0 {
            self.restore_threads
        } else {
            (2 * std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2))
            .max(4)
        }
    }

    /// The upload worker count to use.
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

/// One thing to back up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name, unique per host (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// A directory (kind `tree`), a file or block device (kind `image`),
    /// or a PostgreSQL cluster's data directory (kind `postgres`).
    pub path: PathBuf,
    /// `tree` (default), `image` or `postgres`.
    #[serde(default = "default_kind")]
    pub kind: SourceKind,
    /// How to reach the server of a `postgres` source.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// How to reach the server of a `mariadb` source.
    #[serde(default)]
    pub mariadb: Option<MariadbConfig>,
    /// Chunking for this source only, over `[chunking]` (for example
    /// smaller chunks for a database whose pages change in place).
    #[serde(default)]
    pub chunking: SourceChunking,
    /// When `refuge-agent run` backs it up: an interval ("15m", "1h",
    /// "1d") or a cron expression in local time ("0 2 * * *").
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// `refuge-agent run` also backs it up within seconds of a change
    /// (inotify; tree sources only).
    #[serde(default)]
    pub on_change: bool,
    /// Run before the backup (`sh -c`, in the source's directory); a
    /// non-zero exit or a timeout fails the backup before anything is
    /// read (for example: flush and freeze an application).
    #[serde(default)]
    pub pre: Option<String>,
    /// Run after the backup, also after a failed one or a failed `pre`
    /// (`REFUGE_BACKUP_RESULT` = `ok` or `failed`); its failure after a
    /// committed snapshot is a warning.
    #[serde(default)]
    pub post: Option<String>,
    /// Seconds each hook may run before it is killed.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
    /// Read the source from a snapshot made for the backup and removed
    /// after it: `btrfs` (a read-only snapshot of the subvolume at
    /// `path`) or `lvm` (a snapshot of the logical volume mounted at
    /// `path`, or whose device `path` is for an image).
    #[serde(default)]
    pub snapshot: Option<SnapshotMethod>,
    /// `lvm`: the snapshot's copy-on-write space (`lvcreate -L`, "2G").
    #[serde(default)]
    pub snapshot_size: Option<String>,
}

/// How a source's snapshot is made.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMethod {
    /// `btrfs subvolume snapshot -r`.
    Btrfs,
    /// `lvcreate --snapshot`.
    Lvm,
}

fn default_schedule() -> String {
    "1h".into()
}

fn default_hook_timeout() -> u64 {
    600
}

/// `[source.postgres]`: the server whose data directory a `postgres`
/// source copies. The role needs `LOGIN REPLICATION`, `pg_read_all_settings`
/// and EXECUTE on `pg_backup_start` and `pg_backup_stop`
/// (docs/databases.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name, address, or the directory of the server's Unix socket
    /// (a path starting with `/`).
    #[serde(default = "default_pg_host")]
    pub host: String,
    /// TCP port, or the number in the socket's name.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Role to log in as.
    #[serde(default = "default_pg_user")]
    pub user: String,
    /// File holding the role's password (its first line); none for
    /// `peer` or `trust` authentication.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Database to connect to (any; the backup covers the whole cluster).
    #[serde(default = "default_pg_dbname")]
    pub dbname: String,
    /// Seconds to wait for the connection.
    #[serde(default = "default_pg_timeout")]
    pub connect_timeout_secs: u64,
}

/// `[source.mariadb]`: the server whose data directory a `mariadb` source
/// copies with `mariadb-backup` (docs/databases.md: the user's grants).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MariadbConfig {
    /// The server's Unix socket.
    #[serde(default = "default_mariadb_socket")]
    pub socket: PathBuf,
    /// User to log in as.
    #[serde(default = "default_pg_user")]
    pub user: String,
    /// File holding the user's password (its first line); none for
    /// `unix_socket` authentication.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Where `mariadb-backup` copies and prepares the data before it is
    /// chunked (emptied before and removed after each backup; needs room
    /// for the whole data directory); default `STATE_DIR/mariadb-NAME`.
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
    /// The `mariadb-backup` program.
    #[serde(default = "default_mariadb_backup")]
    pub mariadb_backup: PathBuf,
}

fn default_mariadb_socket() -> PathBuf {
    "/run/mysqld/mysqld.sock".into()
}
fn default_mariadb_backup() -> PathBuf {
    "mariadb-backup".into()
}

fn default_pg_host() -> String {
    "/var/run/postgresql".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_pg_user() -> String {
    "refuge".into()
}
fn default_pg_dbname() -> String {
    "postgres".into()
}
fn default_pg_timeout() -> u64 {
    10
}

/// Per-source overrides of `[chunking]`. Giving only `avg_size` sets
/// `min_size` to a quarter and `max_size` to four times it (FastCDC's
/// usual spread); fields not given come from `[chunking]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceChunking {
    /// Minimum chunk size, bytes.
    pub min_size: Option<u32>,
    /// Average chunk size, bytes.
    pub avg_size: Option<u32>,
    /// Maximum chunk size, bytes.
    pub max_size: Option<u32>,
    /// zstd level.
    pub zstd_level: Option<i32>,
}

impl SourceConfig {
    /// The WAL source of a `postgres` source: `NAME.wal`, the files of its
    /// `pg_wal` directory pushed one at a time (`None` for other kinds).
    pub fn wal_source(&self) -> Option<SourceConfig> {
        (self.kind == SourceKind::Postgres).then(|| SourceConfig {
            name: refuge_core::wal_source_of(&self.name),
            path: self.path.join("pg_wal"),
            kind: SourceKind::PostgresWal,
            postgres: None,
            mariadb: None,
            on_change: false,
            pre: None,
            post: None,
            snapshot: None,
            ..self.clone()
        })
    }

    /// This source's chunking: its own settings over `global`. An image
    /// or postgres source whose sizes neither `[chunking]` nor its own
    /// table change gets [`ChunkerParams::image`] (smaller chunks: their
    /// blocks and pages change in place).
    pub fn chunking(&self, global: &ChunkingConfig) -> ChunkingConfig {
        let o = &self.chunking;
        let image = ChunkerParams::image();
        let sizes_untouched = global.params() == ChunkerParams::default()
            && o.min_size.is_none()
            && o.avg_size.is_none()
            && o.max_size.is_none();
        if matches!(
            self.kind,
            SourceKind::Image | SourceKind::Postgres | SourceKind::Mariadb
        ) && sizes_untouched
        {
            return ChunkingConfig {
                min_size: image.min_size,
                avg_size: image.avg_size,
                max_size: image.max_size,
                zstd_level: o.zstd_level.unwrap_or(global.zstd_level),
            };
        }
        let (min, max) = match o.avg_size {
            Some(avg) => (avg / 4, avg.saturating_mul(4)),
            None => (global.min_size, global.max_size),
        };
        ChunkingConfig {
            min_size: o.min_size.unwrap_or(min),
            avg_size: o.avg_size.unwrap_or(global.avg_size),
            max_size: o.max_size.unwrap_or(max),
            zstd_level: o.zstd_level.unwrap_or(global.zstd_level),
        }
    }
}

impl ChunkingConfig {
    fn check(&self, section: &str) -> anyhow::Result<()> {
        self.params()
            .validate()
            .map_err(|e| anyhow::anyhow!("{section}: {e}"))?;
        if !(1..=19).contains(&self.zstd_level) {
            bail!(
                "{section} zstd_level must be 1 to 19, got {}",
                self.zstd_level
            );
        }
        Ok(())
    }
}

fn default_kind() -> SourceKind {
    SourceKind::Tree
}

/// Reads and checks a config file; relative paths are resolved against the
/// file's directory.
pub fn load_config(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut cfg = AgentConfig::parse(&text)
        .with_context(|| format!("invalid config file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    fix(&mut cfg.node.ca);
    fix(&mut cfg.node.cert);
    fix(&mut cfg.node.key);
    fix(&mut cfg.state_dir);
    if let Some(k) = &mut cfg.encryption.key_file {
        fix(k);
    }
    for s in &mut cfg.sources {
        fix(&mut s.path);
        if let Some(f) = s.postgres.as_mut().and_then(|p| p.password_file.as_mut()) {
            fix(f);
        }
    }
    Ok(cfg)
}

impl AgentConfig {
    /// Parses and checks config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: AgentConfig = toml::from_str(text)?;
        cfg.chunking.check("[chunking]")?;
        if cfg.limits.memory_mib < 32 {
            bail!(
                "[limits] memory_mib must be at least 32, got {}",
                cfg.limits.memory_mib
            );
        }
        if !(0..=19).contains(&cfg.limits.nice) {
            bail!("[limits] nice must be 0 to 19, got {}", cfg.limits.nice);
        }
        if cfg.limits.threads > 256 || cfg.limits.restore_threads > 256 {
            bail!("[limits] threads and restore_threads must be 0 (automatic) to 256");
        }
        if cfg.drill.check_timeout_secs == 0 {
            bail!("[drill] check_timeout_secs must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        for s in &cfg.sources {
            SourceName::new(s.name.clone()).map_err(|e| anyhow::anyhow!("[[source]]: {e}"))?;
            if !seen.insert(&s.name) {
                bail!("[[source]] name {:?} is used twice", s.name);
            }
            s.chunking(&cfg.chunking)
                .check(&format!("[[source]] {:?} chunking", s.name))?;
            crate::Schedule::parse(&s.schedule)
                .map_err(|e| anyhow::anyhow!("[[source]] {:?} schedule: {e}", s.name))?;
            match (s.kind, &s.postgres) {
                (SourceKind::Postgres, None) => bail!(
                    "[[source]] {:?}: kind = \"postgres\" needs a [source.postgres] table (host, port, user, password_file)",
                    s.name
                ),
                (SourceKind::Postgres, Some(pg)) if pg.connect_timeout_secs == 0 => bail!(
                    "[[source]] {:?}: [source.postgres] connect_timeout_secs must be at least 1",
                    s.name
                ),
                (SourceKind::PostgresWal, _) => bail!(
                    "[[source]] {:?}: kind = \"postgres-wal\" is not configured: `refuge-agent wal-push` makes it for a kind = \"postgres\" source (docs/databases.md)",
                    s.name
                ),
                (SourceKind::Tree | SourceKind::Image | SourceKind::Mariadb, Some(_)) => bail!(
                    "[[source]] {:?}: [source.postgres] applies to kind = \"postgres\" only",
                    s.name
                ),
                _ => {}
            }
            match (s.kind, &s.mariadb) {
                (SourceKind::Mariadb, None) => bail!(
                    "[[source]] {:?}: kind = \"mariadb\" needs a [source.mariadb] table (socket, user, password_file)",
                    s.name
                ),
                (k, Some(_)) if k != SourceKind::Mariadb => bail!(
                    "[[source]] {:?}: [source.mariadb] applies to kind = \"mariadb\" only",
                    s.name
                ),
                _ => {}
            }
            if s.kind == SourceKind::Postgres {
                let wal = refuge_core::wal_source_of(&s.name);
                SourceName::new(wal.clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "[[source]] {:?}: its WAL source: {e} (use a shorter name)",
                        s.name
                    )
                })?;
                if cfg.sources.iter().any(|o| o.name == wal) {
                    bail!(
                        "[[source]] {:?}: the name {wal:?} is its WAL source's; name the other source differently",
                        s.name
                    );
                }
            }
            if s.hook_timeout_secs == 0 {
                bail!(
                    "[[source]] {:?}: hook_timeout_secs must be at least 1",
                    s.name
                );
            }
            match (s.snapshot, s.kind, &s.snapshot_size) {
                (Some(_), SourceKind::Postgres | SourceKind::Mariadb, _) => bail!(
                    "[[source]] {:?}: a database source is consistent through the server's own backup; snapshot does not apply",
                    s.name
                ),
                (Some(SnapshotMethod::Btrfs), SourceKind::Image, _) => bail!(
                    "[[source]] {:?}: snapshot = \"btrfs\" snapshots a subvolume: it applies to kind = \"tree\"",
                    s.name
                ),
                (Some(SnapshotMethod::Lvm), _, None) => bail!(
                    "[[source]] {:?}: snapshot = \"lvm\" needs snapshot_size (its copy-on-write space, for example \"2G\")",
                    s.name
                ),
                (None, _, Some(_)) => bail!(
                    "[[source]] {:?}: snapshot_size applies to snapshot = \"lvm\" only",
                    s.name
                ),
                _ => {}
            }
            if s.on_change && s.kind != SourceKind::Tree {
                bail!(
                    "[[source]] {:?}: on_change watches directories; it applies to kind = \"tree\" only",
                    s.name
                );
            }
        }
        Ok(cfg)
    }

    /// The source called `name`.
    pub fn source(&self, name: &str) -> anyhow::Result<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<_> = self.sources.iter().map(|s| s.name.as_str()).collect();
            anyhow::anyhow!(
                "no source named {name:?} in the config (configured: {})",
                names.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_matches_the_defaults() {
        let cfg = AgentConfig::parse(include_str!("../../../agent/agent.example.toml"))
            .expect("template");
        assert_eq!(cfg.chunking, ChunkingConfig::default());
        assert_eq!(cfg.limits, LimitsConfig::default());
        assert_eq!(cfg.state_dir, default_state_dir());
        assert_eq!(cfg.node.server_name, default_server_name());
        assert_eq!(cfg.node.connect_timeout_secs, default_connect_timeout());
        assert!(!cfg.sources.is_empty());
        assert_eq!(cfg.service, ServiceConfig::default());
        assert_eq!(
            cfg.drill.check_timeout_secs,
            DrillClientConfig::default().check_timeout_secs
        );
        let pg = &cfg.drill.postgres["pg"];
        assert_eq!(
            (pg.user.as_str(), pg.dbname.as_str()),
            ("postgres", "postgres")
        );
        assert_eq!(pg.queries.len(), 1);
        // Sources without their own say follow the default schedule.
        assert!(
            cfg.sources
                .iter()
                .any(|s| s.schedule == default_schedule() && !s.on_change)
        );
        // New deployments copied from the template are encrypted.
        assert!(cfg.encryption.key_file.is_some());
    }

    #[test]
    fn snapshots_and_hooks_are_checked() {
        let base = "[node]\naddress = \"x:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let parse =
            |src: &str| AgentConfig::parse(&format!("{base}[[source]]\nname = \"s\"\n{src}"));
        let err = |src: &str| format!("{:#}", parse(src).unwrap_err());
        let ok = parse("path = \"/srv\"\nsnapshot = \"btrfs\"\npre = \"true\"\npost = \"true\"\n")
            .unwrap();
        let s = &ok.sources[0];
        assert_eq!(s.snapshot, Some(SnapshotMethod::Btrfs));
        assert_eq!((s.pre.as_deref(), s.hook_timeout_secs), (Some("true"), 600));
        assert!(err("path = \"/srv\"\nsnapshot = \"lvm\"\n").contains("needs snapshot_size"));
        assert!(
            err("path = \"/x\"\nkind = \"image\"\nsnapshot = \"btrfs\"\n")
                .contains("applies to kind = \"tree\"")
        );
        assert!(err("path = \"/x\"\nsnapshot_size = \"1G\"\n").contains("snapshot = \"lvm\" only"));
        assert!(err("path = \"/x\"\nsnapshot = \"zfs\"\n").contains("unknown variant"));
        assert!(err("path = \"/x\"\nhook_timeout_secs = 0\n").contains("at least 1"));
        assert!(
            err("path = \"/x\"\nkind = \"postgres\"\nsnapshot = \"lvm\"\nsnapshot_size = \"1G\"\n[source.postgres]\nuser = \"u\"\n")
                .contains("snapshot does not apply")
        );
        parse(
            "path = \"/dev/vg/lv\"\nkind = \"image\"\nsnapshot = \"lvm\"\nsnapshot_size = \"1G\"\n",
        )
        .unwrap();
        assert!(err("path = \"/x\"\nkind = \"postgres-wal\"\n").contains("wal-push"));
        assert!(
            err("path = \"/x\"\nkind = \"postgres\"\n[source.postgres]\nuser = \"u\"\n[[source]]\nname = \"s.wal\"\npath = \"/y\"\n")
                .contains("its WAL source's")
        );
    }

    #[test]
    fn drill_postgres_tables_have_defaults_and_refuse_unknown_keys() {
        let base = "[node]\naddress = \"x:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let cfg = AgentConfig::parse(&format!(
            "{base}[drill.postgres.pg]\ntables = [\"public.t\"]\nsettings = {{ shared_buffers = \"64MB\" }}\n"
        ))
        .unwrap();
        let pg = &cfg.drill.postgres["pg"];
        assert_eq!(pg.user, "postgres");
        assert_eq!(pg.tables, ["public.t"]);
        assert!(pg.queries.is_empty() && !pg.amcheck && pg.bin_dir.is_none());
        assert_eq!(pg.settings["shared_buffers"], "64MB");
        let e = AgentConfig::parse(&format!(
            "{base}[drill.postgres.pg]\nquery = \"SELECT 1\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }

    #[test]
    fn images_get_smaller_chunks_unless_sizes_are_configured() {
        let base = "[node]\naddress = \"x:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let sources = "[[source]]\nname = \"vm\"\npath = \"/dev/vg/vm\"\nkind = \"image\"\n\
                       [[source]]\nname = \"home\"\npath = \"/home\"\n";
        let sizes = |cfg: &AgentConfig, name: &str| {
            let c = cfg.source(name).unwrap().chunking(&cfg.chunking);
            (c.min_size, c.avg_size, c.max_size, c.zstd_level)
        };
        let cfg =
            AgentConfig::parse(&format!("{base}[chunking]\nzstd_level = 3\n{sources}")).unwrap();
        let image = ChunkerParams::image();
        assert_eq!(
            sizes(&cfg, "vm"),
            (image.min_size, image.avg_size, image.max_size, 3)
        );
        let d = ChunkerParams::default();
        assert_eq!(sizes(&cfg, "home"), (d.min_size, d.avg_size, d.max_size, 3));
        // Sizes set in [chunking] apply to images too.
        let cfg = AgentConfig::parse(&format!("{base}[chunking]\navg_size = 2097152\n{sources}"))
            .unwrap();
        assert_eq!(sizes(&cfg, "vm").1, 2097152);
    }

    #[test]
    fn a_source_may_override_chunking() {
        let cfg = AgentConfig::parse(
            "[node]\naddress = \"x:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n\
             [chunking]\nzstd_level = 5\n\
             [[source]]\nname = \"db\"\npath = \"/db\"\n\
             [source.chunking]\navg_size = 65536\n\
             [[source]]\nname = \"home\"\npath = \"/home\"\n\
             chunking = { max_size = 8388608, zstd_level = 1 }\n",
        )
        .unwrap();
        let db = cfg.source("db").unwrap().chunking(&cfg.chunking);
        assert_eq!(
            (db.min_size, db.avg_size, db.max_size, db.zstd_level),
            (16384, 65536, 262144, 5)
        );
        let home = cfg.source("home").unwrap().chunking(&cfg.chunking);
        let d = ChunkingConfig::default();
        assert_eq!(
            (home.min_size, home.avg_size, home.max_size, home.zstd_level),
            (d.min_size, d.avg_size, 8 << 20, 1)
        );
    }

    #[test]
    fn mistakes_are_named() {
        let base = "[node]\naddress = \"127.0.0.1:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        AgentConfig::parse(base).unwrap();
        let e = AgentConfig::parse(&format!("{base}[chunking]\nmin_size = 10\n")).unwrap_err();
        assert!(e.to_string().contains("min_size"), "{e}");
        let e = AgentConfig::parse(&format!("{base}[[source]]\nname = \"a b\"\npath = \"/\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("invalid source name"), "{e}");
        for (limits, word) in [
            ("nice = 40", "nice"),
            ("memory_mib = 8", "memory_mib"),
            ("threads = 1000", "threads"),
            ("io_priority = \"realtime\"", "unknown variant"),
        ] {
            let e = AgentConfig::parse(&format!("{base}[limits]\n{limits}\n")).unwrap_err();
            assert!(format!("{e:#}").contains(word), "{limits}: {e:#}");
        }
        let dup = format!(
            "{base}[[source]]\nname = \"a\"\npath = \"/\"\n[[source]]\nname = \"a\"\npath = \"/x\"\n"
        );
        assert!(
            AgentConfig::parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let e = AgentConfig::parse(&format!(
            "{base}[[source]]\nname = \"a\"\npath = \"/\"\nkind = \"disk\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown variant"), "{e:#}");
        // A postgres source needs its server, and only it has one.
        for (src, word) in [
            ("kind = \"postgres\"\n", "needs a [source.postgres]"),
            (
                "kind = \"tree\"\npostgres = { port = 5432 }\n",
                "applies to kind = \"postgres\" only",
            ),
            (
                "kind = \"postgres\"\npostgres = { connect_timeout_secs = 0 }\n",
                "connect_timeout_secs must be at least 1",
            ),
            (
                "kind = \"postgres\"\npostgres = { prot = 1 }\n",
                "unknown field",
            ),
        ] {
            let e = AgentConfig::parse(&format!(
                "{base}[[source]]\nname = \"pg\"\npath = \"/var/lib/pg\"\n{src}"
            ))
            .unwrap_err();
            assert!(format!("{e:#}").contains(word), "{src}: {e:#}");
        }
        let ok = AgentConfig::parse(&format!(
            "{base}[[source]]\nname = \"pg\"\npath = \"/var/lib/pg\"\nkind = \"postgres\"\npostgres = {{ user = \"bk\" }}\n"
        ))
        .unwrap();
        let pg = ok.sources[0].postgres.as_ref().unwrap();
        assert_eq!(
            (pg.user.as_str(), pg.port, pg.host.as_str()),
            ("bk", 5432, "/var/run/postgresql")
        );
        // Its pages change in place: the image's smaller chunks.
        assert_eq!(
            ok.sources[0].chunking(&ok.chunking).params(),
            ChunkerParams::image()
        );
        let e = AgentConfig::parse(&format!(
            "{base}[[source]]\nname = \"db\"\npath = \"/\"\nchunking = {{ avg_size = 100 }}\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("\"db\" chunking"), "{e:#}");
        let e = AgentConfig::parse(&format!(
            "{base}[[source]]\nname = \"db\"\npath = \"/\"\nchunking = {{ zstd_level = 30 }}\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("zstd_level"), "{e:#}");
        let cfg =
            AgentConfig::parse(&format!("{base}[[source]]\nname = \"a\"\npath = \"/\"\n")).unwrap();
        assert!(
            cfg.source("b")
                .unwrap_err()
                .to_string()
                .contains("configured: a")
        );
    }
}
