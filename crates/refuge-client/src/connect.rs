//! The mutual-TLS connection to the node, and error messages a user can act
//! on.
//!
//! The TLS handshake runs in our own connector (TLS 1.3 only, ALPN `h2`) so
//! that a failed handshake surfaces as one sentence naming the cause, not as
//! a generic transport error.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hyper_util::rt::TokioIo;
use refuge_proto::pb;
use refuge_proto::pb::admin_client::AdminClient;
use refuge_proto::pb::audit_client::AuditClient;
use refuge_proto::pb::ingest_client::IngestClient;
use refuge_proto::pb::restore_client::RestoreClient;
use refuge_proto::pb::supervision_client::SupervisionClient;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::ConnectionConfig;

/// The session a second-factor sign-in opened, which every call on a
/// [`Node`]'s clients carries as `x-refuge-session` metadata once set.
#[derive(Clone, Default)]
pub struct Session(Arc<std::sync::RwLock<Option<MetadataValue<Ascii>>>>);

impl Session {
    /// Sets (or, with `None`, clears) the token the calls carry.
    pub fn set(&self, token: Option<&str>) -> anyhow::Result<()> {
        let v = match token {
            Some(t) => Some(
                MetadataValue::try_from(t).map_err(|_| anyhow!("a session token must be ASCII"))?,
            ),
            None => None,
        };
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }
}

