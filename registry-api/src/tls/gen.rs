//! Making a private CA and the certificates signed by it, as `consul tls ca create` and
//! `consul tls cert create` do: the same file names, the same names in the certificates
//! (`server.<dc>.<domain>`, `client.<dc>.<domain>`, `localhost`, `127.0.0.1`), ECDSA P-256
//! keys. Pure: returns PEM text; writing files (never over an existing one) is
//! [`write_new`]'s job. Owns nothing about how certificates are checked at run time
//! (that is `tls/mod.rs`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// Consul's default lifetime of a CA: five years.
pub const DEFAULT_CA_DAYS: u32 = 1825;
/// Consul's default lifetime of a server or client certificate: one year.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8). Written with mode 0600.
    pub key: String,
}

/// Makes a self-signed CA for `domain` valid for `days` days (`consul tls ca create`).
pub fn create_ca(domain: &str, days: u32) -> Result<Pem, TlsError> {
    let key = KeyPair::generate().map_err(generation)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generation)?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("{domain} Agent CA {}", serial_hint(&key)),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(generation)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a certificate is for (`-server`, `-client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A server (and a gateway): named `server.<dc>.<domain>`, usable to serve and to dial.
    Server,
    /// A client agent (or the CLI): named `client.<dc>.<domain>`, usable to dial (and to
    /// serve its own HTTPS API).
    Client,
}

impl Role {
    /// `server` or `client`, as in file names and certificate names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// What to put in a new certificate.
pub struct CertRequest<'a> {
    /// Server or client.
    pub role: Role,
    /// The datacenter in its name.
    pub datacenter: &'a str,
    /// The domain in its name (`consul`).
    pub domain: &'a str,
    /// Extra DNS names (`-additional-dnsname`).
    pub dns_names: &'a [String],
    /// Extra IP addresses (`-additional-ipaddress`).
    pub ip_addresses: &'a [std::net::IpAddr],
    /// Validity in days.
    pub days: u32,
}

/// Makes a certificate signed by the CA (`ca_cert`, `ca_key`: PEM) for `req`
/// (`consul tls cert create`).
pub fn create_cert(ca_cert: &str, ca_key: &str, req: &CertRequest<'_>) -> Result<Pem, TlsError> {
    crate::names::check_datacenter(req.datacenter)
        .map_err(|e| TlsError::Generate(format!("-dc {:?}: {e}", req.datacenter)))?;
    let ca_key = KeyPair::from_pem(ca_key)
        .map_err(|e| TlsError::Generate(format!("the CA key is not a usable key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)
        .map_err(|e| TlsError::Generate(format!("the CA certificate cannot be read: {e}")))?;
    let name = format!("{}.{}.{}", req.role.as_str(), req.datacenter, req.domain);
    let mut sans = vec![name.clone(), "localhost".to_string()];
    sans.extend(req.dns_names.iter().cloned());
    sans.push("127.0.0.1".to_string());
    sans.extend(req.ip_addresses.iter().map(|ip| ip.to_string()));
    let mut params = CertificateParams::new(sans).map_err(generation)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Consul's server and client certificates both carry both purposes: a server dials
    // other servers, and a client agent serves its own HTTPS API.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, req.days);
    let key = KeyPair::generate().map_err(generation)?;
    let cert = params.signed_by(&key, &issuer).map_err(generation)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Consul's file names: `<domain>-agent-ca.pem` / `-key.pem`.
pub fn ca_file_names(domain: &str) -> (String, String) {
    (
        format!("{domain}-agent-ca.pem"),
        format!("{domain}-agent-ca-key.pem"),
    )
}

/// Consul's file names for the first free `<dc>-<role>-<domain>-<n>.pem` in `dir`.
pub fn cert_file_names(
    dir: &Path,
    datacenter: &str,
    role: Role,
    domain: &str,
) -> (PathBuf, PathBuf) {
    let mut n = 0u32;
    loop {
        let stem = format!("{datacenter}-{}-{domain}-{n}", role.as_str());
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        if !cert.exists() && !key.exists() {
            return (cert, key);
        }
        n += 1;
    }
}

/// Writes `pem` to `cert_path` and `key_path`, refusing to overwrite either (as Consul
/// does); the key is readable by its owner only.
pub fn write_new(pem: &Pem, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    for path in [cert_path, key_path] {
        if path.exists() {
            return Err(TlsError::Generate(format!(
                "{} already exists; not overwriting it",
                path.display()
            )));
        }
    }
    write_file(cert_path, &pem.cert, 0o644)?;
    write_file(key_path, &pem.key, 0o600)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| TlsError::Generate(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| TlsError::Generate(format!("cannot write {}: {e}", path.display())))
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    // A minute back, so that a peer whose clock is slightly behind accepts it at once.
    let now = OffsetDateTime::now_utc() - Duration::minutes(1);
    params.not_before = now;
    params.not_after = now + Duration::days(i64::from(days.max(1)));
}

/// A few hex digits of the public key, so two CAs made for the same domain differ by name.
fn serial_hint(key: &KeyPair) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn generation(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}
