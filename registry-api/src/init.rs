//! `registry-server init`: the secrets every process of a deployment shares, made once in a
//! directory (the lab's one-shot `lab-init` container writes them into a named volume that
//! the other containers mount read-only):
//!
//! - `encrypt.key`: a new shared key (`--encrypt-file` reads it), mode 0600;
//! - `tls/`: a new CA certificate, and per datacenter a server certificate
//!   (`<dc>-server-<domain>-0.pem`, for its servers and gateways) and a client certificate
//!   (`<dc>-client-<domain>-0.pem`, for its agents), as `tls ca create` / `tls cert create`
//!   name them, plus any `--extra-client` certificates (tools outside the containers).
//!
//! Why one subcommand: the images are `FROM scratch` (no shell to chain `keygen` and `tls`
//! commands or to redirect output into a file), and a plain `docker compose up` must work
//! without scripts on the host.
//!
//! What it never does: print or log key material (only file names), overwrite anything, or
//! keep the CA's private key: every certificate is signed in this one run and the key is
//! dropped, so no container that mounts the directory can mint a certificate. A half-written
//! `tls/` cannot happen either: the files are made in `tls.new/` and renamed into place.
//! Running it again with everything present changes nothing (exit 0), so the init container
//! can run on every `up`.

use crate::tls::gen::{self, CertRequest, Role};
use crate::tls::TlsError;
use std::path::{Path, PathBuf};

/// `init` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct InitArgs {
    /// Directory to write into (created if missing): encrypt.key and tls/.
    #[arg(long)]
    pub dir: PathBuf,
    /// Datacenters to make a server and a client certificate for (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "dc1")]
    pub datacenters: Vec<String>,
    /// One more client certificate of this datacenter, for a tool outside the containers
    /// (repeatable).
    #[arg(long)]
    pub extra_client: Vec<String>,
    /// Domain of the registry, in the certificates' names.
    #[arg(long, default_value = crate::tls::DEFAULT_DOMAIN)]
    pub domain: String,
}

