//! The bucket: what the pack store needs of object storage ([`Objects`]),
//! and its implementation over the `object_store` crate ([`Bucket`]: S3
//! with SigV4, path-style URLs, ranged GETs, retries), with the node's
//! `[store.s3]` settings ([`S3Config`]).
//!
//! The store's callers are synchronous (blocking threads of the node), the
//! client is async: a [`Bucket`] owns a small tokio runtime and every call
//! waits for its future on a channel, which works from any thread.

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;

/// Why an object call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The bucket refused to take more (quota, full cluster).
    #[error("{0}")]
    Full(String),
    /// Anything else: the gateway unreachable, refused credentials, a
    /// server error after the client's retries.
    #[error("{0}")]
    Other(String),
}

/// Object storage as the pack store uses it: whole objects written once,
/// read by ranges, deleted.
pub trait Objects: Send + Sync + 'static {
    /// Writes object `name` (durable when this returns).
    fn put(&self, name: &str, body: Vec<u8>) -> Result<(), ObjectError>;
    /// Reads object `name` whole.
    fn get(&self, name: &str) -> Result<Bytes, ObjectError>;
    /// For each `(name, ranges)`: the bytes of each range, requests sent in
    /// parallel (nearby ranges of one object are read together).
    fn get_ranges(
        &self,
        reads: Vec<(String, Vec<Range<u64>>)>,
    ) -> Vec<Result<Vec<Bytes>, ObjectError>>;
    /// Deletes object `name`; an absent object is not an error.
    fn delete(&self, name: &str) -> Result<(), ObjectError>;
    /// Where the objects are, for messages (`s3://bucket/prefix at URL`).
    fn describe(&self) -> String;
}

/// The `[store.s3]` section of node.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The gateway, `http://host:port` or `https://host:port` (path-style
    /// requests: `ENDPOINT/BUCKET/KEY`).
    pub endpoint: String,
    /// The bucket, which must exist.
    pub bucket: String,
    /// The SigV4 region (Ceph's RADOS Gateway: `default`).
    #[serde(default = "default_region")]
    pub region: String,
    /// A TOML file with `access_key` and `secret_key` (other keys are
    /// ignored), readable by the node only.
    pub credentials_file: PathBuf,
    /// Object names start with this (several nodes can share a bucket
    /// with different prefixes); empty by default.
    #[serde(default)]
    pub prefix: String,
    /// Target size of a pack object, MiB.
    #[serde(default = "default_pack_mib")]
    pub pack_mib: usize,
    /// PEM file of the CA that signed an `https` gateway's certificate, if
    /// not a system-trusted one.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one request may take before it is retried, seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_region() -> String {
    "default".into()
}
fn default_pack_mib() -> usize {
    32
}
fn default_timeout_secs() -> u64 {
    30
}

#[derive(Deserialize)]
struct Credentials {
    access_key: String,
    secret_key: String,
}

/// Reads the credentials file (`access_key`, `secret_key`).
fn credentials(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the S3 credentials file {}: {e}",
            path.display()
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "the S3 credentials file {} needs access_key and secret_key: {e}",
            path.display()
        )
    })
}

/// Objects in a bucket through `object_store` (S3, or any other of its
/// stores in tests).
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    rt: Option<tokio::runtime::Runtime>,
    prefix: String,
    what: String,
}

