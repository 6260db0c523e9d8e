//! TLS 1.3 as the security upgrade of TCP connections: libp2p's TLS handshake
//! (`/tls/1.0.0`, the libp2p TLS spec: a self-signed certificate per node whose extension
//! carries the node's identity key and its signature), with AES-GCM first where the CPU
//! has AES hardware.
//!
//! Why not Noise, libp2p's usual choice for TCP: Noise's cipher is fixed to
//! ChaCha20-Poly1305. A profile of a file push found it at about 20 % of each side's CPU,
//! the largest single entry, while our own layer's AES-256-GCM over the same bytes took
//! 3.5 %. Why not `libp2p-tls`'s upgrade as it is: it lists ChaCha20-Poly1305 first and
//! keeps its configs private, so two nodes would agree on ChaCha20 as well. Here the same
//! handshake and certificates (made and checked by `libp2p-tls`'s public certificate
//! functions) run with our own cipher order, on `rustls` with the aws-lc provider, which
//! also brings the hybrid X25519MLKEM768 key exchange to TCP connections (Noise's is
//! classical; our secure layer stays on every stream either way).
//!
//! A client without AES hardware lists ChaCha20-Poly1305 first and the server follows the
//! client's order; a server without it insists on ChaCha20-Poly1305. So AES-GCM is chosen
//! only when both ends run it in hardware, as in our secure layer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use p2pnode_secure::Cipher;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The security protocol's name in multistream-select (the libp2p TLS spec's).
pub const PROTOCOL: &str = "/tls/1.0.0";
/// The ALPN value the spec requires.
const ALPN: &[u8] = b"libp2p";

/// The TLS upgrade could not be set up, or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node's certificate could not be made from its key.
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed (the peer's certificate, its signature, or the connection).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The peer presented no certificate, or more than one.
    #[error("the peer presented {0} certificates, not one")]
    Certificates(usize),
    /// The peer's certificate is not a valid libp2p certificate.
    #[error("the peer's certificate is not a libp2p certificate: {0}")]
    BadCertificate(#[from] certificate::ParseError),
}

/// The TLS security upgrade, for `Transport::upgrade(..).authenticate(..)`.
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    /// The upgrade for `key`'s node, preferring AES-GCM when this CPU runs it in hardware.
    pub fn new(key: &Keypair) -> Result<Self, TlsError> {
        Self::with_aes(key, Cipher::aes_in_hardware())
    }

    /// The upgrade with AES-GCM preferred (`aes`) or ChaCha20-Poly1305 first (as on a CPU
    /// without AES hardware).
    pub fn with_aes(key: &Keypair, aes: bool) -> Result<Self, TlsError> {
        Self::with_suites(key, aes, Cipher::aes_gcm_faster_in_ring())
    }

    /// [`Config::with_aes`], with the cipher suites run by ring's code (`ring`) or
    /// aws-lc's. The suites and the bytes on the wire are the same; where ring's AES-GCM is
    /// the faster (see [`Cipher::aes_gcm_faster_in_ring`]) it halves the record layer's
    /// share of a bulk transfer's CPU. The key exchange (with the hybrid X25519MLKEM768)
    /// and signatures stay aws-lc's either way.
    fn with_suites(key: &Keypair, aes: bool, ring: bool) -> Result<Self, TlsError> {
        use rustls::crypto::{aws_lc_rs::cipher_suite as aws_lc, ring::cipher_suite as ring_suite};
        let (cert, private) = certificate::generate(key)?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        let [aes256, aes128, chacha] = if ring {
            [
                ring_suite::TLS13_AES_256_GCM_SHA384,
                ring_suite::TLS13_AES_128_GCM_SHA256,
                ring_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        } else {
            [
                aws_lc::TLS13_AES_256_GCM_SHA384,
                aws_lc::TLS13_AES_128_GCM_SHA256,
                aws_lc::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        };
        provider.cipher_suites = if aes {
            vec![aes256, aes128, chacha]
        } else {
            vec![chacha, aes256, aes128]
        };
        let provider = Arc::new(provider);
        let verifier = Arc::new(PeerCertificate);
        // Our certificate, given as a resolver: rustls's `with_single_cert` would check it
        // with webpki, which refuses the libp2p extension (it is marked critical).
        let signer = provider.key_provider.load_private_key(private)?;
        let ours = Arc::new(OurCertificate(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            signer,
        ))));

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(ours.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        // With AES hardware, follow the client (which lists ChaCha20 first when it has
        // none); without it, insist on our own order.
        server.ignore_client_order = !aes;
        // No session resumption: every peer has the same placeholder server name, so a
        // ticket from one peer would be offered to the next, and a connection to a peer
        // is rare enough that a full handshake costs nothing worth keeping state for.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(ours);
        client.alpn_protocols = vec![ALPN.to_vec()];
        // The spec: a client of this handshake version sends no server name.
        client.enable_sni = false;
        client.resumption = rustls::client::Resumption::disabled();

        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

/// What an upgraded connection is: the peer's id, and the encrypted stream.
pub type Output<C> = (PeerId, futures_rustls::TlsStream<C>);

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Output<C>;
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1.peer_certificates())?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Output<C>;
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // Unused (no SNI is sent, and the verifier ignores it): the peer's id is what
            // the certificate proves, and the swarm checks it against the one dialled.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1.peer_certificates())?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// Presents our certificate to every peer, client or server.
#[derive(Debug)]
struct OurCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OurCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OurCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The peer id the (already verified) certificate chain proves.
fn peer_of(certs: Option<&[CertificateDer<'_>]>) -> Result<PeerId, TlsError> {
    match certs {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        other => Err(TlsError::Certificates(other.map_or(0, <[_]>::len))),
    }
}

/// Checks a peer's certificate as the libp2p TLS spec says: exactly one, self-signed,
/// with a valid libp2p extension (the identity key's signature over the certificate's
/// key); and the handshake signed by the certificate's key. No CA and no names are
/// involved: the peer's id is the identity key, and the swarm compares it with the id it
/// dialled.
#[derive(Debug)]
struct PeerCertificate;

impl PeerCertificate {
    fn check(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a libp2p peer presents exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity)?;
        Ok(())
    }

    fn signed(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)?.verify_signature(dss.scheme, message, dss.signature())?;
        Ok(HandshakeSignatureValid::assertion())
    }

    /// The schemes a libp2p certificate's key may use (what `P2pCertificate` verifies).
    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }

    fn no_tls12() -> rustls::Error {
        rustls::Error::General("TLS 1.2 is not allowed".into())
    }
}