impl tonic::service::Interceptor for Session {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            req.metadata_mut().insert(SESSION_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// The metadata a signed-in call carries (the node's `SESSION_HEADER`).
pub const SESSION_HEADER: &str = "x-refuge-session";

/// The channel of a [`Node`]'s clients: each call carries the session.
pub type NodeChannel = InterceptedService<Channel, Session>;

/// A connected, authenticated node.
#[derive(Clone)]
pub struct Node {
    /// Ingest service client.
    pub ingest: IngestClient<NodeChannel>,
    /// Restore service client.
    pub restore: RestoreClient<NodeChannel>,
    /// Audit service client.
    pub audit: AuditClient<NodeChannel>,
    /// Admin service client.
    pub admin: AdminClient<NodeChannel>,
    /// Supervision service client (drills, status).
    pub supervision: SupervisionClient<NodeChannel>,
    /// The second-factor session the calls carry (see [`Node::sign_in`]).
    pub session: Session,
    /// What the node said of our second factor when we connected: ""
    /// (none needed), `enrol`, `sign_in` or `signed_in`.
    pub second_factor: String,
    /// Role the node read from our certificate (`agent`, `operator`,
    /// `admin`, `auditor`).
    pub role: String,
    /// Our certificate's CN.
    pub name: String,
    /// Tenants we act for (`*` for all).
    pub tenants: Vec<String>,
    /// Our certificate's serial number (hex).
    pub serial: String,
    /// An agent's tenant (empty for other roles).
    pub tenant: String,
    /// An agent's host (empty for other roles).
    pub host: String,
    /// The node's address, for messages.
    pub address: String,
    /// The node's site (node.toml `site`; empty from an older node).
    pub site: String,
    /// `[node] call_timeout_secs`: see [`Node::within`].
    pub call_timeout: Duration,
}

impl Node {
    /// Runs one call, `what` (for the error), with the
    /// `[node] call_timeout_secs` deadline: the request carries it as
    /// `grpc-timeout` (the node gives up on the call too), and a node that
    /// does not answer in time, while its connection stays alive, fails the
    /// call with a transient error that the backup's retries handle.
    pub async fn within<T, F>(
        &self,
        what: &str,
        call: impl FnOnce(tonic::Request<()>) -> F,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut req = tonic::Request::new(());
        req.set_timeout(self.call_timeout);
        match tokio::time::timeout(self.call_timeout, call(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            // Also the node's own enforcement of the deadline (tonic
            // answers CANCELLED "Timeout expired").
            Ok(Err(s))
                if s.code() == tonic::Code::DeadlineExceeded
                    || (s.code() == tonic::Code::Cancelled
                        && s.message().contains("Timeout expired")) =>
            {
                Err(self.no_answer(what))
            }
            Ok(Err(s)) => Err(rpc_error(what, &s)),
            Err(_) => Err(self.no_answer(what)),
        }
    }

    /// The transient error of a call `what` the node did not answer in
    /// time.
    pub(crate) fn no_answer(&self, what: &str) -> anyhow::Error {
        anyhow::Error::new(Transient(format!(
            "{what}: the node at {} did not answer within {} s ([node] call_timeout_secs); \
             the connection was alive, so the node is stuck or overloaded",
            self.address,
            self.call_timeout.as_secs()
        )))
    }

    /// Indexes of `ids` that the node lacks, ascending; asks in batches of
    /// at most `MAX_FIND_IDS`.
    pub(crate) async fn find_missing(
        &self,
        ids: &[refuge_core::ChunkId],
    ) -> anyhow::Result<Vec<usize>> {
        let mut ingest = self.ingest.clone();
        let mut missing = Vec::new();
        for (n, batch) in ids.chunks(refuge_proto::MAX_FIND_IDS).enumerate() {
            let req = pb::FindMissingRequest {
                ids: batch.iter().map(|id| id.0.to_vec()).collect(),
            };
            let resp = self
                .within("asking the node which chunks it lacks", |r| {
                    ingest.find_missing(r.map(|()| req))
                })
                .await?;
            for i in resp.missing {
                let i = i as usize;
                if i >= batch.len() {
                    anyhow::bail!("node answered FindMissing with an index out of range");
                }
                missing.push(n * refuge_proto::MAX_FIND_IDS + i);
            }
        }
        Ok(missing)
    }
}

/// An error that trying again later may cure: the node was unreachable,
/// the connection was cut, or the node was shutting down. Found in an
/// error's chain by [`is_transient`].
#[derive(Debug)]
pub struct Transient(pub String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transient {}

/// A failed call as an error: `context: cause`, marked [`Transient`] when
/// the status says the connection or the node, not the request, failed.
pub fn rpc_error(context: &str, s: &tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let text = format!("{context}: {}", explain_status(s));
    let transport = matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::Aborted | Code::DeadlineExceeded
    ) || (s.code() == Code::Unknown
        && [
            "transport",
            "connection",
            "broken pipe",
            "reset",
            "h2 protocol",
        ]
        .iter()
        .any(|w| text.to_ascii_lowercase().contains(w)));
    if transport {
        anyhow::Error::new(Transient(text))
    } else {
        anyhow!(text)
    }
}

/// Whether `e` (or anything in its chain) is [`Transient`].
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Transient>())
}

/// Turns a rustls handshake error into a sentence about the cause.
fn explain_tls(text: &str, server_name: &str) -> String {
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the node's certificate is not signed by the configured CA (check `ca` in [node])".into()
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        // rustls names the names the certificate is valid for: keep them.
        let valid = text
            .split_once("certificate is only valid for")
            .map(|(_, v)| format!("; it is valid for{v}"))
            .unwrap_or_default();
        format!(
            "the node's certificate is not valid for the name {server_name:?} (check `server_name` in [node]){valid}"
        )
    } else if text.contains("Expired")
        || text.contains("NotValidYet")
        || text.contains("certificate expired")
        || text.contains("not valid before")
        || text.contains("not valid yet")
    {
        // rustls says which bound and by how much: keep that for the clocks.
        format!(
            "the node's certificate has expired or is not yet valid as this host's clock sees it \
             (check the clocks of both hosts, and renew it): {text}"
        )
    } else if text.contains("handshake eof")
        || text.contains("reset by peer")
        || text.contains("Connection reset")
    {
        "the node closed the connection before the TLS handshake finished (it may be at its connection limit, limits.max_connections, or shutting down; its log says which)".into()
    } else {
        text.to_string()
    }
}

