//! TLS for every link (issue [11]), with Consul's settings and meanings: `--ca-file`,
//! `--cert-file`, `--key-file`, `--verify-incoming`, `--verify-outgoing`,
//! `--verify-server-hostname`. One place makes every security choice (which CA, whether a
//! peer must show a certificate, which name a server must carry), as rustls' builders
//! intend, and every listener and HTTP client of the three binaries takes its rustls
//! configuration from here.
//!
//! The files are read at start ([`Tls::load`], which refuses anything doubtful: a missing
//! file, a key that is not the certificate's, an expired certificate, verification asked
//! for without a CA) and again on `SIGHUP` ([`Tls::reload`]): the configurations built here
//! look the current certificate and CA up on every handshake, so a reload changes what new
//! connections use while existing ones finish on the old.
//!
//! Also the one way to build an HTTP client ([`client_builder`]): reqwest is built with
//! rustls and no crypto provider of its own, so every client must be made here (clippy's
//! `disallowed-methods` in `clippy.toml` keeps it so).
//!
//! Must not know about ports or routes: callers decide which link gets which configuration.

#[cfg(feature = "serve")]
pub mod flags;
pub mod gen;
mod verify;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use verify::Expect;

/// Consul's default domain, part of every certificate name (`server.dc1.consul`).
pub const DEFAULT_DOMAIN: &str = "consul";

/// What went wrong with TLS settings or files; the text is shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A combination of settings that cannot work.
    #[error("{0}")]
    Settings(String),
    /// A file that cannot be used, with its path in the text.
    #[error("{0}")]
    File(String),
    /// Making a CA or a certificate failed.
    #[error("{0}")]
    Generate(String),
}

/// The TLS settings, as given (Consul's names).
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// PEM file with the CA certificate(s) peers' certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM file with this process's certificate (and any intermediates after it).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Callers of the RPC port, the HTTPS port and a gateway must use TLS and show a
    /// certificate signed by the CA.
    pub verify_incoming: bool,
    /// This process dials servers and gateways over TLS and checks their certificate
    /// against the CA.
    pub verify_outgoing: bool,
    /// A server dialled (or a server calling another's RPC port) must show a certificate
    /// named `server.<dc>.<domain>`, so that an agent's certificate cannot pose as a server.
    /// Implies `verify_outgoing`.
    pub verify_server_hostname: bool,
    /// The domain in certificate names.
    pub domain: String,
}

impl TlsSettings {
    /// Whether any TLS file was given.
    pub fn is_configured(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Whether this process dials over TLS.
    pub fn dials_tls(&self) -> bool {
        self.verify_outgoing || self.verify_server_hostname
    }

    /// Checks the combination of settings (not the files), with Consul's rules.
    pub fn validate(&self, needs_certificate_to_serve: bool) -> Result<(), TlsError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(TlsError::Settings(
                "--cert-file and --key-file go together: give both or neither".into(),
            ));
        }
        if (self.verify_incoming || self.dials_tls()) && self.ca_file.is_none() {
            return Err(TlsError::Settings(
                "--verify-incoming, --verify-outgoing and --verify-server-hostname need --ca-file \
                 (the CA that peers' certificates must be signed by)"
                    .into(),
            ));
        }
        if self.verify_incoming && self.cert_file.is_none() {
            return Err(TlsError::Settings(
                "--verify-incoming needs --cert-file and --key-file (this process serves TLS)"
                    .into(),
            ));
        }
        if needs_certificate_to_serve && self.cert_file.is_none() {
            return Err(TlsError::Settings(
                "--https-addr needs --cert-file and --key-file".into(),
            ));
        }
        Ok(())
    }
}

/// What one reading of the files gave.
#[derive(Debug)]
struct Material {
    /// The CA (empty without `--ca-file`).
    roots: Arc<RootCertStore>,
    /// Our certificate and key, if given.
    certified: Option<Arc<CertifiedKey>>,
    /// Verifies callers' certificates against `roots` (present only with a CA).
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// Certificates read for a reload and not installed yet ([`Tls::prepare_reload`]).
#[derive(Debug)]
pub struct PreparedReload(Material);

/// The live TLS configuration of one process: the settings and what the files hold now.
#[derive(Debug)]
pub struct Tls {
    /// The settings, fixed for the process's life.
    settings: TlsSettings,
    /// The current files' contents, swapped whole by [`Tls::reload`]. A std lock: held
    /// only to clone an `Arc`, never across an `.await`.
    current: RwLock<Arc<Material>>,
}

/// The one crypto provider (ring: aws-lc-rs would need cmake and a long C build), made
/// once: handshakes ask for it several times.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

impl Tls {
    /// Reads and checks the files named by `settings`. `None` when no TLS file is given
    /// (and no TLS setting asks for one).
    pub fn load(settings: TlsSettings, serves_https: bool) -> Result<Option<Arc<Tls>>, TlsError> {
        settings.validate(serves_https)?;
        if !settings.is_configured() {
            return Ok(None);
        }
        let material = read_material(&settings)?;
        Ok(Some(Arc::new(Tls {
            settings,
            current: RwLock::new(Arc::new(material)),
        })))
    }

    /// Reads the files again; on any error the running configuration stays as it was.
    /// New connections use the new certificate and CA; existing ones are not touched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let prepared = self.prepare_reload()?;
        self.install(prepared);
        Ok(())
    }

    /// The first half of [`Tls::reload`]: the files read and checked, nothing changed yet
    /// (so a reload of several things can check them all before changing any).
    pub fn prepare_reload(&self) -> Result<PreparedReload, TlsError> {
        Ok(PreparedReload(read_material(&self.settings)?))
    }

