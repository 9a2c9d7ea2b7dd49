//! `registry-client`: flags -> config -> `run(config, shutdown)`.

use clap::{Parser, Subcommand};
use registry_client::{ClientConfig, SharedKey};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The client agent on an application host. Every flag can also be set as
/// REGISTRY_<FLAG> (lists comma-separated), e.g. REGISTRY_RETRY_JOIN=s1:8300,s2:8300.
// No `Debug`: the key is among the fields.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Node name (default: the hostname).
    #[arg(long, env = "REGISTRY_NODE")]
    node: Option<String>,
    /// Datacenter.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Directory for the agent's local state (services and checks survive restarts).
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long, env = "REGISTRY_HTTP_ADDR", default_value = "127.0.0.1:8500")]
    http_addr: SocketAddr,
    /// This node's address as registered in the catalog: an IP, or a name (such as the
    /// container's hostname) resolved to one at start.
    #[arg(long, env = "REGISTRY_ADVERTISE", default_value = "127.0.0.1")]
    advertise: String,
    /// A server's RPC address HOST:PORT (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN", value_delimiter = ',')]
    retry_join: Vec<String>,
    /// Development mode: without --retry-join, use a local `registry-server --dev`
    /// (127.0.0.1:8300).
    #[arg(long, env = "REGISTRY_DEV")]
    dev: bool,
    /// Serve the web UI at /ui/ (on with --dev).
    #[arg(long, env = "REGISTRY_UI")]
    ui: bool,
    /// The cluster's shared key (base64; `registry-client keygen` makes one): signs every
    /// request to the servers. Without it the servers must run without a key too.
    #[arg(long, env = "REGISTRY_ENCRYPT", hide_env_values = true)]
    encrypt: Option<String>,
    /// A file holding the shared key, instead of --encrypt (`registry-server init` writes one).
    #[arg(long, env = "REGISTRY_ENCRYPT_FILE", conflicts_with = "encrypt")]
    encrypt_file: Option<PathBuf>,
    /// Configuration files (--config-file, --config-dir).
    #[command(flatten)]
    config: registry_api::config_file::ConfigFlags,
    /// The DNS interface (--dns-addr, --domain, --alt-domain, --recursors, --dns-ttl,
    /// --dns-only-passing), answered by the servers with stale reads.
    #[command(flatten)]
    dns: registry_dns::DnsFlags,
    /// HTTPS API listen address (Consul's port 8501); needs --cert-file and --key-file.
    #[arg(long, env = "REGISTRY_HTTPS_ADDR")]
    https_addr: Option<SocketAddr>,
    #[command(flatten)]
    tls: registry_api::tls::flags::TlsFlags,
    /// The cluster has ACLs on: a token this agent cannot resolve (no server answers) is
    /// refused, never taken as ACLs off (Consul's agent `acl.enabled`).
    #[arg(long, env = "REGISTRY_ACL_ENABLED")]
    acl_enabled: bool,
    /// The agent's own token (Consul's `acl.tokens.agent`): its anti-entropy, heartbeats and
    /// reads carry it, and services registered without a token sync with it. Implies
    /// --acl-enabled. `PUT /v1/agent/token/agent` replaces it until a restart.
    #[arg(long, env = "REGISTRY_ACL_AGENT_TOKEN", hide_env_values = true)]
    acl_agent_token: Option<String>,
    /// What to do instead of running the agent.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands; without one the agent runs.
#[derive(Subcommand, Debug)]
enum Command {
    /// Prints a new shared key for --encrypt (32 random bytes, base64) and exits.
    Keygen,
    /// Makes a CA and certificates for TLS (as `consul tls`), in the current directory.
    #[command(subcommand)]
    Tls(registry_api::tls::flags::TlsCommand),
    /// Asks the agent running with the same flags whether it answers (GET /v1/agent/self):
    /// exits 0 if so, 1 if not, with the reason on stderr (container healthchecks).
    Health,
}

/// Exit code for a configuration error, as clap uses for bad flags.
const EXIT_USAGE: i32 = 2;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Lines on stderr, and the stream `GET /v1/agent/monitor` reads.
    registry_api::logs::install();
    // Parsed through the matches so that configuration files fill only the flags not given.
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let a = <Args as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match &a.command {
        Some(Command::Keygen) => {
            println!("{}", registry_api::auth::generate_key());
            return Ok(());
        }
        Some(Command::Tls(command)) => {
            std::process::exit(registry_api::tls::flags::run_command(command))
        }
        Some(Command::Health) => {
            let probe = registry_api::health::Probe {
                addr: a.http_addr,
                tls: None,
                expect: registry_api::health::Expectation::AgentAnswers,
            };
            std::process::exit(probe.report().await)
        }
        None => {}
    }
    let tls = match a.tls.load(&a.dns.domain, a.https_addr.is_some()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    // The key's text never reaches a log line: only the reason it was refused.
    let encrypt = match registry_api::auth::key_text(a.encrypt.clone(), a.encrypt_file.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let encrypt = match encrypt.as_deref().map(SharedKey::from_base64).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("error: --encrypt: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    // As Go raises it for Consul: the soft open-file limit up to the hard one
    // (each HTTP connection, blocking queries above all, holds a descriptor).
    registry_api::serve::raise_fd_limit();
    let mut config = ClientConfig::new(
        a.node
            .unwrap_or_else(|| registry_api::process::hostname_or("registry-client")),
    );
    config.datacenter = a.datacenter;
    config.data_dir = a.data_dir;
    config.http_addr = a.http_addr;
    config.advertise_addr = a.advertise;
    config.retry_join = a.retry_join;
    config.dev = a.dev;
    config.ui = a.ui || a.dev;
    config.encrypt = encrypt;
    config.dns = match a.dns.config() {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    config.config_sources = a.config.sources();
    // A key from --encrypt-file wins over a configuration file's, as one from --encrypt does.
    let given = |id: &str| {
        registry_api::config_file::given_by_user(&matches, id)
            || (id == "encrypt"
                && registry_api::config_file::given_by_user(&matches, "encrypt_file"))
    };
    if let Err(e) = config.apply_file_settings(&given) {
        eprintln!("error: configuration: {e}");
        std::process::exit(EXIT_USAGE);
    }
    config.tls = tls;
    config.https_addr = a.https_addr;
    config.acl_enabled = a.acl_enabled;
    config.acl_agent_token = a
        .acl_agent_token
        .filter(|t| !t.is_empty())
        .map(registry_client::acl::SecretToken);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        registry_api::process::shutdown_signal().await;
        signal.cancel();
    });
    registry_client::run(config, shutdown).await
}