/// Why `init` failed (the texts name files, never their contents).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Reading or writing a file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// Making a certificate.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `tls/` exists but lacks files this run would make: it came from another run with other
    /// flags, and cannot be completed without the CA key, which is never kept.
    #[error("{dir} exists without {missing}: remove the directory (the lab: docker compose down -v) to make a new set")]
    Incomplete {
        /// The tls directory.
        dir: String,
        /// The first missing file.
        missing: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |error| InitError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// The file name of the key `init` writes.
pub const KEY_FILE: &str = "encrypt.key";

impl InitArgs {
    /// The certificate files a complete `tls/` holds (without the directory).
    fn expected(&self) -> Vec<String> {
        let mut files = vec![gen::ca_file_names(&self.domain).0];
        for dc in &self.datacenters {
            files.push(format!("{dc}-server-{}-0.pem", self.domain));
            files.push(format!("{dc}-client-{}-0.pem", self.domain));
        }
        files
    }

    /// Makes whatever is missing; returns the lines to print (what it wrote or found).
    pub fn run(&self) -> Result<Vec<String>, InitError> {
        for dc in self.datacenters.iter().chain(&self.extra_client) {
            crate::names::check_datacenter(dc)
                .map_err(|e| TlsError::Generate(format!("datacenter {dc:?}: {e}")))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut lines = Vec::new();

        let key = self.dir.join(KEY_FILE);
        if key.exists() {
            lines.push(format!("==> {} already there", key.display()));
        } else {
            write_private(&key, &format!("{}\n", crate::auth::generate_key()))?;
            lines.push(format!("==> Saved {} (the shared key)", key.display()));
        }

        let tls = self.dir.join("tls");
        if tls.exists() {
            if let Some(missing) = self.expected().into_iter().find(|f| !tls.join(f).exists()) {
                return Err(InitError::Incomplete {
                    dir: tls.display().to_string(),
                    missing,
                });
            }
            lines.push(format!("==> {} already there", tls.display()));
            return Ok(lines);
        }
        let staging = self.dir.join("tls.new");
        if staging.exists() {
            // Left by a run that stopped half-way; nothing in it was ever used.
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let ca = gen::create_ca(&self.domain, gen::DEFAULT_CA_DAYS)?;
        let (ca_cert_name, _) = gen::ca_file_names(&self.domain);
        write_public(&staging.join(&ca_cert_name), &ca.cert)?;
        let certs = self
            .datacenters
            .iter()
            .flat_map(|dc| [(dc, Role::Server), (dc, Role::Client)])
            .chain(self.extra_client.iter().map(|dc| (dc, Role::Client)));
        for (dc, role) in certs {
            let pem = gen::create_cert(
                &ca.cert,
                &ca.key,
                &CertRequest {
                    role,
                    datacenter: dc,
                    domain: &self.domain,
                    dns_names: &[],
                    ip_addresses: &[],
                    days: gen::DEFAULT_CERT_DAYS,
                },
            )?;
            let (cert, key) = gen::cert_file_names(&staging, dc, role, &self.domain);
            gen::write_new(&pem, &cert, &key)?;
        }
        // The CA key (`ca.key`) is dropped here, never written.
        std::fs::rename(&staging, &tls).map_err(io(&tls))?;
        let mut names: Vec<String> = std::fs::read_dir(&tls)
            .map_err(io(&tls))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            lines.push(format!("==> Saved {}", tls.join(name).display()));
        }
        lines.push("==> The CA's key was not kept: no certificate can be added to this set".into());
        Ok(lines)
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), InitError> {
    write(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), InitError> {
    write(path, text, 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), InitError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(path))
}

/// Runs `init` for a binary's `main`: prints what it did, or the error; the exit code.
pub fn run_command(args: &InitArgs) -> i32 {
    match args.run() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_path_buf(),
            datacenters: vec!["dc1".into(), "dc2".into()],
            extra_client: vec!["dc1".into()],
            domain: "consul".into(),
        }
    }

    #[test]
    fn makes_the_key_and_certificates_once_and_never_the_ca_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        args(&dir).run().unwrap();
        let key = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        assert!(crate::auth::SharedKey::from_base64(&key).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let tls = dir.join("tls");
        for f in [
            "consul-agent-ca.pem",
            "dc1-server-consul-0.pem",
            "dc1-server-consul-0-key.pem",
            "dc1-client-consul-0.pem",
            "dc1-client-consul-1.pem",
            "dc2-server-consul-0.pem",
            "dc2-client-consul-0-key.pem",
        ] {
            assert!(tls.join(f).exists(), "{f}");
        }
        assert!(!tls.join("consul-agent-ca-key.pem").exists());
        assert!(!dir.join("tls.new").exists());
        // The certificates load as a server's TLS settings would.
        let settings = crate::tls::TlsSettings {
            ca_file: Some(tls.join("consul-agent-ca.pem")),
            cert_file: Some(tls.join("dc2-server-consul-0.pem")),
            key_file: Some(tls.join("dc2-server-consul-0-key.pem")),
            verify_incoming: true,
            verify_outgoing: true,
            verify_server_hostname: true,
            domain: "consul".into(),
        };
        assert!(crate::tls::Tls::load(settings, true).unwrap().is_some());

        // Again: nothing changes.
        let cert = std::fs::read(tls.join("dc1-server-consul-0.pem")).unwrap();
        args(&dir).run().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(KEY_FILE)).unwrap(), key);
        assert_eq!(
            std::fs::read(tls.join("dc1-server-consul-0.pem")).unwrap(),
            cert
        );
        assert!(!tls.join("dc1-client-consul-2.pem").exists());

        // A set made for fewer datacenters cannot be completed (the CA key is gone).
        let mut more = args(&dir);
        more.datacenters.push("dc3".into());
        let e = more.run().unwrap_err();
        assert!(matches!(e, InitError::Incomplete { .. }), "{e}");
    }
}
