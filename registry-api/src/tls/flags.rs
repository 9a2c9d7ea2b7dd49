//! The TLS flags of the three binaries and their `tls ca create` / `tls cert create`
//! subcommand: defined once here (clap), flattened into each binary's flags.

use super::gen::{self, CertRequest, Role};
use super::{Tls, TlsError, TlsSettings};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// TLS flags (Consul's settings of the same names).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsFlags {
    /// PEM file with the CA certificate that peers' certificates must be signed by.
    #[arg(long, env = "REGISTRY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM file with this process's certificate (`registry-server tls cert create`).
    #[arg(long, env = "REGISTRY_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the certificate's private key.
    #[arg(long, env = "REGISTRY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Callers of the RPC port, the HTTPS port and the gateway must use TLS and show a
    /// certificate signed by the CA.
    #[arg(long, env = "REGISTRY_VERIFY_INCOMING")]
    pub verify_incoming: bool,
    /// Dial servers and gateways over TLS, checking their certificate against the CA.
    #[arg(long, env = "REGISTRY_VERIFY_OUTGOING")]
    pub verify_outgoing: bool,
    /// Servers must show a certificate named server.<dc>.<domain> (implies
    /// --verify-outgoing): an agent's certificate cannot pose as a server.
    #[arg(long, env = "REGISTRY_VERIFY_SERVER_HOSTNAME")]
    pub verify_server_hostname: bool,
}

impl TlsFlags {
    /// The settings these flags give, for certificates under `domain`.
    pub fn settings(&self, domain: &str) -> TlsSettings {
        TlsSettings {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            verify_incoming: self.verify_incoming,
            verify_outgoing: self.verify_outgoing || self.verify_server_hostname,
            verify_server_hostname: self.verify_server_hostname,
            domain: domain.to_string(),
        }
    }

    /// Reads the files, as at start: a clear error for anything doubtful.
    pub fn load(&self, domain: &str, serves_https: bool) -> Result<Option<Arc<Tls>>, TlsError> {
        Tls::load(self.settings(domain), serves_https)
    }
}

/// `tls`: make a CA and certificates signed by it.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum TlsCommand {
    /// Certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Server and client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `tls ca ...`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum CaCommand {
    /// Writes a new CA (<domain>-agent-ca.pem and <domain>-agent-ca-key.pem) in the
    /// current directory.
    Create {
        /// Days the CA is valid.
        #[arg(long, default_value_t = gen::DEFAULT_CA_DAYS)]
        days: u32,
        /// Domain of the registry.
        #[arg(long, default_value = super::DEFAULT_DOMAIN)]
        domain: String,
    },
}

/// `tls cert ...`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum CertCommand {
    /// Writes a certificate signed by the CA (<dc>-server-<domain>-<n>.pem and its key)
    /// in the current directory.
    Create {
        /// A server (and gateway) certificate: server.<dc>.<domain>.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        server: bool,
        /// A client agent certificate: client.<dc>.<domain>.
        #[arg(long)]
        client: bool,
        /// Datacenter in the certificate's name.
        #[arg(long, default_value = "dc1")]
        dc: String,
        /// Domain of the registry.
        #[arg(long, default_value = super::DEFAULT_DOMAIN)]
        domain: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = gen::DEFAULT_CERT_DAYS)]
        days: u32,
        /// The CA certificate (default <domain>-agent-ca.pem).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The CA's key (default <domain>-agent-ca-key.pem).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Another DNS name for the certificate (repeatable).
        #[arg(long = "additional-dnsname")]
        additional_dnsname: Vec<String>,
        /// Another IP address for the certificate (repeatable).
        #[arg(long = "additional-ipaddress")]
        additional_ipaddress: Vec<IpAddr>,
    },
}

impl TlsCommand {
    /// Runs the command in `dir`; returns the lines to print (the files written).
    pub fn run(&self, dir: &std::path::Path) -> Result<Vec<String>, TlsError> {
        match self {
            TlsCommand::Ca(CaCommand::Create { days, domain }) => {
                let pem = gen::create_ca(domain, *days)?;
                let (cert, key) = gen::ca_file_names(domain);
                let (cert, key) = (dir.join(cert), dir.join(key));
                gen::write_new(&pem, &cert, &key)?;
                Ok(saved(&cert, &key))
            }
            TlsCommand::Cert(CertCommand::Create {
                server,
                client: _,
                dc,
                domain,
                days,
                ca,
                key,
                additional_dnsname,
                additional_ipaddress,
            }) => {
                let (ca_default, key_default) = gen::ca_file_names(domain);
                let ca = ca.clone().unwrap_or_else(|| dir.join(ca_default));
                let key = key.clone().unwrap_or_else(|| dir.join(key_default));
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map_err(|e| TlsError::File(format!("cannot read {}: {e}", p.display())))
                };
                let role = if *server { Role::Server } else { Role::Client };
                let pem = gen::create_cert(
                    &read(&ca)?,
                    &read(&key)?,
                    &CertRequest {
                        role,
                        datacenter: dc,
                        domain,
                        dns_names: additional_dnsname,
                        ip_addresses: additional_ipaddress,
                        days: *days,
                    },
                )?;
                let (cert_path, key_path) = gen::cert_file_names(dir, dc, role, domain);
                gen::write_new(&pem, &cert_path, &key_path)?;
                Ok(saved(&cert_path, &key_path))
            }
        }
    }
}

fn saved(cert: &std::path::Path, key: &std::path::Path) -> Vec<String> {
    vec![
        format!("==> Saved {}", cert.display()),
        format!("==> Saved {}", key.display()),
    ]
}

/// Runs `tls ...` for a binary's `main`: prints what it wrote, or the error; the exit code.
pub fn run_command(command: &TlsCommand) -> i32 {
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match command.run(&dir) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
