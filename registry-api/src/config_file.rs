//! Agent configuration files (`--config-file`, `--config-dir`), in Consul's JSON format
//! (<https://developer.hashicorp.com/consul/docs/agent/config/config-files>): service
//! definitions ([`crate::service_def`]) and the agent settings that map onto our flags.
//!
//! Files are JSON, or HCL when named `*.hcl` (read with the `hcl-rs` crate into the same JSON
//! value, so both go through one path). Files are read in the order given; a directory
//! contributes its `*.json` and `*.hcl` files in lexical order (as Consul reads them; other
//! files are skipped). A setting given in a later file
//! overrides an earlier one; services accumulate (a later definition with the same id
//! replaces the earlier). Flags override files: that merge is the binaries' (`main.rs`), which
//! know which flags were given. Settings we do not have are reported by name and ignored, so
//! a Consul configuration with extra settings still loads.
//!
//! Owns: reading and merging the files, and the error text (`<file>:<line>:<col>: <reason>`).
//! Must not touch: applying them (the agent registers the services, `main.rs` the settings).

use crate::service_def::{self, ServiceDefinition};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest configuration file read (Consul's are a few kilobytes; this bounds a mistake such
/// as pointing `--config-file` at a log).
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the configuration comes from: `--config-file` (repeatable) and `--config-dir`
/// (repeatable), read in that order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSources {
    /// Files, read first, in order.
    pub files: Vec<PathBuf>,
    /// Directories, each read for its `*.json` and `*.hcl` files in lexical order.
    pub dirs: Vec<PathBuf>,
}

/// `--config-file` and `--config-dir`, as the server and the agent take them.
#[cfg(feature = "serve")]
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigFlags {
    /// A configuration file in Consul's format, JSON or HCL (*.hcl): services and settings
    /// (flags win over it); repeatable. `SIGHUP` or `PUT /v1/agent/reload` re-reads its
    /// services.
    #[arg(long, env = "REGISTRY_CONFIG_FILE", value_delimiter = ',')]
    pub config_file: Vec<PathBuf>,
    /// A directory of configuration files (its *.json and *.hcl, in lexical order; later
    /// files win); repeatable.
    #[arg(long, env = "REGISTRY_CONFIG_DIR", value_delimiter = ',')]
    pub config_dir: Vec<PathBuf>,
}

#[cfg(feature = "serve")]
impl ConfigFlags {
    /// The sources these flags name.
    pub fn sources(&self) -> ConfigSources {
        ConfigSources {
            files: self.config_file.clone(),
            dirs: self.config_dir.clone(),
        }
    }
}

/// Whether the flag with clap id `id` was given on the command line or in the environment
/// (then it wins over the configuration files; a default does not).
#[cfg(feature = "serve")]
pub fn given_by_user(matches: &clap::ArgMatches, id: &str) -> bool {
    use clap::parser::ValueSource;
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

impl ConfigSources {
    /// Whether no file or directory was given.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// The files to read, in order.
    pub fn paths(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut out = self.files.clone();
        for dir in &self.dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::Read {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| ConfigError::Read {
                    path: dir.clone(),
                    reason: e.to_string(),
                })?;
                let path = entry.path();
                let ext = path.extension().and_then(|e| e.to_str());
                if matches!(ext, Some("json" | "hcl")) && path.is_file() {
                    found.push(path);
                }
            }
            found.sort();
            out.extend(found);
        }
        Ok(out)
    }
}

/// Why the configuration could not be read. The text names the file and, where there is one,
/// the line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A file is not valid JSON, or a value does not fit.
    #[error("{}:{line}:{col}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Agent settings a file may hold (Consul's names); `None` where no file gave one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `node_name` (`--node`).
    pub node_name: Option<String>,
    /// `datacenter` (`--datacenter`).
    pub datacenter: Option<String>,
    /// `data_dir` (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// `retry_join` (`--retry-join`).
    pub retry_join: Option<Vec<String>>,
    /// `encrypt` (`--encrypt`): key material, never logged.
    pub encrypt: Option<String>,
    /// `advertise_addr` (`--advertise`).
    pub advertise_addr: Option<String>,
    /// `client_addr`: the address the HTTP API binds (with `ports.http`).
    pub client_addr: Option<String>,
    /// `addresses.http`: overrides `client_addr` for HTTP.
    pub http_address: Option<String>,
    /// `ports.http`.
    pub http_port: Option<u16>,
    /// `bind_addr`: the server RPC address's host (with `ports.server`).
    pub bind_addr: Option<String>,
    /// `ports.server`.
    pub server_port: Option<u16>,
    /// `bootstrap_expect` (`--bootstrap-expect`).
    pub bootstrap_expect: Option<usize>,
}