impl Bucket {
    /// The S3 bucket `cfg` names.
    pub fn s3(cfg: &S3Config) -> Result<Self, String> {
        let creds = credentials(&cfg.credentials_file)?;
        let http = cfg.endpoint.starts_with("http://");
        if !http && !cfg.endpoint.starts_with("https://") {
            return Err(format!(
                "[store.s3] endpoint {:?} must start with http:// or https://",
                cfg.endpoint
            ));
        }
        let mut client = object_store::ClientOptions::new()
            .with_allow_http(http)
            .with_timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .with_connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read [store.s3] ca_file {}: {e}", ca.display()))?;
            let cert = object_store::Certificate::from_pem(&pem)
                .map_err(|e| format!("[store.s3] ca_file {}: {e}", ca.display()))?;
            client = client.with_root_certificate(cert);
        }
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(2 * cfg.timeout_secs.max(1)),
            ..Default::default()
        };
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(creds.access_key)
            .with_secret_access_key(creds.secret_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| format!("[store.s3]: {e}"))?;
        let what = format!(
            "s3://{}/{} at {}",
            cfg.bucket,
            cfg.prefix.trim_matches('/'),
            cfg.endpoint
        );
        Self::over(Arc::new(store), &cfg.prefix, what)
    }

    /// Objects in `store` under `prefix`, described as `what`.
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str, what: String) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("refuge-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the object store's threads: {e}"))?;
        let prefix = prefix.trim_matches('/');
        Ok(Bucket {
            store,
            rt: Some(rt),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            what,
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }

    /// Runs `fut` on the bucket's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, ObjectError>> + Send + 'static,
    ) -> Result<T, ObjectError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = &self.rt else {
            return Err(ObjectError::Other("the object store is shut down".into()));
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| ObjectError::Other("the object store's request was dropped".into()))?
    }

    fn error(what: &str, e: object_store::Error) -> ObjectError {
        let text = format!("{what}: {e}");
        match e {
            object_store::Error::NotFound { .. } => ObjectError::NotFound(text),
            // "507" alone also matched timings in the text ("in
            // 3.695077ms"): only the status code itself counts.
            _ if [
                "QuotaExceeded",
                "InsufficientStorage",
                "status code: 507",
                "No space left",
            ]
            .iter()
            .any(|s| text.contains(s)) =>
            {
                ObjectError::Full(text)
            }
            _ => ObjectError::Other(text),
        }
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is not allowed
        // on an async thread; the last reference may go on one.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Objects for Bucket {
    fn put(&self, name: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        let (store, path) = (self.store.clone(), self.path(name));
        let what = format!("writing {path} to {}", self.what);
        self.run(async move {
            store
                .put(&path, PutPayload::from(body))
                .await
                .map(|_| ())
                .map_err(|e| Self::error(&what, e))
        })
    }

    fn get(&self, name: &str) -> Result<Bytes, ObjectError> {
        let (store, path) = (self.store.clone(), self.path(name));
        let what = format!("reading {path} from {}", self.what);
        self.run(async move {
            let r = store.get(&path).await.map_err(|e| Self::error(&what, e))?;
            r.bytes().await.map_err(|e| Self::error(&what, e))
        })
    }

    fn get_ranges(
        &self,
        reads: Vec<(String, Vec<Range<u64>>)>,
    ) -> Vec<Result<Vec<Bytes>, ObjectError>> {
        let n = reads.len();
        let store = self.store.clone();
        let jobs: Vec<(ObjectPath, Vec<Range<u64>>, String)> = reads
            .into_iter()
            .map(|(name, ranges)| {
                let path = self.path(&name);
                let what = format!("reading {path} from {}", self.what);
                (path, ranges, what)
            })
            .collect();
        let all = self.run(async move {
            Ok(futures::stream::iter(jobs)
                .map(|(path, ranges, what)| {
                    let store = store.clone();
                    async move {
                        store
                            .get_ranges(&path, &ranges)
                            .await
                            .map_err(|e| Self::error(&what, e))
                    }
                })
                .buffered(8)
                .collect::<Vec<_>>()
                .await)
        });
        match all {
            Ok(v) => v,
            Err(e) => vec![Err(e); n],
        }
    }

    fn delete(&self, name: &str) -> Result<(), ObjectError> {
        let (store, path) = (self.store.clone(), self.path(name));
        let what = format!("deleting {path} from {}", self.what);
        self.run(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(Self::error(&what, e)),
            }
        })
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Bucket {
        Bucket::over(
            Arc::new(object_store::memory::InMemory::new()),
            "/node-a/",
            "memory".into(),
        )
        .unwrap()
    }

    #[test]
    fn objects_are_written_read_by_ranges_and_deleted() {
        let b = memory();
        b.put("packs/t/1", b"0123456789".to_vec()).unwrap();
        assert_eq!(&b.get("packs/t/1").unwrap()[..], b"0123456789");
        let got = b.get_ranges(vec![
            ("packs/t/1".into(), vec![2..4, 8..10]),
            ("packs/t/2".into(), vec![0..1, 1..2]),
        ]);
        let first = got[0].as_ref().unwrap();
        assert_eq!((&first[0][..], &first[1][..]), (&b"23"[..], &b"89"[..]));
        assert!(matches!(got[1], Err(ObjectError::NotFound(_))));
        b.delete("packs/t/1").unwrap();
        b.delete("packs/t/1").unwrap();
        assert!(matches!(b.get("packs/t/1"), Err(ObjectError::NotFound(_))));
    }

    #[test]
    fn only_a_full_bucket_is_full_whatever_the_timings_in_the_text_say() {
        let generic = |m: &str| object_store::Error::Generic {
            store: "S3",
            source: m.to_string().into(),
        };
        // A refusal whose text holds "507" in a timing is not a full
        // bucket (it was, once, and the node said "storage is full").
        let refused = generic(
            "Error performing PUT http://x/probe in 3.695077ms - Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>",
        );
        assert!(matches!(
            Bucket::error("writing probe", refused),
            ObjectError::Other(_)
        ));
        for full in [
            "Server returned non-2xx status code: 507 Insufficient Storage",
            "Server returned non-2xx status code: 403 Forbidden: <Code>QuotaExceeded</Code>",
        ] {
            assert!(
                matches!(
                    Bucket::error("writing", generic(full)),
                    ObjectError::Full(_)
                ),
                "{full}"
            );
        }
    }

    #[test]
    fn a_bucket_dropped_on_an_async_thread_does_not_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = memory();
        rt.block_on(async move { drop(b) });
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let cfg = S3Config {
            endpoint: "ftp://x".into(),
            bucket: "b".into(),
            region: default_region(),
            credentials_file: creds.clone(),
            prefix: String::new(),
            pack_mib: 32,
            ca_file: None,
            timeout_secs: 30,
        };
        let e = Bucket::s3(&cfg).err().unwrap();
        assert!(e.contains("cannot read the S3 credentials file"), "{e}");
        std::fs::write(&creds, "access_key = \"a\"\n").unwrap();
        let e = Bucket::s3(&cfg).err().unwrap();
        assert!(e.contains("secret_key"), "{e}");
        std::fs::write(
            &creds,
            "access_key = \"a\"\nsecret_key = \"s\"\nregion = \"x\"\n",
        )
        .unwrap();
        let e = Bucket::s3(&cfg).err().unwrap();
        assert!(e.contains("must start with http"), "{e}");
    }
}
