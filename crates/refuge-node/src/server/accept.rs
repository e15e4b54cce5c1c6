//! The accept loop: TCP, then a TLS 1.3 handshake that requires a client
//! certificate signed by the configured CA, within
//! `limits.handshake_timeout_secs`. Each connection holds one of
//! `limits.max_connections` slots from accept to close, and each client
//! certificate at most `limits.max_connections_per_client`; refusals are
//! audited (once the audit log exists; before that, only logged).
//!
//! The handshake runs here, not inside tonic, so that the node controls
//! the protocol version and puts every refused handshake on the record.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::warn;

use crate::config::LimitsConfig;
use crate::policy::audit::{AuditLog, Outcome};

/// A finished TLS connection, as tonic is handed it.
pub(crate) type Conn = Limited<TlsStream<tokio::net::TcpStream>>;

/// Accepts on `listener` until `stop` changes, handing each connection
/// whose handshake succeeded to `conns`. Refusals go to the audit log in
/// `log` once it is set.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: &LimitsConfig,
    log: Arc<OnceLock<AuditLog>>,
    conns: mpsc::Sender<Result<Conn, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake_timeout = Duration::from_secs(limits.handshake_timeout_secs);
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let clients = Arc::new(ClientSlots::new(limits.max_connections_per_client));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            audit_refused(&log, peer, "too many connections (limits.max_connections)");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = conns.clone();
        let log = log.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // The handshake required a client certificate.
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| refuge_core::ChunkId::of(c.as_ref()).0)
                        .unwrap_or_default();
                    let Some(client) = clients.admit(cert) else {
                        audit_refused(
                            &log,
                            peer,
                            "too many connections from this client certificate \
                             (limits.max_connections_per_client)",
                        );
                        return;
                    };
                    let conn = Limited {
                        inner: tls,
                        _permit: permit,
                        _client: client,
                    };
                    let _ = tx.send(Ok::<_, std::io::Error>(conn)).await;
                }
                Ok(Err(e)) => audit_refused(&log, peer, &e.to_string()),
                Err(_) => audit_refused(&log, peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A connection that holds one of the node's connection slots until it is
/// dropped.
pub(crate) struct Limited<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// Open connections per client certificate (by the BLAKE3 hash of its
/// DER), at most `max` each.
struct ClientSlots {
    max: u32,
    open: std::sync::Mutex<std::collections::HashMap<[u8; 32], u32>>,
}

impl ClientSlots {
    fn new(max: u32) -> Self {
        ClientSlots {
            max,
            open: Default::default(),
        }
    }

    /// A slot for one more connection of `cert`, if it has fewer than
    /// `max`; given back when dropped.
    fn admit(self: &Arc<Self>, cert: [u8; 32]) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(cert).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            cert,
        })
    }
}

/// One connection's place in [`ClientSlots`].
struct ClientSlot {
    slots: Arc<ClientSlots>,
    cert: [u8; 32],
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.cert) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.cert);
            }
        }
    }
}

impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn audit_refused(log: &OnceLock<AuditLog>, peer: SocketAddr, why: &str) {
    let Some(log) = log.get() else {
        warn!(%peer, "connection refused before the store was open: {why}");
        return;
    };
    log.record(
        &peer.to_string(),
        "",
        "auth_failed",
        Outcome::Refused,
        &format!("connection refused: {why}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_certificate_gets_at_most_its_slots_and_gets_them_back() {
        let slots = Arc::new(ClientSlots::new(2));
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let a1 = slots.admit(a).unwrap();
        let a2 = slots.admit(a).unwrap();
        assert!(slots.admit(a).is_none());
        // Another certificate is not affected.
        let _b1 = slots.admit(b).unwrap();
        drop(a1);
        let _a3 = slots.admit(a).unwrap();
        drop(a2);
        drop(_a3);
        assert!(!slots.open.lock().unwrap().contains_key(&a));
    }
}