impl Settings {
    /// The HTTP listen address the files give (`addresses.http` or `client_addr`, and
    /// `ports.http`), completing what they leave out from `default`.
    pub fn http_addr(&self, default: std::net::SocketAddr) -> Result<std::net::SocketAddr, String> {
        let host = self.http_address.as_ref().or(self.client_addr.as_ref());
        let ip = match host {
            Some(h) => h
                .parse()
                .map_err(|_| format!("client_addr/addresses.http: {h:?} is not an IP address"))?,
            None => default.ip(),
        };
        Ok(std::net::SocketAddr::new(
            ip,
            self.http_port.unwrap_or(default.port()),
        ))
    }

    /// Whether the files set the HTTP listen address at all.
    pub fn sets_http_addr(&self) -> bool {
        self.http_address.is_some() || self.client_addr.is_some() || self.http_port.is_some()
    }

    /// Takes every setting `later` gives.
    fn merge(&mut self, later: Settings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            node_name,
            datacenter,
            data_dir,
            retry_join,
            encrypt,
            advertise_addr,
            client_addr,
            http_address,
            http_port,
            bind_addr,
            server_port,
            bootstrap_expect
        );
    }
}

/// Everything the files say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// The merged settings.
    pub settings: Settings,
    /// Service definitions with the file each came from, in reading order, one per id (a later
    /// file's definition replaces an earlier one with the same id).
    pub services: Vec<(PathBuf, ServiceDefinition)>,
    /// Settings found in the files that we do not have, as `file: key`, to log.
    pub ignored: Vec<String>,
}

/// Reads every file of `sources` and merges them. Any broken file fails the whole load.
pub fn load(sources: &ConfigSources) -> Result<FileConfig, ConfigError> {
    let mut out = FileConfig::default();
    for path in sources.paths()? {
        let text = read_bounded(&path)?;
        let one = parse_file(&path, &text)?;
        out.settings.merge(one.settings);
        for (p, def) in one.services {
            out.services.retain(|(_, d)| d.id() != def.id());
            out.services.push((p, def));
        }
        out.ignored.extend(one.ignored);
    }
    Ok(out)
}

/// The text of `path`, refusing one over [`MAX_CONFIG_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let read_err = |reason: String| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(read_err(format!(
            "larger than {MAX_CONFIG_FILE_BYTES} bytes"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| read_err("not UTF-8 text".into()))
}

