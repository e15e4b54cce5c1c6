//! `refuge-bench postgres`: what backing up a PostgreSQL cluster costs, on
//! a real server from Debian's packages: `postgres` base backups (initial,
//! and after a pgbench load) beside `pg_basebackup` of the same cluster;
//! the WAL-shipping overhead as pgbench's throughput with archiving off,
//! with the `cp` archive_command of PostgreSQL's documentation and with
//! `refuge-agent wal-push` (and each push's latency); and a restore of the
//! latest point (base plus every archived WAL file) with the cluster's
//! replay until it answers.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::cluster::{self, Node};
use super::machine::Machine;
use super::measure::{self, Measured};
use super::report::{mb, mb_per_s, mib_from_kib, secs};

/// What `refuge-bench postgres` measures.
pub struct Options {
    /// pgbench scale (about 15 MB of data each).
    pub scale: u32,
    /// Seconds of each pgbench load.
    pub load_secs: u32,
    /// pgbench clients.
    pub clients: u32,
    /// Scratch directory parent.
    pub dir: Option<PathBuf>,
    /// Keep the scratch directory.
    pub keep: bool,
}

/// The newest installed server's `bin` directory.
fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/setup.sh installs it)")?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .context("no /usr/lib/postgresql/*/bin/pg_ctl (scripts/setup.sh installs PostgreSQL)")
}

/// `runuser -u postgres -- PROGRAM`.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn chown_postgres(p: &Path) -> anyhow::Result<()> {
    let o = cluster::run_output(
        {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(p);
            c
        },
        "chown postgres",
    )?;
    drop(o);
    Ok(())
}

/// The benchmark's server.
struct Server {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    running: bool,
}

impl Server {
    fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(args);
        cluster::run_output(c, &format!("pg_ctl {}", args.join(" "))).map(|_| ())
    }

    /// Starts it (with `extra` server options) and waits until it accepts
    /// connections; returns how long that took (recovery included).
    fn start(&mut self, extra: &str) -> anyhow::Result<Duration> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses='' {extra}",
            self.port,
            self.sock.display()
        );
        let log = self.data.with_extension("log");
        let log_arg = log.display().to_string();
        let t = Instant::now();
        self.ctl(&["-l", &log_arg, "-o", &opts, "-w", "-t", "600", "start"])
            .with_context(|| fs::read_to_string(&log).unwrap_or_default())?;
        self.running = true;
        Ok(t.elapsed())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.ctl(&["-m", "fast", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut c = self.tool("psql");
        c.args([
            "-d",
            "postgres",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        let o = cluster::run_output(c, &format!("psql -c {sql}"))?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Sets the archiving mode (a restart).
    fn archive(&mut self, command: Option<&str>) -> anyhow::Result<()> {
        match command {
            Some(c) => {
                self.sql("ALTER SYSTEM SET archive_mode = on")?;
                self.sql(&format!(
                    "ALTER SYSTEM SET archive_command = '{}'",
                    c.replace('\'', "''")
                ))?;
            }
            None => {
                self.sql("ALTER SYSTEM SET archive_mode = off")?;
            }
        }
        self.stop()?;
        self.start("")?;
        Ok(())
    }

    /// pgbench for `secs` seconds: transactions per second.
    fn load(&self, clients: u32, secs: u32) -> anyhow::Result<f64> {
        let mut c = self.tool("pgbench");
        c.args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "postgres",
        ]);
        let o = cluster::run_output(c, "pgbench")?;
        let text = String::from_utf8_lossy(&o.stdout);
        text.lines()
            .find_map(|l| {
                l.strip_prefix("tps = ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .with_context(|| format!("no tps in pgbench's output:\n{text}"))
    }

    /// Archived and failed counts of `pg_stat_archiver`.
    fn archiver(&self) -> anyhow::Result<(u64, u64)> {
        let v = self.sql("SELECT archived_count, failed_count FROM pg_stat_archiver")?;
        let (a, f) = v.split_once('|').context("pg_stat_archiver")?;
        Ok((a.parse()?, f.parse()?))
    }

    /// Switches the segment and waits until everything up to it is
    /// archived; returns how long the archiver took to catch up.
    fn drain(&self) -> anyhow::Result<Duration> {
        let seg = self.sql("SELECT pg_walfile_name(pg_switch_wal())")?;
        let t = Instant::now();
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")?;
            if last >= seg {
                return Ok(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the archiver did not reach {seg} within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
        }
    }
}

/// The data directory's bytes without `pg_wal`: what a base backup copies
/// (both tools add only the WAL of the backup's own range).
fn relation_bytes(data: &Path) -> anyhow::Result<u64> {
    Ok(cluster::dir_size(data)?.0 - cluster::dir_size(&data.join("pg_wal"))?.0)
}

/// One archiving mode's load.
struct Load {
    mode: &'static str,
    tps: f64,
    archived: u64,
    failed: u64,
    catch_up: Duration,
    /// Per-push seconds (refuge only).
    pushes: Vec<f64>,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn checked(m: Measured) -> anyhow::Result<Measured> {
    match &m.failure {
        Some(f) => bail!("{f}"),
        None => Ok(m),
    }
}

/// Runs the benchmark and returns its Markdown block.
pub fn run(o: &Options) -> anyhow::Result<String> {
    let bin = pg_bin()?;
    let scratch = match &o.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("refuge-pgbench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("refuge-pgbench-")
            .tempdir()?,
    };
    let root = scratch.path().to_path_buf();
    // Kept (also when the run fails) with --keep.
    let _scratch = match o.keep {
        true => {
            let kept = scratch.keep();
            eprintln!("[postgres] keeping {}", kept.display());
            None
        }
        false => Some(scratch),
    };
    // The server's user runs wal-push from root/bin and reads root/pg.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
    cluster::install(&root)?;
    cluster::make_certs(&root)?;
    let port = cluster::free_port()?;
    let agent = cluster::write_configs(&root, port, &[], &Default::default())?;
    let pgdir = root.join("pg");
    fs::create_dir_all(&pgdir)?;
    chown_postgres(&pgdir)?;
    let mut pg = Server {
        data: pgdir.join("data"),
        sock: pgdir.clone(),
        port: cluster::free_port()?,
        bin: bin.clone(),
        running: false,
    };
    let mut init = as_postgres(&bin.join("initdb"));
    init.arg("-D")
        .arg(&pg.data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
    cluster::run_output(init, "initdb")?;
    let conf = pg.data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf)?;
    text.push_str("\nmax_wal_size = '1GB'\nlogging_collector = off\nshared_buffers = '256MB'\n");
    fs::write(&conf, text)?;
    pg.start("")?;
    pg.sql(
        "CREATE ROLE refuge LOGIN REPLICATION;
         GRANT pg_read_all_settings TO refuge;
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO refuge;
         GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO refuge;",
    )?;
    eprintln!("[postgres] pgbench -i -s {}", o.scale);
    let mut init = pg.tool("pgbench");
    init.args(["-i", "-q", "-s", &o.scale.to_string(), "postgres"]);
    cluster::run_output(init, "pgbench -i")?;
    pg.sql("CHECKPOINT")?;
    let mut agent_text = fs::read_to_string(&agent)?;
    agent_text.push_str(&format!(
        "\n[[source]]\nname = \"pg\"\npath = \"{}\"\nkind = \"postgres\"\n[source.postgres]\nhost = \"{}\"\nport = {}\nuser = \"refuge\"\n",
        pg.data.display(),
        pg.sock.display(),
        pg.port
    ));
    fs::write(&agent, &agent_text)?;
    // wal-push's copy of the config, readable by the server's user.
    let push_dir = pgdir.join("walpush");
    fs::create_dir_all(&push_dir)?;
    for f in ["ca.pem", "bench-bench-host.pem", "bench-bench-host.key"] {
        fs::copy(root.join("certs").join(f), push_dir.join(f))?;
    }
    let push_cfg = push_dir.join("agent.toml");
    fs::write(
        &push_cfg,
        agent_text.replace("certs/", &format!("{}/", push_dir.display())),
    )?;
    let times = push_dir.join("push-ns");
    let script = push_dir.join("push.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ns=$(date +%s%N)\n{} -c {} wal-push --source pg \"$1\"\nrc=$?\necho $(( $(date +%s%N) - s )) >> {}\nexit $rc\n",
            root.join("bin/refuge-agent").display(),
            push_cfg.display(),
            times.display()
        ),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let cp_dir = pgdir.join("cp-archive");
    fs::create_dir_all(&cp_dir)?;
    chown_postgres(&pgdir)?;

    let mut node = Node::start(&root, port)?;
    let logs = root.join("logs");
    fs::create_dir_all(&logs)?;
    let data_bytes = relation_bytes(&pg.data)?;
    let backup = |name: &str| -> anyhow::Result<(Measured, serde_json::Value)> {
        let mut c = cluster::command("refuge-agent", &root)?;
        c.args(["-c", "agent.toml", "backup", "--source", "pg", "--json"]);
        let m = checked(measure::run(c, &logs, name)?)?;
        let v: serde_json::Value = serde_json::from_str(&m.stdout)?;
        let v = v[0].clone();
        Ok((m, v))
    };
    let (sock, pg_port) = (pg.sock.clone(), pg.port);
    let basebackup = |name: &str| -> anyhow::Result<Measured> {
        let into = pgdir.join(name);
        let mut c = as_postgres(&bin.join("pg_basebackup"));
        c.arg("-h")
            .arg(&sock)
            .args(["-p", &pg_port.to_string(), "-U", "postgres", "-D"])
            .arg(&into)
            .args(["-X", "fetch", "-c", "fast"]);
        let m = checked(measure::run(c, &logs, name)?)?;
        let _ = fs::remove_dir_all(&into);
        Ok(m)
    };

    eprintln!("[postgres] initial base backup");
    let (first, first_json) = backup("refuge-initial")?;
    let bb_first = basebackup("pg_basebackup-1")?;

    // Each mode under the same load; the last (wal-push) stays on, so
    // that the base after it and the WAL since form one archive.
    eprintln!("[postgres] WAL shipping");
    let mut loads = Vec::new();
    let cp = format!("test ! -f {0}/%f && cp %p {0}/%f", cp_dir.display());
    let push = format!("{} %p", script.display());
    for (mode, command) in [
        ("off", None),
        ("cp (PostgreSQL's example)", Some(cp.as_str())),
        ("refuge-agent wal-push", Some(push.as_str())),
    ] {
        pg.archive(command)?;
        let _ = fs::remove_file(&times);
        let (a0, f0) = pg.archiver()?;
        let tps = pg.load(o.clients, o.load_secs)?;
        let catch_up = match command {
            Some(_) => pg.drain()?,
            None => Duration::ZERO,
        };
        let (a1, f1) = pg.archiver()?;
        let pushes: Vec<f64> = fs::read_to_string(&times)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|ns| ns / 1e9)
            .collect();
        eprintln!(
            "[postgres] archiving {mode}: {tps:.0} tps, {} archived, {} failed, caught up {:.1} s after the load",
            a1 - a0,
            f1 - f0,
            catch_up.as_secs_f64()
        );
        loads.push(Load {
            mode,
            tps,
            archived: a1 - a0,
            failed: f1 - f0,
            catch_up,
            pushes,
        });
    }
    let loaded_secs = o.load_secs * 3;
    eprintln!("[postgres] base backup after the loads");
    pg.sql("CHECKPOINT")?;
    let after_bytes = relation_bytes(&pg.data)?;
    let (second, second_json) = backup("refuge-after-load")?;
    let bb_second = basebackup("pg_basebackup-2")?;
    // More transactions after that base, archived by wal-push.
    pg.load(o.clients, 5)?;
    pg.drain()?;

    eprintln!("[postgres] restore latest with the archived WAL");
    let target = pgdir.join("restored");
    let mut c = cluster::command("refuge", &root)?;
    c.args([
        "-c",
        "agent.toml",
        "restore",
        "latest",
        "--source",
        "pg",
        "--json",
        "--target",
    ])
    .arg(&target);
    let restore = checked(measure::run(c, &logs, "restore-latest")?)?;
    let rj: serde_json::Value = serde_json::from_str(&restore.stdout)?;
    let wal_files = rj["postgres_wal"]["files"].as_u64().unwrap_or(0);
    let wal_bytes = rj["postgres_wal"]["bytes"].as_u64().unwrap_or(0);
    let wal_secs = rj["postgres_wal"]["duration_secs"].as_f64().unwrap_or(0.0);
    let restored_bytes = rj["bytes"].as_u64().unwrap_or(0);
    let mut restored = Server {
        data: target.clone(),
        sock: pgdir.clone(),
        port: cluster::free_port()?,
        bin: bin.clone(),
        running: false,
    };
    let t = Instant::now();
    restored.start("-c archive_mode=off")?;
    // Archive recovery takes read-only connections before it ends.
    while restored.sql("SELECT pg_is_in_recovery()")? != "f" {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the restored cluster still recovers after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let replay = t.elapsed();
    let rows = restored.sql("SELECT count(*) FROM pgbench_history")?;
    let source_rows = pg.sql("SELECT count(*) FROM pgbench_history")?;
    restored.stop()?;
    if rows != source_rows {
        bail!("the restored cluster has {rows} pgbench_history rows, the source {source_rows}");
    }
    pg.stop()?;
    node.stop()?;

    let m = Machine::describe(&root);
    let mut out = String::new();
    writeln!(
        out,
        "### PostgreSQL: backups, WAL shipping, restore of the latest point\n\nCommit `{}`; {}. `refuge-bench postgres --scale {} --load-secs {} --clients {}`: PostgreSQL {} from Debian's packages (shared_buffers 256 MB, max_wal_size 1 GB), `pgbench -i -s {}` ({} in the data directory without `pg_wal`, the Data column and MB/s below), node, agent and server on this one machine (mTLS over 127.0.0.1); one run.\n",
        m.commit,
        m.line(),
        o.scale,
        o.load_secs,
        o.clients,
        pg.sql_version(),
        o.scale,
        mb(data_bytes)
    )?;
    writeln!(
        out,
        "| Base backup | Data | Wall time | MB/s | Read | Sent | Peak RSS | CPU (user + sys) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let row =
        |out: &mut String, what: &str, bytes: u64, m: &Measured, j: Option<&serde_json::Value>| {
            let w = m.wall.as_secs_f64();
            let _ = writeln!(
                out,
                "| {what} | {} | {} | **{}** | {} | {} | {} | {:.1} s ({:.1} + {:.1}) |",
                mb(bytes),
                secs(w),
                mb_per_s(bytes, w),
                j.map_or("-".into(), |j| mb(j["bytes_read"].as_u64().unwrap_or(0))),
                j.map_or("-".into(), |j| mb(j["bytes_sent"].as_u64().unwrap_or(0))),
                mib_from_kib(m.peak_rss_kib),
                m.cpu_user + m.cpu_sys,
                m.cpu_user,
                m.cpu_sys
            );
        };
    row(
        &mut out,
        "refuge, initial",
        data_bytes,
        &first,
        Some(&first_json),
    );
    row(
        &mut out,
        "pg_basebackup -Fp -X fetch (a full copy)",
        data_bytes,
        &bb_first,
        None,
    );
    row(
        &mut out,
        &format!("refuge, after {loaded_secs} s of pgbench"),
        after_bytes,
        &second,
        Some(&second_json),
    );
    row(
        &mut out,
        "pg_basebackup again",
        after_bytes,
        &bb_second,
        None,
    );
    writeln!(
        out,
        "\n| WAL archiving during {} s of pgbench ({} clients) | tps | vs off | WAL files archived | failed | archiver caught up after the load | push latency p50 / p95 / max |\n|---|---:|---:|---:|---:|---:|---:|",
        o.load_secs, o.clients
    )?;
    let off = loads[0].tps;
    for l in &loads {
        writeln!(
            out,
            "| {} | {:.0} | {:+.1}% | {} | {} | {} | {} |",
            l.mode,
            l.tps,
            (l.tps / off - 1.0) * 100.0,
            l.archived,
            l.failed,
            if l.mode == "off" {
                "-".to_string()
            } else {
                secs(l.catch_up.as_secs_f64())
            },
            if l.pushes.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.3} / {:.3} / {:.3} s",
                    percentile(&l.pushes, 0.5),
                    percentile(&l.pushes, 0.95),
                    percentile(&l.pushes, 1.0)
                )
            }
        )?;
    }
    writeln!(
        out,
        "\nRestore of the latest point (`refuge restore latest --source pg`): {} in {} ({} MB/s of the base), of which {} archived WAL files ({}) fetched in {}; peak RSS {}; the restored cluster replayed them and was out of recovery (`pg_is_in_recovery()` false) {} after `pg_ctl start`, with every pgbench_history row of the source ({source_rows}).",
        mb(restored_bytes + wal_bytes),
        secs(restore.wall.as_secs_f64()),
        mb_per_s(restored_bytes, restore.wall.as_secs_f64() - wal_secs),
        wal_files,
        mb(wal_bytes),
        secs(wal_secs),
        mib_from_kib(restore.peak_rss_kib),
        secs(replay.as_secs_f64())
    )?;
    Ok(out)
}

impl Server {
    /// The major version of its binaries.
    fn sql_version(&self) -> String {
        self.bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
