//! TLS on the gRPC port (rustls), with certificates reloaded from their files
//! without a restart, and optional client-certificate verification (mTLS).
//! Every connection, TLS or not, reaches the services as a [`Connection`] whose
//! Each connection's [`PeerInfo`] (defined by the API, which reads it) says who
//! is on the other end.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::peer::PeerInfo;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet handed to the server.
const ACCEPT_QUEUE: usize = 1024;
/// TLS handshakes in progress at once, in all and from one address; connections
/// beyond are closed at once rather than queued, so that idle sockets that never
/// finish a handshake cannot hold the port for everyone else.
const MAX_HANDSHAKES: usize = 512;
const MAX_HANDSHAKES_PER_PEER: usize = 32;

/// Handshake slots, in all and per peer address.
#[derive(Default)]
struct HandshakeSlots {
    per_peer: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One handshake in progress; its slot is freed on drop.
struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    peer: std::net::IpAddr,
}

impl HandshakeSlots {
    fn take(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut per_peer = self.per_peer.lock().expect("lock poisoned");
        let total: usize = per_peer.values().sum();
        let mine = per_peer.entry(peer).or_insert(0);
        if total >= MAX_HANDSHAKES || *mine >= MAX_HANDSHAKES_PER_PEER {
            if *mine == 0 {
                per_peer.remove(&peer);
            }
            return None;
        }
        *mine += 1;
        Some(HandshakeSlot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut per_peer = self.slots.per_peer.lock().expect("lock poisoned");
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// Whether clients must present a certificate signed by `client_ca_file`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Verified if presented; callers without one authenticate otherwise.
    #[default]
    Optional,
    /// Every connection must present a valid client certificate.
    Required,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that client certificates must chain to; `None`: no mTLS.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// The files' bytes, to notice when any of them changes (Kubernetes swaps a
/// Secret's files through a symlink, so modification times are not reliable).
fn read_files(settings: &TlsSettings) -> Result<Vec<Vec<u8>>, String> {
    let mut paths: Vec<&Path> = vec![&settings.cert_file, &settings.key_file];
    paths.extend(settings.client_ca_file.as_deref());
    paths
        .into_iter()
        .map(|path| {
            std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
        })
        .collect()
}

fn server_config(settings: &TlsSettings, files: &[Vec<u8>]) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{}: {err}", settings.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in it",
            settings.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|err| {
        format!(
            "{}: no private key in it ({err})",
            settings.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&files[2]) {
                let cert = cert.map_err(|err| format!("{}: {err}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("{}: {err}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no CA certificate in it", path.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|err| err.to_string())?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        format!(
            "{} and {}: {err}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's TLS configuration, replaced whenever its files change.
pub struct TlsReloader {
    settings: TlsSettings,
    current: RwLock<(Vec<Vec<u8>>, Arc<ServerConfig>)>,
}

impl TlsReloader {
    /// Loads the files now: a bad certificate or key is an error at start.
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsReloader>, String> {
        let files = read_files(&settings)?;
        let config = server_config(&settings, &files)?;
        Ok(Arc::new(TlsReloader {
            settings,
            current: RwLock::new((files, Arc::new(config))),
        }))
    }

    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.read().expect("lock poisoned").1.clone()
    }

    /// Re-reads the files; installs a new configuration if they changed and are
    /// valid, keeps the old one (and says why) if not. True if reloaded.
    pub fn reload(&self) -> bool {
        let files = match read_files(&self.settings) {
            Ok(files) => files,
            Err(err) => {
                tracing::error!(error = %err, "TLS files unreadable; keeping the loaded certificate");
                return false;
            }
        };
        if self.current.read().expect("lock poisoned").0 == files {
            return false;
        }
        match server_config(&self.settings, &files) {
            Ok(config) => {
                *self.current.write().expect("lock poisoned") = (files, Arc::new(config));
                tracing::info!("TLS certificate reloaded");
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "new TLS files are invalid; keeping the loaded certificate");
                false
            }
        }
    }

    /// Checks the files every `reload_interval`, for as long as it runs.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let reloader = self.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    }
}

/// A plaintext or TLS connection.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Connection::Plain(stream) => PeerInfo::new(stream.peer_addr().ok(), None),
            Connection::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                let certs = session
                    .peer_certificates()
                    .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
                PeerInfo::new(tcp.peer_addr().ok(), certs)
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` (with TLS when `tls` is set) and yields connections
/// ready for HTTP/2. A failed handshake drops that connection only.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
) -> (
    ReceiverStream<io::Result<Connection>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let handshakes = Arc::new(HandshakeSlots::default());
    let acceptor = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match &tls {
                None => {
                    if tx.send(Ok(Connection::Plain(stream))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.config());
                    let tx = tx.clone();
                    let peer = stream
                        .peer_addr()
                        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |addr| {
                            addr.ip().to_canonical()
                        });
                    let Some(slot) = handshakes.take(peer) else {
                        tracing::debug!(%peer, "too many TLS handshakes in flight; connection closed");
                        continue;
                    };
                    tokio::spawn(async move {
                        let _slot = slot;
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(Connection::Tls(Box::new(stream)))).await;
                            }
                            Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    (ReceiverStream::new(rx), acceptor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_capped_per_peer_and_slots_come_back() {
        let slots = Arc::new(HandshakeSlots::default());
        let one = std::net::IpAddr::from([10, 0, 0, 1]);
        let other = std::net::IpAddr::from([10, 0, 0, 2]);
        let mut held: Vec<HandshakeSlot> = (0..MAX_HANDSHAKES_PER_PEER)
            .map(|_| slots.take(one).expect("a slot"))
            .collect();
        assert!(slots.take(one).is_none(), "one peer cannot take them all");
        assert!(slots.take(other).is_some(), "another peer still can");
        held.pop();
        assert!(
            slots.take(one).is_some(),
            "a finished handshake frees its slot"
        );
        drop(held);
        assert!(
            slots.per_peer.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }
}
