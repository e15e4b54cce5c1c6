//! PostgreSQL servers of a test's own, from Debian's packages
//! (`scripts/setup.sh` installs them): `initdb` in a temporary directory
//! owned by the `postgres` user, the server run as that user on a free
//! port on 127.0.0.1 and a Unix socket in the same directory. The test
//! (root) talks to it as the `postgres` role through the socket (trust);
//! the agent logs in over TCP as `refuge` with a password (SCRAM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The agent's role and its password.
pub const ROLE: &str = "refuge";
pub const PASSWORD: &str = "drill-Pa55";

/// The newest installed server's `bin` directory.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
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
        .expect("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/pg_ctl): scripts/setup.sh installs it")
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "no postgres user: scripts/setup.sh installs PostgreSQL"
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Runs a server binary as the `postgres` user; panics with its output on
/// failure.
fn as_postgres(bin: &Path, args: &[&str]) -> String {
    let o = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} {} failed:\n{}{}",
        bin.display(),
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A directory the `postgres` user owns, removed at drop.
pub fn postgres_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("refuge-pg-")
        .tempdir()
        .unwrap();
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(d.path(), Some(uid), Some(gid)).unwrap();
    d
}

/// One server, stopped (immediately) at drop.
pub struct Postgres {
    /// Its data directory.
    pub data: PathBuf,
    /// TCP port on 127.0.0.1 (also the socket's number).
    pub port: u16,
    /// Directory of its Unix socket.
    pub socket_dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

impl Postgres {
    /// `initdb` at `dir/NAME` and start it: SCRAM passwords over TCP,
    /// trust on the socket, small WAL limits so that the WAL is recycled
    /// while a test runs, no autovacuum (deltas between backups are the
    /// test's own), and the agent's role with the rights
    /// docs/databases.md lists.
    pub fn init(dir: &Path, name: &str) -> Postgres {
        let bin = bin_dir();
        let data = dir.join(name);
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(
            "\nlisten_addresses = '127.0.0.1'\nmax_wal_size = '64MB'\nmin_wal_size = '32MB'\n\
             checkpoint_timeout = '30s'\nlogging_collector = off\nautovacuum = off\n",
        );
        std::fs::write(&conf, text).unwrap();
        let mut pg = Postgres::adopt(data, dir);
        pg.start();
        pg.sql(
            "postgres",
            &format!(
                "CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{PASSWORD}';
                 GRANT pg_read_all_settings TO {ROLE};
                 GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO {ROLE};
                 GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO {ROLE};"
            ),
        );
        pg
    }

    /// A data directory made elsewhere (a restore, a standby's base
    /// backup), to run on a free port with its socket in `socket_dir`.
    pub fn adopt(data: PathBuf, socket_dir: &Path) -> Postgres {
        Postgres {
            data,
            port: crate::free_local_port(),
            socket_dir: socket_dir.to_path_buf(),
            bin: bin_dir(),
            running: false,
        }
    }

    /// Starts it and waits until it accepts connections (recovery
    /// included).
    pub fn start(&mut self) {
        self.start_with("");
    }