impl ServerCertVerifier for PeerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signed(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signed(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::tcp::tokio::TcpStream;
    use rustls::CipherSuite;

    use super::*;

    /// A connected pair of TCP sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (TcpStream(dialled.unwrap()), TcpStream(accepted.unwrap().0))
    }

    /// Runs a handshake between `client` and `server`: each side's view of the other's
    /// id and the cipher suite, after one message each way.
    async fn handshake<U, V>(client: U, server: V) -> ((PeerId, CipherSuite), (PeerId, CipherSuite))
    where
        U: OutboundConnectionUpgrade<TcpStream, Output = Output<TcpStream>>,
        U::Error: std::fmt::Debug,
        V: InboundConnectionUpgrade<TcpStream, Output = Output<TcpStream>>,
        V::Error: std::fmt::Debug,
    {
        let (a, b) = pair().await;
        let (ci, si) = (client.protocol_info(), server.protocol_info());
        let (ci, si) = (
            ci.into_iter().next().unwrap(),
            si.into_iter().next().unwrap(),
        );
        assert_eq!(ci.as_ref(), PROTOCOL);
        assert_eq!(si.as_ref(), PROTOCOL);
        let (out, inb) = tokio::join!(
            client.upgrade_outbound(a, ci),
            server.upgrade_inbound(b, si)
        );
        let (server_id, mut c) = out.unwrap();
        let (client_id, mut s) = inb.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // An answer too, so the client also reads what the server sent after the
        // handshake (where session tickets would be).
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let suite = |t: &futures_rustls::TlsStream<TcpStream>| {
            t.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        };
        let (cs, ss) = (suite(&c), suite(&s));
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(ALPN));
        // The hybrid post-quantum key exchange, on both implementations.
        let group = c
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .unwrap()
            .name();
        assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
        // Every handshake is a full one: no session is resumed (see `Config::with_aes`).
        let kind = c.get_ref().1.handshake_kind();
        assert_eq!(kind, Some(rustls::HandshakeKind::Full));
        ((server_id, cs), (client_id, ss))
    }

    #[tokio::test]
    async fn both_ends_learn_the_others_id_and_agree_on_aes_when_both_have_it() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let client = Config::with_aes(&k1, true).unwrap();
        let server = Config::with_aes(&k2, true).unwrap();
        let ((server_id, cs), (client_id, ss)) = handshake(client, server).await;
        assert_eq!(server_id, k2.public().to_peer_id());
        assert_eq!(client_id, k1.public().to_peer_id());
        assert_eq!(cs, CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(ss, cs);
        // Again between the same two: still a full handshake (checked in `handshake`).
        let client = Config::with_aes(&k1, true).unwrap();
        let server = Config::with_aes(&k2, true).unwrap();
        let again = (client.clone(), server.clone());
        handshake(client, server).await;
        handshake(again.0, again.1).await;
    }

    /// Either library may run the suites at either end: the choice is local to each CPU.
    #[tokio::test]
    async fn ring_and_aws_lc_suites_talk_to_each_other() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for (client_ring, server_ring) in [(true, true), (true, false), (false, true)] {
            for aes in [true, false] {
                let client = Config::with_suites(&k1, aes, client_ring).unwrap();
                let server = Config::with_suites(&k2, aes, server_ring).unwrap();
                let ((server_id, cs), (client_id, ss)) = handshake(client, server).await;
                assert_eq!(server_id, k2.public().to_peer_id());
                assert_eq!(client_id, k1.public().to_peer_id());
                let expected = if aes {
                    CipherSuite::TLS13_AES_256_GCM_SHA384
                } else {
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                };
                assert_eq!(
                    (cs, ss),
                    (expected, expected),
                    "{client_ring} {server_ring}"
                );
            }
        }
    }

    #[tokio::test]
    async fn chacha20_when_either_end_lacks_aes_hardware() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for (client_aes, server_aes) in [(false, true), (true, false), (false, false)] {
            let client = Config::with_aes(&k1, client_aes).unwrap();
            let server = Config::with_aes(&k2, server_aes).unwrap();
            let ((_, cs), (_, ss)) = handshake(client, server).await;
            assert_eq!(
                cs,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                "{client_aes} {server_aes}"
            );
            assert_eq!(ss, cs);
        }
    }

    /// The handshake is libp2p's: libp2p-tls's own upgrade talks to ours either way round
    /// (it prefers ChaCha20-Poly1305, and gets it as a client).
    #[tokio::test]
    async fn interoperates_with_libp2p_tls() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let theirs = libp2p::tls::Config::new(&k1).unwrap();
        let ours = Config::with_aes(&k2, true).unwrap();
        let ((server_id, cs), (client_id, _)) = handshake(theirs.clone(), ours.clone()).await;
        assert_eq!(server_id, k2.public().to_peer_id());
        assert_eq!(client_id, k1.public().to_peer_id());
        assert_eq!(cs, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);

        let ((server_id, cs), (client_id, _)) = handshake(ours, theirs).await;
        assert_eq!(server_id, k1.public().to_peer_id());
        assert_eq!(client_id, k2.public().to_peer_id());
        assert_eq!(cs, CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    /// A peer whose certificate does not verify (here: its self-signature, one byte
    /// changed) is refused, though it holds the certificate's key and signs the handshake.
    #[tokio::test]
    async fn a_certificate_that_does_not_verify_is_refused() {
        let (cert, private) = certificate::generate(&Keypair::generate_ed25519()).unwrap();
        let mut bytes = cert.as_ref().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        let forged = CertificateDer::from(bytes);
        assert!(certificate::parse(&forged).is_err());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signer = provider.key_provider.load_private_key(private).unwrap();

        let server = Config::with_aes(&Keypair::generate_ed25519(), true).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCertificate))
            .with_client_cert_resolver(Arc::new(OurCertificate(Arc::new(
                rustls::sign::CertifiedKey::new(vec![forged], signer),
            ))));
        client.alpn_protocols = vec![ALPN.to_vec()];
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (a, b) = pair().await;
        let connector = futures_rustls::TlsConnector::from(Arc::new(client));
        let (_out, inb) = tokio::join!(
            connector.connect(name, a),
            server.upgrade_inbound(b, PROTOCOL)
        );
        assert!(
            matches!(inb, Err(TlsError::Handshake(_))),
            "the server took a certificate that does not verify"
        );
    }

    #[test]
    fn no_certificate_or_several_give_an_error_not_a_panic() {
        assert!(matches!(peer_of(None), Err(TlsError::Certificates(0))));
        let (cert, _) = certificate::generate(&Keypair::generate_ed25519()).unwrap();
        let two = [cert.clone(), cert];
        assert!(matches!(
            peer_of(Some(&two)),
            Err(TlsError::Certificates(2))
        ));
    }
}
