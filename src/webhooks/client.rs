//! The HTTP/1.1 client that posts webhooks: one kept-alive connection per
//! endpoint, every attempt bounded by the endpoint's timeout, redirects never
//! followed (a 3xx is a failed attempt), response bodies read to 64 KiB and
//! dropped. Errors name what failed, never the URL's query or a header value.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::config::Endpoint;

const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const USER_AGENT: &str = concat!("patd-webhooks/", env!("CARGO_PKG_VERSION"));

/// Where an endpoint's requests go.
pub struct Target {
    host: String,
    port: u16,
    path_and_query: String,
    authority: String,
    /// `Some` for https.
    tls: Option<Arc<ClientConfig>>,
    /// scheme://authority/path, the query left out: what logs may show.
    shown: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// A URL as logs may show it: without its query (which may hold a key)
    /// or user info (a password).
    pub fn redact_text(url: &str) -> String {
        let base = url.split_once('?').map_or(url, |(base, _)| base);
        // Everything up to the last '@' may be user info (a password may hold
        // '/'): it is cut, at worst with part of a path that held an '@'.
        let base = match (base.split_once("://"), base.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://(redacted)@{}", &base[at + 1..]),
            _ => base.to_owned(),
        };
        if url.contains('?') {
            format!("{base}?(redacted)")
        } else {
            base
        }
    }

    /// Checks `url` (http or https, a host, no user info) and, for https,
    /// builds the TLS client: the system's roots plus `ca_file`.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Target, String> {
        let shown = Target::redact_text(url);
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("url {shown:?} is not a valid URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("url {shown:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url {shown:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "url {shown:?} holds credentials: put them in `headers` instead"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(Arc::new(tls_config(ca_file)?))
        } else if ca_file.is_some() {
            return Err("ca_file is only for https URLs".to_owned());
        } else {
            None
        };
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_owned(), |path| path.as_str().to_owned());
        Ok(Target {
            host: host.to_owned(),
            port,
            path_and_query,
            authority: authority.as_str().to_owned(),
            tls,
            shown: Target::redact_text(&format!(
                "{}://{}{}",
                if https { "https" } else { "http" },
                authority,
                uri.path()
            )),
        })
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: a ca_file may be all there is.
    let system = rustls_native_certs::load_native_certs();
    for cert in system.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|err| format!("ca_file {}: {err}", path.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|err| format!("ca_file {}: {err}", path.display()))?;
            roots
                .add(cert)
                .map_err(|err| format!("ca_file {}: {err}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates to verify an https receiver: set ca_file".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Posts to one endpoint, reusing its connection while the receiver keeps it.
pub struct Sender {
    endpoint: Arc<Endpoint>,
    connection: Option<Connection>,
}

impl Sender {
    pub fn new(endpoint: Arc<Endpoint>) -> Sender {
        Sender {
            endpoint,
            connection: None,
        }
    }

    /// Posts `body` as message `id` at `timestamp` (Unix seconds), signed:
    /// the response's status, or why there is none.
    pub async fn post(&mut self, id: &str, timestamp: i64, body: &str) -> Result<u16, String> {
        let timeout = self.endpoint.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let reused = self.connection.as_ref().is_some_and(|c| !c.is_closed());
        let mut result =
            tokio::time::timeout_at(deadline, self.try_post(id, timestamp, body)).await;
        // A kept-alive connection the receiver closed meanwhile fails before
        // any answer: that is no failed attempt, so a fresh one is tried.
        if reused && matches!(result, Ok(Err(_))) {
            self.connection = None;
            result = tokio::time::timeout_at(deadline, self.try_post(id, timestamp, body)).await;
        }
        match result {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(err)) => {
                self.connection = None;
                Err(err)
            }
            Err(_) => {
                self.connection = None;
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            }
        }
    }

    async fn try_post(&mut self, id: &str, timestamp: i64, body: &str) -> Result<u16, String> {
        let endpoint = &self.endpoint;
        let mut connection = match self.connection.take() {
            Some(connection) if !connection.is_closed() => connection,
            _ => connect(&endpoint.target).await?,
        };
        connection
            .ready()
            .await
            .map_err(|err| format!("connection: {err}"))?;
        let signature = endpoint.secret.sign(id, timestamp, body.as_bytes());
        let mut request = http::Request::post(&endpoint.target.path_and_query)
            .header(http::header::HOST, &endpoint.target.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|err| format!("request: {err}"))?;
        for (name, value) in &endpoint.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = connection
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        let status = response.status().as_u16();
        // The body is read (so the connection can be reused) but never kept.
        match Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
        {
            Ok(_) => self.connection = Some(connection),
            Err(_) => self.connection = None,
        }
        Ok(status)
    }
}

async fn connect(target: &Target) -> Result<Connection, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Pin<Box<dyn Io>> = match &target.tls {
        None => Box::pin(tcp),
        Some(config) => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| "tls: the host is not a valid server name".to_owned())?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|err| format!("tls: {err}"))?;
            Box::pin(tls)
        }
    };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    // Ends when the sender is dropped or the receiver closes the connection.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// How long to wait before retry number `failures` (1 for the first): the
/// delay doubles from `initial` up to `max`, and a random part of it (up to
/// half) is left out, so that many failed deliveries do not retry in step.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let delay = doubled.min(max);
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
    delay.mul_f64(1.0 - fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let initial = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        for (failures, full) in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)] {
            let delay = backoff(failures, initial, max);
            let full = Duration::from_secs(full);
            assert!(delay <= full && delay >= full / 2, "{failures}: {delay:?}");
        }
    }

    #[test]
    fn urls_are_checked_and_shown_without_their_query() {
        let target = Target::parse("http://127.0.0.1:9/hook?key=s3cret", None).unwrap();
        assert_eq!(target.to_string(), "http://127.0.0.1:9/hook");
        assert_eq!(target.path_and_query, "/hook?key=s3cret");
        for bad in ["ftp://x/", "not a url", "http://user:pw@host/", "/relative"] {
            let err = Target::parse(bad, None).err().unwrap();
            assert!(!err.contains("pw") && !err.contains("p/w"), "{err}");
        }
    }
}