/// Every message in an error's source chain, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// One line about a failed call: the cause, in words a user can act on.
pub fn explain_status(s: &tonic::Status) -> String {
    let detail = match s.source() {
        Some(src) => format!("{}: {}", s.message(), chain(src)),
        None => s.message().to_string(),
    };
    for (alert, what) in [
        (
            "CertificateExpired",
            "this client's certificate has expired",
        ),
        (
            "UnknownCA",
            "this client's certificate is not signed by the node's CA",
        ),
        (
            "BadCertificate",
            "the node rejected this client's certificate",
        ),
        (
            "CertificateRequired",
            "the node requires a client certificate",
        ),
        ("CertificateRevoked", "this client's certificate is revoked"),
        (
            "DecryptError",
            "the node rejected this client's certificate",
        ),
    ] {
        if detail.contains(alert) {
            return format!("{what} (TLS alert {alert}); check `cert` and `key` in [node]");
        }
    }
    use tonic::Code;
    let what = match s.code() {
        Code::Unavailable => "node unavailable",
        Code::NotFound => "not found",
        Code::InvalidArgument => "rejected by the node",
        Code::FailedPrecondition => "refused by the node",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "not authenticated",
        Code::ResourceExhausted => "node out of resources",
        Code::DataLoss => "data loss on the node",
        Code::DeadlineExceeded => "timed out",
        _ => "node error",
    };
    format!("{what}: {detail}")
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Connects, completes the TLS handshake and asks the node who we are, so
/// that a rejected certificate is reported here, not in the middle of work.
///
/// With `[node] fallback` addresses, the first node that serves the whole
/// node ("" in grpc.health.v1) is used; see [`connect_serving`].
pub async fn connect(cfg: &ConnectionConfig) -> anyhow::Result<Node> {
    connect_serving(cfg, "").await
}

/// Like [`connect`], choosing among `address` and the `fallback`
/// addresses, in order, the first node whose grpc.health.v1 status of
/// `service` (for example `refuge.v1.Ingest` for a backup) is SERVING.
/// When none serves it, the first node that can be reached is used all
/// the same, so that its own refusal (a full disk, say) is what the user
/// reads; when none can be reached, the error names each one.
pub async fn connect_serving(cfg: &ConnectionConfig, service: &str) -> anyhow::Result<Node> {
    let call_timeout = Duration::from_secs(cfg.call_timeout_secs.max(1));
    if cfg.fallback.is_empty() {
        let channel = channel(cfg).await?;
        return node_on(channel, cfg.address.clone(), call_timeout).await;
    }
    let mut reasons = Vec::new();
    let mut reachable: Option<(Channel, String)> = None;
    for address in std::iter::once(&cfg.address).chain(&cfg.fallback) {
        let one = ConnectionConfig {
            address: address.clone(),
            fallback: Vec::new(),
            ..cfg.clone()
        };
        let ch = match channel(&one).await {
            Ok(ch) => ch,
            Err(e) => {
                reasons.push(format!("{address}: {e:#}"));
                continue;
            }
        };
        match serving(ch.clone(), service, cfg.connect_timeout_secs).await {
            Ok(()) => {
                if !reasons.is_empty() {
                    tracing::warn!("using the node at {address}: {}", reasons.join("; "));
                }
                match node_on(ch, address.clone(), call_timeout).await {
                    Ok(n) => return Ok(n),
                    Err(e) => reasons.push(format!("{address}: {e:#}")),
                }
            }
            Err(why) => {
                reasons.push(format!("{address}: {why}"));
                reachable.get_or_insert((ch, address.clone()));
            }
        }
    }
    match reachable {
        Some((ch, address)) => {
            tracing::warn!(
                "no node serves {}: {}; trying {address} all the same",
                if service.is_empty() {
                    "at all"
                } else {
                    service
                },
                reasons.join("; ")
            );
            node_on(ch, address, call_timeout).await
        }
        None => Err(anyhow::Error::new(Transient(format!(
            "no node can be reached: {}",
            reasons.join("; ")
        )))),
    }
}

/// Whether the node on `ch` reports `service` SERVING (grpc.health.v1
/// Check, within `timeout_secs`); the reason when not.
async fn serving(ch: Channel, service: &str, timeout_secs: u64) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(ch);
    let check = client.check(HealthCheckRequest {
        service: service.to_string(),
    });
    match tokio::time::timeout(Duration::from_secs(timeout_secs.max(1)), check).await {
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(r)) => Err(format!(
            "{} is {}",
            if service.is_empty() {
                "the node"
            } else {
                service
            },
            ServingStatus::try_from(r.get_ref().status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN")
        )),
        Ok(Err(s)) => Err(format!("health check: {}", explain_status(&s))),
        Err(_) => Err(format!("no health answer within {timeout_secs} s")),
    }
}

