//! The TLS settings and checks, on real certificates made by `gen` and real handshakes
//! over an in-memory pipe.

use super::gen::{self, CertRequest, Role};
use super::*;
use std::path::Path;

/// A CA and the certificates of a test, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: gen::Pem,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: gen::create_ca("consul", 30).unwrap(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        if !path.exists() {
            std::fs::write(&path, &self.ca.cert).unwrap();
        }
        path
    }

    /// Writes a certificate for `role` in `dc`; returns (cert, key) paths.
    fn cert(&self, role: Role, dc: &str) -> (PathBuf, PathBuf) {
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
        .unwrap();
        let (cert, key) = gen::cert_file_names(self.dir.path(), dc, role, "consul");
        gen::write_new(&pem, &cert, &key).unwrap();
        (cert, key)
    }

    fn settings(&self, (cert, key): (PathBuf, PathBuf)) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.ca_file()),
            cert_file: Some(cert),
            key_file: Some(key),
            verify_incoming: true,
            verify_outgoing: true,
            verify_server_hostname: true,
            domain: "consul".into(),
        }
    }
}

fn load(settings: TlsSettings) -> Arc<Tls> {
    Tls::load(settings, false).unwrap().unwrap()
}

fn load_err(settings: TlsSettings) -> String {
    Tls::load(settings, false).unwrap_err().to_string()
}

/// Runs one handshake: `client` dials `server` expecting `expect`. Returns the server's
/// view of the client's certificates on success, the error text on failure.
async fn handshake(
    server: &Arc<Tls>,
    client: &Arc<Tls>,
    expect: Expect,
) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client.client_config(expect).unwrap()));
    let serve = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let certs = tls.get_ref().1.peer_certificates().map(|c| c.to_vec());
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(certs)
    });
    let dialled = async {
        let mut tls = connector
            .connect(dial_name("127.0.0.1"), a)
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let dialled = dialled.await;
    let served = serve.await.unwrap();
    dialled?;
    served
}

fn server_of(dc: &str) -> Expect {
    Expect::Server {
        datacenter: dc.into(),
    }
}

#[tokio::test]
async fn servers_of_one_ca_shake_hands_and_see_each_other_as_servers() {
    let pki = Pki::new();
    let a = load(pki.settings(pki.cert(Role::Server, "dc1")));
    let b = load(pki.settings(pki.cert(Role::Server, "dc1")));
    let seen = handshake(&a, &b, server_of("dc1")).await.unwrap();
    assert!(a.peer_is_server(seen.as_deref(), "dc1"));
    assert!(!a.peer_is_server(seen.as_deref(), "dc2"));
}

#[tokio::test]
async fn a_client_certificate_cannot_pose_as_a_server() {
    let pki = Pki::new();
    let server = load(pki.settings(pki.cert(Role::Server, "dc1")));
    let agent = load(pki.settings(pki.cert(Role::Client, "dc1")));
    // Dialled as a server: the agent's certificate is refused by name.
    let err = handshake(&agent, &server, server_of("dc1"))
        .await
        .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    // As a caller it is accepted (it is signed by the CA), but not as a server.
    let seen = handshake(&server, &agent, server_of("dc1")).await.unwrap();
    assert!(!server.peer_is_server(seen.as_deref(), "dc1"));
}

#[tokio::test]
async fn without_verify_server_hostname_only_the_chain_is_checked() {
    let pki = Pki::new();
    let mut settings = pki.settings(pki.cert(Role::Client, "dc1"));
    settings.verify_server_hostname = false;
    let agent_as_server = load(settings.clone());
    let dialler = load(settings);
    handshake(&agent_as_server, &dialler, server_of("dc9"))
        .await
        .unwrap();
}

#[tokio::test]
async fn another_ca_is_refused_both_ways() {
    let ours = Pki::new();
    let theirs = Pki::new();
    let server = load(ours.settings(ours.cert(Role::Server, "dc1")));
    let stranger = load(theirs.settings(theirs.cert(Role::Server, "dc1")));
    assert!(handshake(&server, &stranger, server_of("dc1"))
        .await
        .is_err());
    assert!(handshake(&stranger, &server, server_of("dc1"))
        .await
        .is_err());
}