/// One file's configuration (`path` only for the error messages).
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let invalid = |line: usize, col: usize, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        col,
        reason,
    };
    let doc: Value = if path.extension().and_then(|e| e.to_str()) == Some("hcl") {
        hcl::from_str(text).map_err(|e| match &e {
            hcl::Error::Parse(p) => invalid(
                p.location().line(),
                p.location().column(),
                p.message().to_string(),
            ),
            other => invalid(1, 1, other.to_string()),
        })?
    } else {
        serde_json::from_str(text)
            .map_err(|e| invalid(e.line(), e.column(), service_def::syntax_reason(&e)))?
    };
    let Value::Object(map) = &doc else {
        return Err(invalid(
            1,
            1,
            "the configuration must be a JSON object".into(),
        ));
    };
    let mut settings = Settings::default();
    let mut ignored = Vec::new();
    for (key, value) in map {
        // A value that does not fit is reported at the line of its key.
        let (line, col) = position_of_key(text, key);
        let bad = |reason: String| invalid(line, col, format!("{key}: {reason}"));
        match key.to_ascii_lowercase().as_str() {
            "service" | "services" => {}
            // Security settings are flags only for now: silently ignoring them would start a
            // server without the TLS or ACLs its operator wrote down.
            k if k == "tls"
                || k == "acl"
                || k.starts_with("verify_")
                || k == "ca_file"
                || k == "ca_path"
                || k == "cert_file"
                || k == "key_file" =>
            {
                return Err(bad(
                    "TLS and ACL settings are not read from configuration files yet; give them as \
                     flags (--ca-file, --verify-incoming, ...)"
                        .into(),
                ))
            }
            "node_name" => settings.node_name = Some(string(value).map_err(bad)?),
            "datacenter" => settings.datacenter = Some(string(value).map_err(bad)?),
            "data_dir" => settings.data_dir = Some(string(value).map_err(bad)?.into()),
            "encrypt" => settings.encrypt = Some(string(value).map_err(bad)?),
            "advertise_addr" => settings.advertise_addr = Some(string(value).map_err(bad)?),
            "client_addr" => settings.client_addr = Some(string(value).map_err(bad)?),
            "bind_addr" => settings.bind_addr = Some(string(value).map_err(bad)?),
            "retry_join" => settings.retry_join = Some(strings(value).map_err(bad)?),
            "bootstrap_expect" => {
                settings.bootstrap_expect = Some(number(value).map_err(bad)? as usize)
            }
            "ports" => {
                for (k, v) in object(value).map_err(bad)? {
                    let port =
                        || u16::try_from(number(v)?).map_err(|_| "not a port number".to_string());
                    match k.as_str() {
                        "http" => settings.http_port = Some(port().map_err(bad)?),
                        "server" => settings.server_port = Some(port().map_err(bad)?),
                        _ => ignored.push(format!("{}: ports.{k}", path.display())),
                    }
                }
            }
            "addresses" => {
                for (k, v) in object(value).map_err(bad)? {
                    match k.as_str() {
                        "http" => settings.http_address = Some(string(v).map_err(bad)?),
                        _ => ignored.push(format!("{}: addresses.{k}", path.display())),
                    }
                }
            }
            _ => ignored.push(format!("{}: {key}", path.display())),
        }
    }
    let defs = service_def::definitions(&doc).map_err(|reason| {
        // The definition's place (`services[1]: ...`): point at its name where we can.
        let (line, col) = reason
            .split(':')
            .next()
            .and_then(|place| place_position(text, &doc, place))
            .unwrap_or((1, 1));
        invalid(line, col, reason)
    })?;
    let mut services: Vec<(PathBuf, ServiceDefinition)> = Vec::new();
    for def in defs {
        services.retain(|(_, d)| d.id() != def.id());
        services.push((path.to_path_buf(), def));
    }
    Ok(FileConfig {
        settings,
        services,
        ignored,
    })
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| "must be a string".into())
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(string).collect(),
        _ => Err("must be a list of strings".into()),
    }
}

fn number(v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| "must be a non-negative integer".into())
}

fn object(v: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    v.as_object().ok_or_else(|| "must be an object".into())
}

/// Line and column (1-based) of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Where the key `"key"` (JSON) or a line starting with `key` (HCL) first appears in `text`
/// (1:1 when it cannot be found). Parsed values keep no positions; the first occurrence of the
/// key is where a reader looks.
fn position_of_key(text: &str, key: &str) -> (usize, usize) {
    let quoted = serde_json::to_string(key).unwrap_or_default();
    if let Some(at) = text.find(&quoted) {
        return line_col(text, at);
    }
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let rest = trimmed.strip_prefix(key).unwrap_or("x");
        if rest.starts_with([' ', '\t', '=', '{']) {
            return line_col(text, offset + line.len() - trimmed.len());
        }
        offset += line.len();
    }
    (1, 1)
}

