//! The S3 backend in the end-to-end benchmark (`--backend s3`): a
//! single-node Ceph cluster with its RADOS Gateway on this machine
//! (`scripts/ceph.sh`), a fresh prefix of its bucket per run, and the
//! bytes the run left there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The gateway a benchmark run stores chunk bodies in.
#[derive(Debug)]
pub struct Bucket {
    dir: PathBuf,
    endpoint: String,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
    /// This benchmark started the cluster (and stops it when dropped).
    started: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/ceph.sh")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("scripts/ceph.sh"))
}

impl Bucket {
    /// The cluster in `dir`: reused if its gateway answers, else started
    /// (installing Debian's Ceph packages when missing).
    pub fn start(dir: &Path) -> anyhow::Result<Bucket> {
        let up = Command::new(script())
            .arg("status")
            .arg(dir)
            .status()
            .context("running scripts/ceph.sh")?
            .success();
        if !up {
            let st = Command::new(script())
                .arg("start")
                .arg(dir)
                .status()
                .context("running scripts/ceph.sh start")?;
            if !st.success() {
                bail!("scripts/ceph.sh start {} failed", dir.display());
            }
        }
        let env = std::fs::read_to_string(dir.join("s3.env"))
            .with_context(|| format!("reading {}/s3.env", dir.display()))?;
        let get = |k: &str| -> anyhow::Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .with_context(|| format!("{k} missing from s3.env"))
        };
        Ok(Bucket {
            dir: dir.to_path_buf(),
            endpoint: get("REFUGE_S3_ENDPOINT")?,
            bucket: get("REFUGE_S3_BUCKET")?,
            region: get("REFUGE_S3_REGION")?,
            access_key: get("REFUGE_S3_ACCESS_KEY")?,
            secret_key: get("REFUGE_S3_SECRET_KEY")?,
            started: !up,
        })
    }

    /// `node.toml` lines that put chunk bodies under `prefix`, with the
    /// credentials file written into `node_dir`.
    pub fn node_toml(&self, node_dir: &Path, prefix: &str) -> anyhow::Result<String> {
        let creds = node_dir.join("s3-credentials.toml");
        std::fs::write(
            &creds,
            format!(
                "access_key = \"{}\"\nsecret_key = \"{}\"\n",
                self.access_key, self.secret_key
            ),
        )?;
        Ok(format!(
            "\n[store]\nbackend = \"s3\"\n\n[store.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\ncredentials_file = \"{}\"\nprefix = \"{prefix}\"\n",
            self.endpoint,
            self.bucket,
            self.region,
            creds.display()
        ))
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

    /// Bytes and objects under `prefix` (a bucket listing).
    pub fn usage(&self, prefix: &str) -> anyhow::Result<(u64, u64)> {
        let (bytes, keys) = self.list(prefix)?;
        Ok((bytes, keys.len() as u64))
    }

    /// Deletes every object under `prefix`: a run's packs would otherwise
    /// fill the test cluster's OSD after a few runs (a full Ceph blocks
    /// writes, and the node then sees time-outs).
    pub fn remove(&self, prefix: &str) -> anyhow::Result<()> {
        for key in self.list(prefix)?.1 {
            let out = self
                .curl()
                .args(["-X", "DELETE"])
                .arg(format!("{}/{}/{key}", self.endpoint, self.bucket))
                .output()
                .context("running curl")?;
            if !out.status.success() {
                bail!(
                    "deleting {key}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Total bytes and the keys of the objects under `prefix`.
    fn list(&self, prefix: &str) -> anyhow::Result<(u64, Vec<String>)> {
        let mut bytes = 0u64;
        let mut keys = Vec::new();
        let mut after = String::new();
        loop {
            let mut url = format!(
                "{}/{}?list-type=2&prefix={}%2F",
                self.endpoint,
                self.bucket,
                prefix.replace('/', "%2F")
            );
            if !after.is_empty() {
                url.push_str(&format!("&start-after={}", after.replace('/', "%2F")));
            }
            let out = self.curl().arg(&url).output().context("running curl")?;
            if !out.status.success() {
                bail!(
                    "listing {url}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let xml = String::from_utf8_lossy(&out.stdout);
            let field = |s: &str, tag: &str| -> Option<String> {
                let a = s.find(&format!("<{tag}>"))? + tag.len() + 2;
                let b = s[a..].find(&format!("</{tag}>"))? + a;
                Some(s[a..b].to_string())
            };
            let mut last = String::new();
            for entry in xml.split("<Contents>").skip(1) {
                bytes += field(entry, "Size")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                last = field(entry, "Key").unwrap_or_default();
                keys.push(last.clone());
            }
            if !xml.contains("<IsTruncated>true</IsTruncated>") || last.is_empty() {
                return Ok((bytes, keys));
            }
            after = last;
        }
    }

    /// In words, for the report.
    pub fn describe(&self) -> String {
        format!(
            "chunk bodies in packs in bucket `{}` of a single-node Ceph 16.2 (one bluestore OSD on a file, RADOS Gateway at {}) on the same machine, `scripts/ceph.sh`",
            self.bucket, self.endpoint
        )
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
        }
    }
}
