//! Measurement 9: what TLS costs. Two fresh 3-server clusters on the same machine in the
//! same run, one plain and one with mutual TLS and `--verify-server-hostname` (certificates
//! made by `registry_api::tls::gen`, as `tls ca create` / `tls cert create` make them),
//! driven by the same clients over kept-alive connections: register at 64 clients and
//! `?stale` lookups at 64 clients, alternating plain and TLS within each run.

use crate::cluster::{RegistryCluster, TlsFiles};
use crate::load::{self, Op, RunStats};
use crate::scenarios;
use anyhow::{Context, Result};
use registry_api::tls::gen::{self, CertRequest, Role};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Clients in both rows.
pub const CLIENTS: usize = 64;

/// The runs of both rows, plain and TLS.
#[derive(Default)]
pub struct TlsCost {
    /// Register, plain HTTP.
    pub register_plain: Vec<RunStats>,
    /// Register, HTTPS to servers that talk mutual TLS among themselves.
    pub register_tls: Vec<RunStats>,
    /// `?stale` lookups, plain.
    pub stale_plain: Vec<RunStats>,
    /// `?stale` lookups over HTTPS.
    pub stale_tls: Vec<RunStats>,
}

/// A CA, one server certificate for every server and a client certificate for the load,
/// written under `dir`.
fn make_pki(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca = gen::create_ca("consul", 1)?;
    let (ca_cert, ca_key) = gen::ca_file_names("consul");
    gen::write_new(&ca, &dir.join(&ca_cert), &dir.join(ca_key))?;
    let mut certs = Vec::new();
    for role in [Role::Server, Role::Client] {
        let pem = gen::create_cert(
            &ca.cert,
            &ca.key,
            &CertRequest {
                role,
                datacenter: "dc1",
                domain: "consul",
                dns_names: &[],
                ip_addresses: &[],
                days: 1,
            },
        )?;
        let (cert, key) = gen::cert_file_names(dir, "dc1", role, "consul");
        gen::write_new(&pem, &cert, &key)?;
        certs.push((cert, key));
    }
    let (client, server) = (certs.remove(1), certs.remove(0));
    Ok(TlsFiles {
        ca: dir.join(ca_cert),
        cert: server.0,
        key: server.1,
        client_cert: client.0,
        client_key: client.1,
    })
}

/// Runs measurement 9.
pub async fn measure(bin: &Path, root: &Path, runs: usize, secs: Duration) -> Result<TlsCost> {
    let files = make_pki(&root.join("pki"))?;
    load::trust(&files)?;
    let mut plain = RegistryCluster::start(bin, root, "plain", None)?;
    let mut tls = RegistryCluster::start_tls(bin, root, "tls", &files)?;
    plain
        .wait_ready(Duration::from_secs(60))
        .await
        .context("plain cluster")?;
    tls.wait_ready(Duration::from_secs(60))
        .await
        .context("TLS cluster")?;
    let (plain_urls, tls_urls) = (plain.urls(), tls.urls());
    scenarios::setup_lookup_service(&plain_urls).await?;
    scenarios::setup_lookup_service(&tls_urls).await?;
    let seq = Arc::new(AtomicU64::new(0));
    let mut r = TlsCost::default();
    let register = |prefix: &str| Op::Register {
        prefix: prefix.to_string(),
        per_node: 1,
    };
    let stale = || Op::Lookup {
        service: "lookup-svc".into(),
        query: "&stale",
    };
    for run in 0..runs {
        let p = scenarios::register(register("tp"), &plain_urls, CLIENTS, secs, &seq).await?;
        let t = scenarios::register(register("tt"), &tls_urls, CLIENTS, secs, &seq).await?;
        let sp = scenarios::read(stale(), &plain_urls, CLIENTS, secs, false).await?;
        let st = scenarios::read(stale(), &tls_urls, CLIENTS, secs, false).await?;
        plain.check_alive()?;
        tls.check_alive()?;
        eprintln!(
            "  run {}: register plain {:.0}/s TLS {:.0}/s | ?stale plain {:.0}/s TLS {:.0}/s",
            run + 1,
            p.ops_per_s,
            t.ops_per_s,
            sp.ops_per_s,
            st.ops_per_s
        );
        r.register_plain.push(p);
        r.register_tls.push(t);
        r.stale_plain.push(sp);
        r.stale_tls.push(st);
    }
    Ok(r)
}
