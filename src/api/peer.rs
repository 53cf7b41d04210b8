//! Who is on the other end of a call: what the transport tells the API in every
//! request's extensions. `serve::tls` fills it in; the API reads it.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

/// Who is on the other end of a connection: in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Canonical: an IPv4 client of a dual-stack (`[::]`) listener is its IPv4
    /// address, not `::ffff:a.b.c.d`, for every budget, allowlist and record.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, verified against the client CA bundle.
    pub client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl PeerInfo {
    /// The peer at `remote_addr` (made canonical), with the certificate chain
    /// it presented, verified.
    pub fn new(
        remote_addr: Option<SocketAddr>,
        client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> PeerInfo {
        PeerInfo {
            remote_addr: remote_addr.map(canonical),
            client_certs,
        }
    }

    /// Whether the verified client certificate names exactly `dns_name` among its
    /// DNS subject alternative names. An identity, not a host name: a wildcard
    /// (`*.svc`) does not stand for a trusted caller's name.
    pub fn client_cert_names(&self, dns_name: &str) -> bool {
        let Some(leaf) = self.client_certs.as_ref().and_then(|chain| chain.first()) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| {
            cert.valid_dns_names()
                .any(|name| name.eq_ignore_ascii_case(dns_name))
        })
    }
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
