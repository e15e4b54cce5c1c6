//! The Ceph cluster the S3 backend's tests share: one per test run,
//! started by `scripts/test.sh` before the tests (and here, under a lock,
//! when a test runs without it), with a bucket the tests divide by
//! prefix. Requests a test makes to the bucket itself (listing, reading
//! and damaging objects) go through curl's SigV4 signing, not through the
//! node's client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The shared gateway's S3 settings (from `DIR/s3.env`).
#[derive(Debug, Clone)]
pub struct Ceph {
    /// The cluster's directory (`scripts/ceph.sh` DIR).
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket the tests share.
    pub bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
}

/// The repository's root (tests run from `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cluster's directory: `REFUGE_CEPH_DIR` (set by `scripts/test.sh`),
/// else one per user under the system's temporary directory (which must
/// support O_DIRECT: not tmpfs).
pub fn dir() -> PathBuf {
    std::env::var_os("REFUGE_CEPH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("refuge-ceph-tests"))
}

impl Ceph {
    /// The shared cluster, started if it is not running. A cluster that
    /// cannot start fails the test (never skips it).
    pub fn shared() -> Ceph {
        let dir = dir();
        let lock = dir.with_extension("lock");
        // `-o`: the daemons the script starts must not inherit the lock's
        // descriptor, or they hold the lock as long as they run and every
        // later start waits on it forever.
        let out = Command::new("flock")
            .arg("-o")
            .arg(&lock)
            .arg(repo().join("scripts/ceph.sh"))
            .arg("start")
            .arg(&dir)
            .output()
            .expect("running flock scripts/ceph.sh start");
        assert!(
            out.status.success(),
            "scripts/ceph.sh start {} failed (the S3 tests need a Ceph gateway): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("s3.env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from s3.env"))
                .to_string()
        };
        Ceph {
            endpoint: get("REFUGE_S3_ENDPOINT"),
            bucket: get("REFUGE_S3_BUCKET"),
            region: get("REFUGE_S3_REGION"),
            access_key: get("REFUGE_S3_ACCESS_KEY"),
            secret_key: get("REFUGE_S3_SECRET_KEY"),
            dir,
        }
    }

    /// The same cluster through a gateway of the caller's own (see
    /// [`Gateway`]), which it may stop and start without disturbing the
    /// other tests.
    pub fn own_gateway(&self) -> (Ceph, Gateway) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gw = Gateway {
            dir: self.dir.clone(),
            port,
        };
        gw.start();
        let through = Ceph {
            endpoint: format!("http://127.0.0.1:{port}"),
            ..self.clone()
        };
        (through, gw)
    }

    /// The same cluster with a new bucket of the caller's own, named
    /// `what-…` (unique), for a test that sets a quota on it.
    pub fn own_bucket(&self, what: &str) -> Ceph {
        let bucket = self.fresh_prefix(what).to_ascii_lowercase();
        let out = self
            .curl()
            .args(["-X", "PUT"])
            .arg(format!("{}/{bucket}", self.endpoint))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ceph {
            bucket,
            ..self.clone()
        }
    }

    /// Limits this bucket to `max_bytes` (RGW's bucket quota, enforced on
    /// each upload), or lifts the limit (`None`).
    pub fn set_quota(&self, max_bytes: Option<u64>) {
        let conf = self.dir.join("ceph.conf");
        let admin = |args: &[&str]| {
            let out = Command::new("radosgw-admin")
                .arg("-c")
                .arg(&conf)
                .args(args)
                .args(["--quota-scope=bucket", "--bucket", &self.bucket])
                .output()
                .expect("running radosgw-admin");
            assert!(
                out.status.success(),
                "radosgw-admin {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        match max_bytes {
            Some(n) => {
                admin(&["quota", "set", &format!("--max-size={n}")]);
                admin(&["quota", "enable"]);
            }
            None => admin(&["quota", "disable"]),
        }
    }

    /// The same gateway and bucket with another secret key (a node
    /// configured with it is refused by the gateway).
    pub fn with_secret_key(&self, secret_key: &str) -> Ceph {
        Ceph {
            secret_key: secret_key.to_string(),
            ..self.clone()
        }
    }

    /// A prefix no other test (of this or an earlier run) uses.
    pub fn fresh_prefix(&self, what: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "{what}-{}-{t}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `node.toml` lines that put the node's chunk bodies under `prefix`
    /// in the shared bucket, in packs of `pack_mib`; the credentials file
    /// is written into `node_dir`.
    pub fn node_toml(&self, node_dir: &Path, prefix: &str, pack_mib: usize) -> String {
        let creds = node_dir.join("s3-credentials.toml");
        std::fs::write(
            &creds,
            format!(
                "access_key = \"{}\"\nsecret_key = \"{}\"\n",
                self.access_key, self.secret_key
            ),
        )
        .unwrap();
        format!(
            "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\ncredentials_file = \"{}\"\nprefix = \"{prefix}\"\npack_mib = {pack_mib}\ntimeout_secs = 5\n",
            self.endpoint,
            self.bucket,
            self.region,
            creds.display()
        )
    }

    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--fail", "--max-time", "60"])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.access_key, self.secret_key));
        c
    }

    /// The names of the objects whose names start with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut after = String::new();
        loop {
            let mut url = format!(
                "{}/{}?list-type=2&prefix={}",
                self.endpoint,
                self.bucket,
                prefix.replace('/', "%2F")
            );
            if !after.is_empty() {
                url.push_str(&format!("&start-after={}", after.replace('/', "%2F")));
            }
            let out = self.curl().arg(&url).output().unwrap();
            assert!(
                out.status.success(),
                "listing {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let xml = String::from_utf8_lossy(&out.stdout).into_owned();
            let page: Vec<String> = xml
                .split("<Key>")
                .skip(1)
                .filter_map(|s| s.split("</Key>").next())
                .map(str::to_string)
                .collect();
            let truncated = xml.contains("<IsTruncated>true</IsTruncated>");
            after = page.last().cloned().unwrap_or_default();
            keys.extend(page);
            if !truncated || after.is_empty() {
                return keys;
            }
        }
    }

    /// Object `key`, whole.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self
            .curl()
            .arg(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reading {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Replaces object `key` with `body` (what a damaged disk or an
    /// intruder with the bucket's keys could leave).
    pub fn put(&self, key: &str, body: &[u8]) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        let out = self
            .curl()
            .arg("-T")
            .arg(file.path())
            .arg(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "writing {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A further radosgw of the shared cluster on a port of its own
/// (`scripts/ceph.sh start-gateway DIR PORT`): stopped when dropped.
pub struct Gateway {
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Gateway {
    fn script(&self, cmd: &str) {
        let out = Command::new(repo().join("scripts/ceph.sh"))
            .arg(cmd)
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .expect("running scripts/ceph.sh");
        assert!(
            out.status.success(),
            "scripts/ceph.sh {cmd} {} {}: {}",
            self.dir.display(),
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it (again) and waits until it answers S3 requests.
    pub fn start(&self) {
        self.script("start-gateway");
    }

    /// Stops it (SIGTERM, then SIGKILL): its port refuses connections.
    pub fn stop(&self) {
        self.script("stop-gateway");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/ceph.sh"))
            .arg("stop-gateway")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output();
    }
}