#[tokio::test]
async fn verify_incoming_requires_a_certificate_from_the_caller() {
    let pki = Pki::new();
    let server = load(pki.settings(pki.cert(Role::Server, "dc1")));
    // A caller with the CA but no certificate of its own.
    let caller = load(TlsSettings {
        ca_file: Some(pki.ca_file()),
        verify_outgoing: true,
        domain: "consul".into(),
        ..TlsSettings::default()
    });
    assert!(handshake(&server, &caller, server_of("dc1")).await.is_err());
    // Without --verify-incoming the same caller is served.
    let mut open = pki.settings(pki.cert(Role::Server, "dc1"));
    open.verify_incoming = false;
    let open = load(open);
    let seen = handshake(&open, &caller, server_of("dc1")).await.unwrap();
    assert!(seen.is_none());
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes() {
    let pki = Pki::new();
    let (cert, key) = pki.cert(Role::Server, "dc1");
    let server = load(pki.settings((cert.clone(), key.clone())));
    let client = load(pki.settings(pki.cert(Role::Server, "dc1")));
    handshake(&server, &client, server_of("dc1")).await.unwrap();
    // Replace the files with a certificate for another DC and reload.
    let (c2, k2) = pki.cert(Role::Server, "dc2");
    std::fs::rename(&c2, &cert).unwrap();
    std::fs::rename(&k2, &key).unwrap();
    server.reload().unwrap();
    let err = handshake(&server, &client, server_of("dc1"))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    handshake(&server, &client, server_of("dc2")).await.unwrap();
    // A broken file leaves the running configuration in place.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(server.reload().is_err());
    handshake(&server, &client, server_of("dc2")).await.unwrap();
}

#[test]
fn settings_that_cannot_work_are_refused_with_a_reason() {
    let pki = Pki::new();
    let (cert, key) = pki.cert(Role::Server, "dc1");
    let no_ca = TlsSettings {
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
        verify_incoming: true,
        ..TlsSettings::default()
    };
    assert!(load_err(no_ca).contains("--ca-file"));
    let half = TlsSettings {
        cert_file: Some(cert.clone()),
        ..TlsSettings::default()
    };
    assert!(load_err(half).contains("--key-file"));
    let missing = TlsSettings {
        ca_file: Some(pki.dir.path().join("nope.pem")),
        ..TlsSettings::default()
    };
    assert!(load_err(missing).contains("nope.pem"));
    // A key that is not the certificate's.
    let (_, other_key) = pki.cert(Role::Server, "dc1");
    let mut mismatched = pki.settings((cert.clone(), other_key));
    mismatched.verify_incoming = false;
    assert!(load_err(mismatched).contains("is not the key of"));
    // HTTPS without a certificate.
    let ca_only = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    assert!(Tls::load(ca_only, true)
        .unwrap_err()
        .to_string()
        .contains("--https-addr"));
    assert!(Tls::load(TlsSettings::default(), false).unwrap().is_none());
}

#[test]
fn an_expired_certificate_is_refused_at_start_naming_its_date() {
    let pki = Pki::new();
    let ca_key = rcgen::KeyPair::from_pem(&pki.ca.key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&pki.ca.cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["server.dc1.consul".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = pki.dir.path();
    write(dir, "old.pem", &cert.pem());
    write(dir, "old-key.pem", &key.serialize_pem());
    let settings = pki.settings((dir.join("old.pem"), dir.join("old-key.pem")));
    let err = load_err(settings);
    assert!(err.contains("expired on"), "{err}");
}

#[test]
fn generated_files_carry_consuls_names_and_are_never_overwritten() {
    let pki = Pki::new();
    let (cert, key) = pki.cert(Role::Server, "dc1");
    assert!(cert.ends_with("dc1-server-consul-0.pem"));
    assert!(key.ends_with("dc1-server-consul-0-key.pem"));
    let (next, _) = pki.cert(Role::Server, "dc1");
    assert!(next.ends_with("dc1-server-consul-1.pem"));
    let pem = gen::create_ca("consul", 1).unwrap();
    assert!(gen::write_new(&pem, &cert, &pki.dir.path().join("x")).is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    assert!(verify::names_server(&der, "server.dc1.consul"));
    assert!(verify::names_server(&der, "localhost"));
    assert!(!verify::names_server(&der, "server.dc2.consul"));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn a_tool_checks_the_name_it_dialled_or_the_one_it_was_given() {
    let pki = Pki::new();
    let server = load(pki.settings(pki.cert(Role::Server, "dc1")));
    let mut tool = pki.settings(pki.cert(Role::Client, "dc1"));
    tool.verify_server_hostname = false;
    let tool = load(tool);
    // The test dials "127.0.0.1", which the server certificate names.
    handshake(&server, &tool, Expect::Name(None)).await.unwrap();
    handshake(
        &server,
        &tool,
        Expect::Name(Some("server.dc1.consul".into())),
    )
    .await
    .unwrap();
    assert!(handshake(
        &server,
        &tool,
        Expect::Name(Some("server.dc2.consul".into()))
    )
    .await
    .is_err());
}