/// Where the definition at `place` (`service`, `services[2]`) names its service, if it does.
fn place_position(text: &str, doc: &Value, place: &str) -> Option<(usize, usize)> {
    let (key, index) = match place.split_once('[') {
        Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (place, None),
    };
    let map = doc.as_object()?;
    let value = map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?.1;
    let def = match index {
        Some(i) => value.as_array()?.get(i)?,
        None => value,
    };
    let name = def
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("name"))?
        .1;
    let quoted = serde_json::to_string(name).ok()?;
    text.find(&quoted).map(|at| line_col(text, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_services_and_ignored_keys() {
        let cfg = parse_file(
            Path::new("a.json"),
            r#"{"node_name": "n1", "datacenter": "dc2", "retry_join": ["s1:8300"],
                "ports": {"http": 8600, "dns": 53}, "client_addr": "0.0.0.0", "log_level": "INFO",
                "service": {"name": "web", "port": 80}}"#,
        )
        .unwrap();
        assert_eq!(cfg.settings.node_name.as_deref(), Some("n1"));
        assert_eq!(cfg.settings.retry_join, Some(vec!["s1:8300".to_string()]));
        let addr = cfg
            .settings
            .http_addr("127.0.0.1:8500".parse().unwrap())
            .unwrap();
        assert_eq!(addr.to_string(), "0.0.0.0:8600");
        assert_eq!(cfg.services[0].1.id(), "web");
        assert_eq!(cfg.ignored, vec!["a.json: log_level", "a.json: ports.dns"]);
    }

    #[test]
    fn errors_carry_file_line_and_column() {
        let err = parse_file(
            Path::new("d/x.json"),
            "{\n \"node_name\": \"a\",\n \"datacenter\": }",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("d/x.json:3:"), "{err}");
        let err = parse_file(
            Path::new("x.json"),
            "{\n\"services\": [\n {\"name\": \"ok\"},\n {\"name\": \"web\", \"port\": \"x\"}]}",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("x.json:4:11: services[1]: "),
            "{err}"
        );
        let err = parse_file(Path::new("x.json"), "{\n\n  \"datacenter\": 5}").unwrap_err();
        assert_eq!(err.to_string(), "x.json:3:3: datacenter: must be a string");
    }

    #[test]
    fn hcl_files_read_as_json_ones() {
        let cfg = parse_file(
            Path::new("agent.hcl"),
            r#"
datacenter = "dc3"
retry_join = ["10.0.0.1:8300"]
ports {
  http = 8501
}
service {
  name = "web"
  port = 80
  tags = ["v1"]
  check {
    http     = "http://127.0.0.1:80/health"
    interval = "10s"
  }
}
"#,
        )
        .unwrap();
        assert_eq!(cfg.settings.datacenter.as_deref(), Some("dc3"));
        assert_eq!(cfg.settings.http_port, Some(8501));
        let web = &cfg.services[0].1.registration;
        assert_eq!((web.name.as_str(), web.port), ("web", 80));
        assert_eq!(web.check.as_ref().unwrap().interval, "10s");
        // Repeated blocks are several services, as in Consul.
        let two = parse_file(
            Path::new("two.hcl"),
            "service {\n  name = \"a\"\n}\nservice {\n  name = \"b\"\n}\n",
        )
        .unwrap();
        let names: Vec<&str> = two.services.iter().map(|(_, d)| d.id()).collect();
        assert_eq!(names, ["a", "b"]);
        let err = parse_file(Path::new("x.hcl"), "a = 1\nservice {\n  name = \n}").unwrap_err();
        assert!(err.to_string().starts_with("x.hcl:3:"), "{err}");
        let err = parse_file(Path::new("x.hcl"), "a = 1\n  datacenter = 5\n").unwrap_err();
        assert_eq!(err.to_string(), "x.hcl:2:3: datacenter: must be a string");
    }

    #[test]
    fn later_files_override_settings_and_services_by_id() {
        let dir = std::env::temp_dir().join(format!("cfg-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("10-a.json"),
            r#"{"datacenter": "a", "services": [{"name": "web", "port": 1}, {"name": "db"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("20-b.json"),
            r#"{"datacenter": "b", "service": {"name": "web", "port": 2}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not read").unwrap();
        let cfg = load(&ConfigSources {
            files: vec![],
            dirs: vec![dir.clone()],
        })
        .unwrap();
        assert_eq!(cfg.settings.datacenter.as_deref(), Some("b"));
        let ports: Vec<(String, u16)> = cfg
            .services
            .iter()
            .map(|(_, d)| (d.id().to_string(), d.registration.port))
            .collect();
        assert_eq!(ports, vec![("db".to_string(), 0), ("web".to_string(), 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
