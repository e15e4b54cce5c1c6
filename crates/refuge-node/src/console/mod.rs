//! The web console (`[console] listen`, docs/console.md): server-rendered
//! HTML over HTTPS for the supervision platform and DR operators. It
//! shows, per tenant, host and source, the newest snapshot, the recovery
//! point against the tenant's target (`[slo]`), the last drill, what is
//! quarantined and how far replication lags; a source's history as
//! charts; drill reports; the audit log with its chain checked; and the
//! node's storage and health. It is read-only except for starting a node
//! drill (auditor or admin), which takes the `StartDrill` path
//! (`work::drills`).
//!
//! Login is the TLS client certificate, checked on every request by
//! `policy::access` exactly as for a gRPC call (revocation, role,
//! tenants; refusals audited). The handshake asks for a certificate but
//! does not require one (`refuge_tls::console_server_config`), so that a
//! browser without one gets a page that says what is needed; a
//! certificate that is not the CA's fails the handshake. With
//! `[second_factor]`, admins and operators also sign in with a TOTP code
//! (`session`); their session ends when idle. Operators see
//! their granted tenants only (another tenant looks like one with no
//! data); auditors and admins see every tenant; only auditors read the
//! audit log, as with `ReadAudit`. Pages need no JavaScript: charts are
//! SVG drawn here (`chart`), a running drill's page refreshes itself with
//! a `<meta>` tag, and the one form carries a token tied to the
//! certificate against cross-site posts.
//!
//! - `mod.rs`: the listener (TLS handshakes off the accept loop), the
//!   router and the shared state.
//! - `routes`: the router and the headers of every answer.
//! - `pages`: the handlers: who may see what, then the catalog reads.
//! - `views`: the templates' data (askama, `templates/console/`) and the
//!   formatting of times, sizes and durations.
//! - `session`: the sign-in page and session cookie, where the node
//!   requires a second factor (`[second_factor]`).
//! - `chart`: SVG line charts.

mod chart;
mod pages;
mod routes;
mod session;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use crate::policy::audit::Outcome;
use crate::services::supervision::Supervised;

/// Longest a browser may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; more connections wait.
const MAX_HANDSHAKES: usize = 64;

/// What every page reads: what the `Supervision` service reads, and the
/// key of the forms' tokens (random per start of the node).
pub(crate) struct Console {
    pub(crate) node: Arc<Supervised>,
    /// Wiped from memory when the console stops.
    pub(crate) form_key: zeroize::Zeroizing<[u8; 32]>,
}

/// Who is on the other end of a connection: its address and the leaf of
/// the certificate chain it presented, if any.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) leaf: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (certificate: {})", self.addr, self.leaf.is_some())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Connections whose TLS handshake has finished, for `axum::serve`.
pub(crate) struct TlsListener {
    conns: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, Peer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(c) => c,
            // The accept loop ended (the node stops): wait for the
            // graceful shutdown to drop us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            leaf: None,
        })
    }
}

/// Accepts TCP connections and runs each handshake in a task of its own,
/// so that a slow or silent client holds up no one else.
async fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    console: Arc<Console>,
    done: mpsc::Sender<(TlsStream<tokio::net::TcpStream>, Peer)>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (acceptor, done, console) = (acceptor.clone(), done.clone(), console.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(c.as_ref().to_vec()));
                    let _ = done.send((tls, Peer { addr, leaf })).await;
                }
                Ok(Err(e)) => refused(&console, addr, &e.to_string()),
                Err(_) => refused(&console, addr, "TLS handshake timed out"),
            }
        });
    }
}

fn refused(console: &Console, addr: SocketAddr, why: &str) {
    console.node.access.audit.record(
        &addr.to_string(),
        "",
        "auth_failed",
        Outcome::Refused,
        &format!("console connection refused: {why}"),
    );
}

/// Serves the console on `listener` until `stop` changes.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::rustls::ServerConfig,
    console: Arc<Console>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(handshakes(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        console.clone(),
        tx,
        stop.clone(),
    ));
    info!(%local, "web console on https://{local}/ (client certificates of the CA)");
    let app = routes::router(console);
    let mut stop = stop;
    axum::serve(
        TlsListener { conns: rx, local },
        app.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.changed().await;
    })
    .await?;
    Ok(())
}