/// The mutual-TLS channel to the node, without asking it anything (health
/// probes use this: they must work while the node's store is opening).
pub async fn channel(cfg: &ConnectionConfig) -> anyhow::Result<Channel> {
    let ca = read(&cfg.ca, "CA certificate")?;
    let pair = refuge_tls::CertPair {
        cert_pem: read(&cfg.cert, "client certificate")?,
        key_pem: read(&cfg.key, "client key")?,
    };
    if let Ok(t) = refuge_tls::not_after(&pair.cert_pem)
        && t < time::OffsetDateTime::now_utc()
    {
        tracing::warn!("this client's certificate expired at {t}; the node will refuse it");
    }
    let tls = refuge_tls::client_config(&ca, &pair).context("TLS configuration")?;
    let connector = TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| {
        anyhow!(
            "server_name {:?} is not a DNS name or IP address: {e}",
            cfg.server_name
        )
    })?;
    let address = cfg.address.clone();
    let sn_text = cfg.server_name.clone();
    let addr = address.clone();
    let connector_fn = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let addr = addr.clone();
        let sn_text = sn_text.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot reach the node at {addr}: {e}"))
            })?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake with the node at {addr} failed: {}",
                        explain_tls(&e.to_string(), &sn_text)
                    ),
                )
            })?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| anyhow!("node address {address:?} is not host:port: {e}"))?
        .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
        .http2_keep_alive_interval(Duration::from_secs(cfg.keepalive_secs.max(1)))
        .keep_alive_timeout(Duration::from_secs(cfg.keepalive_timeout_secs.max(1)));
    let channel = endpoint
        .connect_with_connector(connector_fn)
        .await
        .map_err(|e| {
            let text = deepest(&e);
            // A refused or cut TCP connection may come back; a failed TLS
            // handshake (wrong CA, expired) will not.
            if text.contains("TLS handshake") {
                anyhow!(text)
            } else {
                anyhow::Error::new(Transient(text))
            }
        })?;
    Ok(channel)
}

async fn node_on(
    channel: Channel,
    address: String,
    call_timeout: Duration,
) -> anyhow::Result<Node> {
    let max = refuge_proto::MAX_MESSAGE_BYTES;
    let mut plain = RestoreClient::new(channel.clone());
    let who = who_am_i(&mut plain, &address, "`cert` and `key` in [node]").await?;
    tracing::debug!(role = %who.role, name = %who.name, node_version = %who.node_version, "connected");
    let session = Session::default();
    let on = || InterceptedService::new(channel.clone(), session.clone());
    let restore = RestoreClient::new(on())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let ingest = IngestClient::new(on())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let audit = AuditClient::new(on())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminClient::new(on())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let supervision = SupervisionClient::new(on())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    Ok(Node {
        ingest,
        restore,
        audit,
        admin,
        supervision,
        session,
        second_factor: who.second_factor,
        role: who.role,
        name: who.name,
        tenants: who.tenants,
        serial: who.serial,
        tenant: who.tenant,
        host: who.host,
        site: who.site,
        address,
        call_timeout,
    })
}

/// Asks the node on `restore`'s channel who this client is (WhoAmI, which
/// every role may call): the first call on a new connection, so that a
/// certificate the node rejected is named as such. `settings` names where
/// the certificate is configured, for the message.
pub async fn who_am_i(
    restore: &mut RestoreClient<Channel>,
    address: &str,
    settings: &str,
) -> anyhow::Result<pb::WhoAmIResponse> {
    restore
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| {
            let text = explain_status(&s);
            // With TLS 1.3 the node checks our certificate after our side of
            // the handshake is done; a refusal then shows up as a closed
            // connection on the first call.
            if text.contains("connection closed") || text.contains("canceled") || text.contains("broken pipe") {
                anyhow!(
                    "the node at {address} closed the connection right after the TLS handshake: it most likely \
                     rejected this client's certificate (not signed by the node's CA, expired, or revoked); check {settings} and the node's audit log"
                )
            } else {
                // UNAVAILABLE (a node still opening its store, or going
                // away) is worth trying again.
                rpc_error("asking the node who this client is", &s)
            }
        })
        .map(|r| r.into_inner())
}

/// The innermost message of a connection error (ours, from the connector).
fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}