    /// [`Postgres::start`] with more server options (`-c name=value ...`).
    pub fn start_with(&mut self, extra: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {extra}",
            self.port,
            self.socket_dir.display()
        );
        let log = self.data.with_extension("log");
        let started = std::panic::catch_unwind(|| {
            as_postgres(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "120",
                    "start",
                ],
            )
        });
        assert!(
            started.is_ok(),
            "the server did not start; its log:\n{}",
            self.log()
        );
        self.running = true;
    }

    /// Stops it (fast shutdown).
    pub fn stop(&mut self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        self.running = false;
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// `psql` as `postgres` through the socket, unaligned and tuples only;
    /// panics on an error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let o = self.psql(db, sql);
        assert!(
            o.status.success(),
            "psql failed: {sql}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// [`Postgres::sql`] without the check.
    pub fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        Command::new(self.bin.join("psql"))
            .args(self.conn_args())
            .args(["-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `-h SOCKET_DIR -p PORT -U postgres`.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// A server binary (`pgbench`, `pg_amcheck`, ...) with
    /// [`Postgres::conn_args`] and `args`, as a child.
    pub fn tool(&self, name: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.args(self.conn_args()).args(args).stdin(Stdio::null());
        c
    }

    /// Runs [`Postgres::tool`] to completion; panics with its output on
    /// failure.
    pub fn run_tool(&self, name: &str, args: &[&str]) -> String {
        let o = self.tool(name, args).output().unwrap();
        assert!(
            o.status.success(),
            "{name} {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `pgbench` as a background load for `secs` seconds.
    pub fn pgbench_load(&self, clients: u32, secs: u32) -> Child {
        self.tool(
            "pgbench",
            &[
                "-n",
                "-c",
                &clients.to_string(),
                "-T",
                &secs.to_string(),
                "postgres",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    }

    /// A streaming standby of this server, made with `pg_basebackup -R`
    /// at `dir/NAME` and started.
    pub fn standby(&self, dir: &Path, name: &str) -> Postgres {
        let data = dir.join(name);
        let mut args: Vec<String> = self.conn_args();
        args.extend(["-D".into(), data.display().to_string(), "-R".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_postgres(&self.bin.join("pg_basebackup"), &args);
        let mut s = Postgres::adopt(data, dir);
        s.start();
        s
    }

    /// The agent config's `[source.postgres]` table for this server, with
    /// the password in `password_file`.
    pub fn source_table(&self, password_file: &Path) -> String {
        format!(
            "[source.postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{ROLE}\"\npassword_file = \"{}\"\nconnect_timeout_secs = 5\n",
            self.port,
            password_file.display()
        )
    }
}

/// Makes `refuge-agent wal-push` runnable by the server's user, as
/// PostgreSQL runs its archive_command: the agent binary and a copy of the
/// agent config `cfg` with its certificates in `dir/walpush`, owned by
/// `postgres`. Returns the archive_command for source `source`.
pub fn wal_push_command(dir: &Path, cfg: &Path, source: &str) -> String {
    let loaded = refuge_client::load_config(cfg).unwrap();
    let own = dir.join("walpush");
    std::fs::create_dir_all(&own).unwrap();
    let mut text = String::new();
    for line in std::fs::read_to_string(cfg).unwrap().lines() {
        let copy = |what: &str, from: &Path| {
            let to = own.join(from.file_name().unwrap());
            std::fs::copy(from, &to).unwrap();
            format!("{what} = \"{}\"", to.display())
        };
        let line = if line.starts_with("ca = ") {
            copy("ca", &loaded.node.ca)
        } else if line.starts_with("cert = ") {
            copy("cert", &loaded.node.cert)
        } else if line.starts_with("key = ") {
            copy("key", &loaded.node.key)
        } else if line.starts_with("state_dir = ") {
            format!("state_dir = \"{}\"", own.join("state").display())
        } else {
            line.to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    let conf = own.join("agent.toml");
    std::fs::write(&conf, text).unwrap();
    let bin = own.join("refuge-agent");
    if std::fs::hard_link(crate::bin("refuge-agent"), &bin).is_err() {
        std::fs::copy(crate::bin("refuge-agent"), &bin).unwrap();
    }
    let (uid, gid) = postgres_ids();
    // The binary stays root's (a hard link shares the build's inode); it
    // is executable by everyone.
    for e in std::fs::read_dir(&own).unwrap().flatten() {
        if e.file_name() != "refuge-agent" {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
        }
    }
    std::os::unix::fs::chown(&own, Some(uid), Some(gid)).unwrap();
    format!(
        "{} -c {} wal-push --source {source} %p",
        bin.display(),
        conf.display()
    )
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args([
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
