//! MariaDB servers of a test's own, from Debian's packages
//! (`scripts/setup.sh` installs them): `mariadb-install-db` in a temporary
//! directory owned by the `mysql` user, `mariadbd` run as that user with
//! its socket in the same directory and no network. The test (root) talks
//! to it as `root` (unix_socket authentication); the agent logs in as
//! `refuge` with a password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent's user and its password.
pub const USER: &str = "refuge";
pub const PASSWORD: &str = "maria-Pa55";

fn mysql_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, "mysql"]).output().unwrap();
        assert!(
            o.status.success(),
            "no mysql user: scripts/setup.sh installs MariaDB"
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A directory the `mysql` user owns, removed at drop.
pub fn mysql_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("refuge-maria-")
        .tempdir()
        .unwrap();
    let (uid, gid) = mysql_ids();
    std::os::unix::fs::chown(d.path(), Some(uid), Some(gid)).unwrap();
    d
}

/// One server, killed at drop.
pub struct Mariadb {
    /// Its data directory.
    pub data: PathBuf,
    /// Its Unix socket.
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Mariadb {
    /// `mariadb-install-db` at `dir/NAME`, started, with the agent's user
    /// and the grants docs/databases.md lists.
    pub fn init(dir: &Path, name: &str) -> Mariadb {
        let data = dir.join(name);
        let o = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=socket"])
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db: scripts/setup.sh installs MariaDB");
        assert!(
            o.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let mut m = Mariadb::adopt(data, dir, name);
        m.start();
        m.sql(&format!(
            "CREATE USER {USER}@localhost IDENTIFIED BY '{PASSWORD}';
             GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO {USER}@localhost;"
        ));
        m
    }

    /// A data directory made elsewhere (a restore), to run with its socket
    /// at `dir/NAME.sock`.
    pub fn adopt(data: PathBuf, dir: &Path, name: &str) -> Mariadb {
        Mariadb {
            data,
            socket: dir.join(format!("{name}.sock")),
            child: None,
        }
    }

    /// The server's error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("err")).unwrap_or_default()
    }

    /// Starts `mariadbd` and waits until it answers.
    pub fn start(&mut self) {
        let child = Command::new("runuser")
            .args(["-u", "mysql", "--", "/usr/sbin/mariadbd", "--no-defaults"])
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!(
                "--pid-file={}",
                self.data.with_extension("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.data.with_extension("err").display()
            ))
            .args(["--skip-networking", "--innodb-buffer-pool-size=64M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while !self.query("SELECT 1").status.success() {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mariadbd exited ({s}):\n{}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "mariadbd did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (SIGTERM: a clean shutdown) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The server itself (runuser is its parent), by its pid file.
            let pid = std::fs::read_to_string(self.data.with_extension("pid")).unwrap_or_default();
            let _ = Command::new("kill").arg(pid.trim()).status();
            let _ = c.wait();
            let t = Instant::now();
            while self.socket.exists() && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `mariadb` as root through the socket.
    pub fn query(&self, sql: &str) -> std::process::Output {
        Command::new("mariadb")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Mariadb::query`], panicking on an error; its output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        let o = self.query(sql);
        assert!(
            o.status.success(),
            "mariadb failed: {sql}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// The agent config's `[source.mariadb]` table, with the password in
    /// `password_file`.
    pub fn source_table(&self, password_file: &Path) -> String {
        format!(
            "[source.mariadb]\nsocket = \"{}\"\nuser = \"{USER}\"\npassword_file = \"{}\"\n",
            self.socket.display(),
            password_file.display()
        )
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The server by its pid file (runuser is only its parent).
            let pid = std::fs::read_to_string(self.data.with_extension("pid")).unwrap_or_default();
            match pid.trim() {
                // runuser reaps it and exits.
                p if !p.is_empty() => {
                    let _ = Command::new("kill").args(["-9", p]).status();
                }
                _ => {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
    }
}
