//! A private CA for TLS tests: certificates made by `registry_api::tls::gen` (the code
//! behind `tls ca create` / `tls cert create`) in a temp dir, and the settings that load them.

use registry_api::tls::gen::{self, CertRequest, Role};
use registry_api::tls::{Tls, TlsSettings};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA in a temp dir, and what it signed.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: gen::Pem,
}

/// A certificate and key written by [`TestPki::cert`].
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate's PEM file.
    pub cert: PathBuf,
    /// Its key's PEM file.
    pub key: PathBuf,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A new CA (domain `consul`).
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = gen::create_ca("consul", 30).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert).expect("write CA");
        TestPki { dir, ca }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA's private key (PEM), to sign more certificates in a test.
    pub fn ca_key_pem(&self) -> String {
        self.ca.key.clone()
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new certificate for `role` in `dc` (names as Consul's: `server.<dc>.consul`,
    /// `localhost`, `127.0.0.1`).
    pub fn cert(&self, role: Role, dc: &str) -> CertFiles {
        let pem = gen::create_cert(
            &self.ca.cert,
            &self.ca.key,
            &CertRequest {
                role,
                datacenter: dc,
                domain: "consul",
                dns_names: &[],
                ip_addresses: &[],
                days: 30,
            },
        )
        .expect("certificate");
        let (cert, key) = gen::cert_file_names(self.dir.path(), dc, role, "consul");
        gen::write_new(&pem, &cert, &key).expect("write certificate");
        CertFiles { cert, key }
    }

    /// Settings with everything verified (`--verify-incoming --verify-outgoing
    /// --verify-server-hostname`) for `files`.
    pub fn strict(&self, files: &CertFiles) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.ca_file()),
            cert_file: Some(files.cert.clone()),
            key_file: Some(files.key.clone()),
            verify_incoming: true,
            verify_outgoing: true,
            verify_server_hostname: true,
            domain: "consul".into(),
        }
    }

    /// [`TestPki::strict`], loaded.
    pub fn load_strict(&self, files: &CertFiles) -> Arc<Tls> {
        load(self.strict(files))
    }
}

/// Loads settings that must be good.
pub fn load(settings: TlsSettings) -> Arc<Tls> {
    Tls::load(settings, false)
        .expect("TLS settings")
        .expect("TLS configured")
}
