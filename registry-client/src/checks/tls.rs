//! TLS for HTTPS checks and gRPC with `GRPCUseTLS`: one place that decides which
//! certificates a check trusts.
//!
//! rustls with the `ring` provider, built here rather than through reqwest: reqwest 0.13
//! offers rustls only with aws-lc-rs or with no provider at all, and the no-provider feature
//! would make every reqwest client in the workspace panic at build time unless a process-wide
//! provider were installed first.
//!
//! Owns: the client configuration and the `TLSSkipVerify` verifier. Must not touch: the
//! protocols on top (HTTP, gRPC).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// A rustls client configuration on the `ring` provider: the platform's trust store, or
/// with `skip_verify` (Consul's `TLSSkipVerify`) any certificate.
pub(super) fn tls_client_config(
    skip_verify: bool,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if skip_verify {
        Arc::new(AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        })
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| format!("TLS setup: {e}"))?,
        )
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// `TLSSkipVerify`: trusts any certificate chain and name, but still checks the handshake
/// signatures, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServerCert {
    /// The provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