    /// The second half: new handshakes use what [`Tls::prepare_reload`] read.
    pub fn install(&self, prepared: PreparedReload) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(prepared.0);
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration of a TLS listener (the HTTPS API, the RPC port, a gateway):
    /// our certificate, and with `--verify-incoming` a certificate from every caller.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = if self.settings.verify_incoming {
            builder.with_client_cert_verifier(Arc::new(verify::CurrentClientVerifier(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(verify::CurrentCert(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration for dialling a peer: its certificate must chain to the CA and,
    /// with `--verify-server-hostname`, carry the name `expect` asks for; ours is shown
    /// when we have one (mutual TLS).
    pub fn client_config(
        self: &Arc<Self>,
        expect: Expect,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::PeerVerifier {
                tls: self.clone(),
                expect,
            }))
            .with_client_cert_resolver(Arc::new(verify::CurrentCert(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// `server.<dc>.<domain>`: the name a server of `datacenter` carries.
    pub fn server_name(&self, datacenter: &str) -> String {
        format!("server.{datacenter}.{}", self.domain())
    }

    fn domain(&self) -> &str {
        if self.settings.domain.is_empty() {
            DEFAULT_DOMAIN
        } else {
            &self.settings.domain
        }
    }

    /// Whether a peer's certificate chain (as a TLS listener saw it) names a server of
    /// `datacenter`. Always true without `--verify-server-hostname`; with it, the check
    /// that keeps an agent's certificate from speaking Raft.
    pub fn peer_is_server(&self, peer: Option<&[CertificateDer<'_>]>, datacenter: &str) -> bool {
        if !self.settings.verify_server_hostname {
            return true;
        }
        let Some(end_entity) = peer.and_then(|c| c.first()) else {
            return false;
        };
        verify::names_server(end_entity, &self.server_name(datacenter))
    }
}

/// Reads and checks every file `settings` names.
fn read_material(settings: &TlsSettings) -> Result<Material, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &settings.ca_file {
        let certs = read_certs(path)?;
        for cert in &certs {
            check_validity(path, cert)?;
        }
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::File(format!(
                "--ca-file {}: no usable CA certificate in it",
                path.display()
            )));
        }
    }
    let roots = Arc::new(roots);
    let certified = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs(cert_path)?;
            if let Some(leaf) = chain.first() {
                check_validity(cert_path, leaf)?;
            }
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                TlsError::File(format!(
                    "--key-file {}: no private key could be read: {e}",
                    key_path.display()
                ))
            })?;
            let signing = provider().key_provider.load_private_key(key).map_err(|e| {
                TlsError::File(format!(
                    "--key-file {}: unusable private key: {e}",
                    key_path.display()
                ))
            })?;
            let certified = CertifiedKey::new(chain, signing);
            certified.keys_match().map_err(|_| {
                TlsError::File(format!(
                    "--key-file {} is not the key of --cert-file {}",
                    key_path.display(),
                    cert_path.display()
                ))
            })?;
            Some(Arc::new(certified))
        }
        _ => None,
    };
    let client_verifier = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::File(format!("--ca-file: {e}")))?,
        )
    };
    Ok(Material {
        roots,
        certified,
        client_verifier,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsError::File(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::File(format!(
            "{}: holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Refuses a certificate that has expired or is not valid yet, naming the dates: rustls
/// would only say "expired" at the first handshake, long after start.
fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        TlsError::File(format!("{}: not an X.509 certificate: {e}", path.display()))
    })?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(TlsError::File(format!(
            "{}: certificate {:?} expired on {}",
            path.display(),
            parsed.subject().to_string(),
            validity.not_after
        )));
    }
    if now < validity.not_before {
        return Err(TlsError::File(format!(
            "{}: certificate {:?} is not valid before {}",
            path.display(),
            parsed.subject().to_string(),
            validity.not_before
        )));
    }
    Ok(())
}

/// The one way to start an HTTP client: with `tls`, requests to `https://` URLs use it
/// (checking the peer as `expect` says, showing our certificate); without it they use the
/// system's roots. `http://` URLs work either way.
pub fn client_builder(tls: Option<(&Arc<Tls>, Expect)>) -> reqwest::ClientBuilder {
    // reqwest asks rustls for the process's default provider when it makes its own
    // configuration; installing it twice is harmless.
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    #[allow(clippy::disallowed_methods)]
    let builder = reqwest::Client::builder();
    // Names through the pure-Rust resolver (crate::resolve): the static binaries' glibc cannot.
    #[cfg(feature = "resolve")]
    let builder = builder.dns_resolver(Arc::new(crate::resolve::HttpResolver));
    let config = match tls.map(|(tls, expect)| tls.client_config(expect)) {
        Some(Ok(config)) => Some(config),
        // Only an impossible protocol-version set fails; reqwest then reports its own error.
        Some(Err(_)) => None,
        None => system_roots_config(),
    };
    match config {
        Some(config) => builder.tls_backend_preconfigured(config),
        None => builder,
    }
}

/// The configuration of a client without our TLS: the system's roots, read once per
/// process. reqwest would read and parse the whole system bundle again for every client
/// it builds (tens of milliseconds), and tests and tools build many.
fn system_roots_config() -> Option<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Option<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let verifier = rustls_platform_verifier::Verifier::new(provider()).ok()?;
            let mut config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .ok()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(config)
        })
        .clone()
}

/// A client with no TLS of ours and default settings (tests, the CLI without TLS flags).
pub fn plain_client() -> reqwest::Client {
    client_builder(None).build().unwrap_or_default()
}

/// The DNS names a certificate carries (for logs and tests; empty if it cannot be read).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// The name the TLS library checks when we dial `host`: any valid DNS name or IP will
/// do, since [`verify::PeerVerifier`] checks the name `expect` gives instead.
pub fn dial_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

#[cfg(test)]
mod tests;
