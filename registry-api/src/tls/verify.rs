//! The rustls callbacks behind [`super::Tls`]'s configurations: each looks the current
//! certificate or CA up at handshake time (so a reload applies to new connections), and
//! the dialler's check of a peer follows Consul's meaning of the flags: the chain must lead
//! to the CA; the name is checked only with `--verify-server-hostname`, and then against
//! the name the link needs (`server.<dc>.<domain>`), not against the address dialled.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

use super::Tls;

/// Which name a dialled peer must carry under `--verify-server-hostname`.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A server (or gateway) of this datacenter: `server.<dc>.<domain>`.
    Server {
        /// The peer's datacenter.
        datacenter: String,
    },
    /// Any certificate signed by the CA (links where the peer's datacenter is not known,
    /// e.g. a gateway reached by address before it said which DC it serves).
    SignedByCa,
    /// A tool's view (the CLI, curl): the name dialled, or the one given
    /// (`-tls-server-name`), always checked, as any HTTPS client checks it.
    Name(Option<String>),
}

/// Our current certificate, for both sides of a handshake.
#[derive(Debug)]
pub(super) struct CurrentCert(pub(super) Arc<Tls>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().certified.clone()
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().certified.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.current().certified.is_some()
    }
}

/// Callers must show a certificate that chains to the current CA (`--verify-incoming`).
#[derive(Debug)]
pub(super) struct CurrentClientVerifier(pub(super) Arc<Tls>);

impl CurrentClientVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        self.0
            .current()
            .client_verifier
            .clone()
            .ok_or_else(|| Error::General("no CA configured".into()))
    }
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 4.2.4); sending none saves borrowing through a lock.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a dialler checks the peer: chain to the current CA, and the name `expect` asks for
/// under `--verify-server-hostname`.
#[derive(Debug)]
pub(super) struct PeerVerifier {
    /// The live configuration (current CA, settings).
    pub(super) tls: Arc<Tls>,
    /// The name the peer must carry.
    pub(super) expect: Expect,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let current = self.tls.current();
        if current.roots.is_empty() {
            return Err(Error::General("no CA configured (--ca-file)".into()));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.roots,
            intermediates,
            now,
            super::provider().signature_verification_algorithms.all,
        )?;
        match &self.expect {
            Expect::Server { datacenter } if self.tls.settings.verify_server_hostname => {
                let name = ServerName::try_from(self.tls.server_name(datacenter))
                    .map_err(|e| Error::General(e.to_string()))?;
                verify_server_name(&parsed, &name)?;
            }
            Expect::Name(Some(name)) => {
                let name = ServerName::try_from(name.as_str())
                    .map_err(|e| Error::General(e.to_string()))?;
                verify_server_name(&parsed, &name)?;
            }
            Expect::Name(None) => verify_server_name(&parsed, dialled)?,
            Expect::Server { .. } | Expect::SignedByCa => {}
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `cert` carries `name` among its DNS names (its chain was checked in the
/// handshake).
pub(super) fn names_server(cert: &CertificateDer<'_>, name: &str) -> bool {
    let (Ok(parsed), Ok(name)) = (
        ParsedCertificate::try_from(cert),
        ServerName::try_from(name.to_string()),
    ) else {
        return false;
    };
    verify_server_name(&parsed, &name).is_ok()
}
