//! `refuge`: the operator CLI — certificates, snapshots, restores, audit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use refuge_cli::commands::RestoreArgs;
use refuge_client::Selection;

/// refuge operator CLI: make certificates, list restore points and restore
/// any point in time from a refuge node.
///
/// Exit codes: 0 success, 1 failure, 2 bad arguments or configuration.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Client configuration file; only its [node] section is used.
    #[arg(
        short,
        long,
        global = true,
        env = "REFUGE_CONFIG",
        default_value = "/etc/refuge/agent.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and issue certificates.
    #[command(subcommand)]
    Certs(Certs),
    /// Tenant encryption keys: create, show, rotate (docs/security.md).
    #[command(subcommand)]
    Key(KeyCmd),
    /// List restore points (snapshots) of the tenants you act for.
    Snapshots {
        /// Only this tenant (one you act for; any other matches nothing).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot: by id, unique id prefix, `latest`, or `--at TIME`.
    Restore {
        /// Snapshot id, unique id prefix, or `latest`.
        snapshot: Option<String>,
        /// Restore the newest snapshot at or before this RFC 3339 time
        /// (for example 2026-11-22T10:00:00Z). A postgres source with
        /// archived WAL (wal-push) is set up to replay it up to this time
        /// when the cluster starts.
        #[arg(long)]
        at: Option<String>,
        /// Host of the snapshot (needed when several hosts match).
        #[arg(long)]
        host: Option<String>,
        /// Source of the snapshot (needed when several sources match).
        #[arg(long)]
        source: Option<String>,
        /// Tenant of the snapshot (needed when your certificate acts for
        /// several).
        #[arg(long)]
        tenant: Option<String>,
        /// Directory to restore a tree into, or file/device path for an image.
        #[arg(long)]
        target: PathBuf,
        /// Restore only this path of the snapshot (a file or a subtree).
        #[arg(long)]
        include: Option<String>,
        /// Continue an interrupted restore: keep what is already written
        /// (each chunk re-hashed locally) and fetch only the rest.
        #[arg(long)]
        resume: bool,
        /// A postgres source: restore the base only, without its archived
        /// WAL (`latest` otherwise replays everything archived since it).
        #[arg(long)]
        no_wal: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Show the role, name, tenants and serial the node reads from your
    /// certificate.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read the node's audit log (auditor certificates only); `audit
    /// verify` checks its hash chain.
    Audit {
        #[command(subcommand)]
        verify: Option<AuditCmd>,
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Write the whole log to this file for assessors (JSON Lines with
        /// each record's bytes; mode 0600, never overwrites), its chain
        /// verified on export; check it later with `audit verify --file`.
        #[arg(long, conflicts_with_all = ["since", "json"])]
        export: Option<PathBuf>,
        /// Read the copy this node keeps of a peer node's log (the peer's
        /// name in its replica certificate) instead of its own.
        #[arg(long, global = true)]
        site: Option<String>,
    },
    /// Retention, pruning, pins and garbage collection (admin
    /// certificates only).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Run a recovery drill: restore the chosen snapshot of each matching
    /// source into scratch space, re-read every file against the
    /// manifest, run --check on the restored data, measure RTO and RPO,
    /// record the result on the node, write a JSON and a Markdown report,
    /// and clean up. Exit 0 when every source passed, 1 otherwise.
    Drill {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Drill the newest snapshot at or before this RFC 3339 time
        /// (default: the newest snapshot).
        #[arg(long, conflicts_with = "random_point")]
        at: Option<String>,
        /// Drill a snapshot chosen at random from each source's history.
        #[arg(long)]
        random_point: bool,
        /// Seed for --random-point (repeats the same choice).
        #[arg(long, requires = "random_point")]
        seed: Option<u64>,
        /// Shell command run in the restored data (sh -c, working directory
        /// the restored tree; REFUGE_DRILL_DIR, REFUGE_DRILL_IMAGE,
        /// REFUGE_DRILL_SOURCE ... in its environment); a non-zero exit
        /// fails the drill. Sources with a command in [drill.checks] of the
        /// config run that one instead.
        #[arg(long)]
        check: Option<String>,
        /// Kill the check command after this many seconds (default:
        /// [drill] check_timeout_secs, 600).
        #[arg(long)]
        check_timeout: Option<u64>,
        /// Where to make scratch space (default: the system's temporary
        /// directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Keep the restored data instead of removing it.
        #[arg(long)]
        keep: bool,
        /// Where to write the report (refuge-drill-TIME-ID.json and .md).
        #[arg(long, default_value = ".")]
        report_dir: PathBuf,
        /// Do not record the result on the node.
        #[arg(long)]
        no_record: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the node's grpc.health.v1 service about the node ("") and each
    /// refuge service: exit 0 when all are SERVING, 1 otherwise.
    Health {
        /// Only this service (repeatable; "" is the whole node), for
        /// example refuge.v1.Ingest.
        #[arg(long)]
        service: Vec<String>,
        /// Ask the node's loopback plaintext health port (ADDRESS:PORT,
        /// [health] plaintext_listen) instead of the TLS port.
        #[arg(long)]
        plaintext: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the supervision platform sees: per tenant and source the
    /// newest snapshot, recovery point now, last backup and last drill;
    /// stored bytes and dedup; the node's disk, store, certificate expiry
    /// and failed authentications. Exit 1 when a last backup or drill
    /// failed or ingest is refusing.
    Status {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drills run by the node itself, with its [drill] client_config
    /// (admin or auditor certificates): start one, read its report.
    #[command(subcommand)]
    NodeDrill(NodeDrillCmd),
    /// List the drills recorded on the node, newest first.
    Drills {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Show or set a tenant's retention policy.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Remove the snapshots that retention policies no longer keep (the
    /// node also does this on its schedule).
    Prune {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pin a snapshot so that retention never removes it (or unpin it).
    Pin {
        /// Snapshot id or unique id prefix.
        snapshot: String,
        /// Its tenant.
        #[arg(long)]
        tenant: String,
        /// Remove the pin instead.
        #[arg(long)]
        unpin: bool,
    },
    /// Re-read stored chunks and check them against their ids; corrupt
    /// ones are quarantined and named with the snapshots that use them
    /// (exit 1), and healed by the next backup that contains them.
    Verify {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Check a random share of the chunks, in percent.
        #[arg(long, default_value_t = 100)]
        sample: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete chunks that no snapshot references any more (after the
    /// node's grace period, gc.grace_secs).
    Gc {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Second factors (TOTP) of admins and operators, when the node
    /// requires them ([second_factor] in node.toml). Commands of an
    /// enrolled identity sign in with the code in REFUGE_TOTP or one typed
    /// at the prompt; the session is kept for the next command.
    #[command(subcommand, name = "second-factor")]
    SecondFactor(SecondFactorCmd),
    /// Purge a tenant or one source: every snapshot and chunk, and the
    /// space they took. A request, then a confirmation by another admin
    /// after the node's [purge] delay_secs.
    #[command(subcommand)]
    Purge(PurgeCmd),
}

/// The identity a second-factor command is about.
#[derive(clap::Args)]
struct FactorOf {
    /// admin or operator.
    #[arg(long)]
    role: String,
    /// The certificate's CN.
    #[arg(long)]
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SecondFactorCmd {
    /// Enrol an identity (or enrol it again with a new secret) and print
    /// its secret, once. The node's first enrolment must be an admin's.
    Enroll(FactorOf),
    /// Remove an identity's enrolment (and end its sessions).
    Remove(FactorOf),
    /// Clear a locked identity's failed codes.
    Unlock(FactorOf),
    /// List the enrolments, failures and locks.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PurgeCmd {
    /// Ask for a purge; prints its id and when it may be confirmed.
    Request {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// With --source: purge one source of this host only.
        #[arg(long, requires = "source")]
        host: Option<String>,
        /// With --host: the source.
        #[arg(long, requires = "host")]
        source: Option<String>,
        /// Why (kept with the purge and in the audit log).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Confirm a purge (another admin than the requester, after the
    /// delay): it runs now and reports what it removed and what is left
    /// (exit 1 if anything is).
    Confirm {
        /// The purge's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending purge.
    Cancel {
        /// The purge's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List purges, pending and done.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// The policy in effect for a tenant.
    Show {
        #[arg(long)]
        tenant: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a tenant's policy (rules not given are 0, off). Bucket rules
    /// keep the newest snapshot of each of the newest N hours, days, ISO
    /// weeks, months or years, per host and source; the newest snapshot
    /// and pinned ones are always kept.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        #[arg(long, default_value_t = 0)]
        keep_hourly: u32,
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
        /// Keep everything younger than this many seconds.
        #[arg(long, default_value_t = 0)]
        keep_within_secs: u64,
        /// Remove the tenant's policy: the node's default applies.
        #[arg(long, conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within_secs"])]
        reset: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeDrillCmd {
    /// Ask the node to run a drill now (in the background).
    Start {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// A random snapshot of each source instead of the newest.
        #[arg(long)]
        random_point: bool,
        /// Wait for it and print its outcome (exit 1 unless it passed).
        #[arg(long)]
        wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The state and report of a node drill.
    Report {
        /// The drill id `start` printed.
        id: String,
        /// Print the Markdown report.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a new random key for a tenant (never overwrites a file).
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Where to write it (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// The algorithms: `standard` (BLAKE3 keyed ids, XChaCha20-Poly1305)
        /// or `sm` (HMAC-SM3 keyed ids, SM4-GCM: GB/T 32905, GB/T 32907).
        #[arg(long, default_value = "standard", value_parser = ["standard", "sm"])]
        suite: String,
    },
    /// Make a new key file that replaces a tenant's key: new data is
    /// encrypted with the new key, and the file still reads everything
    /// the old one encrypted.
    Rotate {
        /// The current key file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the new one (mode 0600, never overwrites).
        #[arg(long)]
        out: PathBuf,
        /// The new key's suite (`standard` or `sm`); default: the current
        /// key's. The old keys keep reading what they sealed.
        #[arg(long, value_parser = ["standard", "sm"])]
        suite: Option<String>,
    },
    /// Show a key file's tenant, suite, creation time and fingerprint.
    Show {
        /// The key file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the audit log's hash chain: exit 0 if intact, 1 if a record
    /// was edited, inserted, removed or reordered.
    Verify {
        /// SEQ:HASH printed by an earlier verify: also fail if that record
        /// is gone or changed (detects removal of the newest records).
        #[arg(long)]
        expect_head: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Check an export (`refuge audit --export`) instead of the node's
        /// log: needs no node and no certificate.
        #[arg(long, conflicts_with = "expect_head")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Certs {
    /// Create a CA and a node certificate in DIR.
    Init {
        /// Directory for ca.pem, ca.key, node.pem, node.key.
        dir: PathBuf,
        /// DNS names or IP addresses of the node (repeatable; default
        /// localhost and 127.0.0.1).
        #[arg(long = "node-name")]
        node_names: Vec<String>,
        /// Validity of the node certificate in days (the CA gets 3x).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a client certificate: an agent for a tenant's host, an
    /// operator for some tenants, an admin, an auditor, or a replica (a
    /// peer node that copies some tenants' snapshots here).
    ///
    /// Agents get TENANT-HOST.pem and .key; other roles ROLE-NAME.pem and
    /// .key. The serial number printed is what node.toml's
    /// revoked_serials names to revoke the certificate.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// agent (adds and commits backups of its own host), operator
        /// (lists and restores its tenants), admin (retention, garbage
        /// collection, verification; never reads data), auditor (reads
        /// the audit log) or replica (a peer node: the replication RPCs
        /// only, for its tenants; see docs/replication.md).
        #[arg(long, default_value = "agent")]
        role: refuge_tls::Role,
        /// Tenant (department): exactly one for an agent, one or more
        /// (repeat the flag) for an operator or replica, none for admin
        /// and auditor.
        #[arg(long)]
        tenant: Vec<String>,
        /// An operator or replica for every tenant, present and future.
        #[arg(long)]
        all_tenants: bool,
        /// The agent's host name, or the name of an operator, admin,
        /// auditor or replica site (the certificate's CN).
        #[arg(long, visible_alias = "name")]
        host: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write the certificate and key (default: --dir).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Show the role, name, tenants, serial and expiry of a certificate.
    Show {
        /// The certificate (PEM).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--tenant`, `--host` and `--source` as the node takes them (absent:
/// any).
fn selection(tenant: Option<String>, host: Option<String>, source: Option<String>) -> Selection {
    Selection {
        tenant: tenant.unwrap_or_default(),
        host: host.unwrap_or_default(),
        source: source.unwrap_or_default(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    refuge_cli::init_logging("warn,refuge_client::progress=info");
    let cfg = args.config;
    let r = match args.command {
        Command::Certs(Certs::Init {
            dir,
            node_names,
            days,
        }) => refuge_cli::certs::init(&dir, &node_names, days),
        Command::Certs(Certs::Issue {
            dir,
            role,
            tenant,
            all_tenants,
            host,
            days,
            out_dir,
        }) => refuge_cli::certs::issue(&refuge_cli::certs::IssueArgs {
            dir,
            role,
            tenants: tenant,
            all_tenants,
            name: host,
            days,
            out: out_dir,
        }),
        Command::Certs(Certs::Show { file, json }) => refuge_cli::certs::show(&file, json),
        Command::Key(KeyCmd::Create { tenant, out, suite }) => {
            refuge_cli::keys::create(&tenant, &out, &suite)
        }
        Command::Key(KeyCmd::Show { file, json }) => refuge_cli::keys::show(&file, json),
        Command::Key(KeyCmd::Rotate { input, out, suite }) => {
            refuge_cli::keys::rotate(&input, &out, suite.as_deref())
        }
        Command::Audit {
            verify:
                Some(AuditCmd::Verify {
                    file: Some(file),
                    json,
                    ..
                }),
            ..
        } => refuge_cli::audit::verify_file(&file, json),
        cmd => match tokio::runtime::Runtime::new() {
            Err(e) => Err(refuge_cli::Failure::Failed(e.into())),
            Ok(rt) => rt.block_on(async {
                match cmd {
                    Command::Snapshots {
                        tenant,
                        host,
                        source,
                        json,
                    } => {
                        refuge_cli::commands::snapshots(&cfg, selection(tenant, host, source), json)
                            .await
                    }
                    Command::Restore {
                        snapshot,
                        at,
                        host,
                        source,
                        tenant,
                        target,
                        include,
                        json,
                        resume,
                        no_wal,
                    } => {
                        refuge_cli::commands::restore(
                            &cfg,
                            RestoreArgs {
                                snapshot,
                                at,
                                selection: selection(tenant, host, source),
                                target,
                                include,
                                json,
                                resume,
                                no_wal,
                            },
                        )
                        .await
                    }
                    Command::Whoami { json } => refuge_cli::commands::whoami(&cfg, json).await,
                    Command::Audit {
                        verify:
                            Some(AuditCmd::Verify {
                                expect_head, json, ..
                            }),
                        site,
                        ..
                    } => {
                        refuge_cli::audit::verify(
                            &cfg,
                            site.as_deref(),
                            expect_head.as_deref(),
                            json,
                        )
                        .await
                    }
                    Command::Audit {
                        verify: None,
                        export: Some(file),
                        site,
                        ..
                    } => refuge_cli::audit::export(&cfg, site.as_deref(), &file).await,
                    Command::Audit {
                        verify: None,
                        since,
                        json,
                        export: None,
                        site,
                    } => {
                        refuge_cli::audit::list(&cfg, site.as_deref(), since.as_deref(), json).await
                    }
                    Command::Admin(cmd) => admin(&cfg, cmd).await,
                    Command::Drill {
                        tenant,
                        host,
                        source,
                        at,
                        random_point,
                        seed,
                        check,
                        check_timeout,
                        scratch,
                        keep,
                        report_dir,
                        no_record,
                        json,
                    } => {
                        refuge_cli::drill::drill(
                            &cfg,
                            refuge_cli::drill::DrillArgs {
                                selection: selection(tenant, host, source),
                                at,
                                random_point,
                                seed,
                                check,
                                check_timeout_secs: check_timeout,
                                scratch,
                                keep,
                                report_dir,
                                no_record,
                                json,
                            },
                        )
                        .await
                    }
                    Command::NodeDrill(NodeDrillCmd::Start {
                        tenant,
                        host,
                        source,
                        random_point,
                        wait,
                        json,
                    }) => {
                        refuge_cli::drill::node_drill_start(
                            &cfg,
                            selection(tenant, host, source),
                            random_point,
                            wait,
                            json,
                        )
                        .await
                    }
                    Command::NodeDrill(NodeDrillCmd::Report { id, markdown, json }) => {
                        refuge_cli::drill::node_drill_report(&cfg, &id, json, markdown).await
                    }
                    Command::Status { tenant, json } => {
                        refuge_cli::status::status(&cfg, tenant, json).await
                    }
                    Command::Health {
                        service,
                        plaintext,
                        json,
                    } => {
                        refuge_cli::health::health(&cfg, &service, plaintext.as_deref(), json).await
                    }
                    Command::Drills {
                        tenant,
                        host,
                        source,
                        limit,
                        json,
                    } => {
                        refuge_cli::drill::drills(
                            &cfg,
                            selection(tenant, host, source),
                            limit,
                            json,
                        )
                        .await
                    }
                    Command::Certs(_) | Command::Key(_) => unreachable!("handled above"),
                }
            }),
        },
    };
    refuge_cli::finish("refuge", r)
}

async fn admin(cfg: &std::path::Path, cmd: AdminCmd) -> refuge_cli::Outcome {
    use refuge_cli::admin;
    match cmd {
        AdminCmd::Retention(RetentionCmd::Show { tenant, json }) => {
            admin::retention_show(cfg, &tenant, json).await
        }
        AdminCmd::Retention(RetentionCmd::Set {
            tenant,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within_secs,
            reset,
            json,
        }) => {
            let p = (!reset).then_some(refuge_core::retention::Policy {
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
                keep_within_secs,
            });
            admin::retention_set(cfg, &tenant, p, json).await
        }
        AdminCmd::Prune {
            tenant,
            dry_run,
            json,
        } => admin::prune(cfg, tenant.as_deref(), dry_run, json).await,
        AdminCmd::Pin {
            snapshot,
            tenant,
            unpin,
        } => admin::pin(cfg, &tenant, &snapshot, !unpin).await,
        AdminCmd::Gc { json } => admin::gc(cfg, json).await,
        AdminCmd::Verify {
            tenant,
            sample,
            json,
        } => admin::verify(cfg, tenant.as_deref(), sample, json).await,
        AdminCmd::SecondFactor(c) => {
            use refuge_cli::access;
            match c {
                SecondFactorCmd::Enroll(f) => access::enroll(cfg, &f.role, &f.name, f.json).await,
                SecondFactorCmd::Remove(f) => {
                    access::change(cfg, &f.role, &f.name, true, f.json).await
                }
                SecondFactorCmd::Unlock(f) => {
                    access::change(cfg, &f.role, &f.name, false, f.json).await
                }
                SecondFactorCmd::List { json } => access::list(cfg, json).await,
            }
        }
        AdminCmd::Purge(c) => {
            use refuge_cli::access;
            match c {
                PurgeCmd::Request {
                    tenant,
                    host,
                    source,
                    reason,
                    json,
                } => {
                    access::purge_request(
                        cfg,
                        &tenant,
                        host.as_deref().unwrap_or(""),
                        source.as_deref().unwrap_or(""),
                        &reason,
                        json,
                    )
                    .await
                }
                PurgeCmd::Confirm { id, json } => access::purge_decide(cfg, &id, true, json).await,
                PurgeCmd::Cancel { id, json } => access::purge_decide(cfg, &id, false, json).await,
                PurgeCmd::List { json } => access::purge_list(cfg, json).await,
            }
        }
    }
}
