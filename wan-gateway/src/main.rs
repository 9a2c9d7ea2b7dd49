//! `wan-gateway`: flags -> config -> `run(config, shutdown)`; `wan-gateway keygen` prints a key.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wan_gateway::{GatewayConfig, SharedKey};

/// The WAN gateway: federates this datacenter with the others. Every flag can also be set as
/// REGISTRY_<FLAG> (lists comma-separated).
///
/// It forwards only the data endpoints (catalog, health, KV, session, txn, status, query, event,
/// coordinate) between datacenters; agent, operator, ACL, snapshot and internal endpoints get 403.
/// With --encrypt, every request to and from the gateway must be signed with the shared key.
// No `Debug`: the struct holds the key as given.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// What to do instead of running the gateway.
    #[command(subcommand)]
    command: Option<Command>,
    /// Datacenter this gateway serves (letters, digits, '-', '_').
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Address to listen on (HTTP from this DC's servers and from other gateways).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "0.0.0.0:8302")]
    listen: SocketAddr,
    /// HOST:PORT other gateways use to reach this one (default: the listen address, with
    /// 127.0.0.1 for 0.0.0.0).
    #[arg(long, env = "REGISTRY_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP URL of one of this DC's servers (repeatable).
    #[arg(long, env = "REGISTRY_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// HOST:PORT of any other gateway, in any DC, to join the WAN through (repeatable).
    #[arg(long, env = "REGISTRY_RETRY_JOIN_WAN", value_delimiter = ',')]
    retry_join_wan: Vec<String>,
    /// Shared key of the federation (base64 of 16, 24 or 32 bytes; `wan-gateway keygen` makes
    /// one). Every gateway and every server must have the same key: requests without a valid
    /// signature are refused with 403, and everything the gateway sends is signed. Without it,
    /// WAN traffic is unauthenticated.
    #[arg(
        long,
        env = "REGISTRY_ENCRYPT",
        hide_env_values = true,
        value_name = "KEY"
    )]
    encrypt: Option<String>,
    /// A file holding the shared key, instead of --encrypt (`registry-server init` writes one).
    #[arg(
        long,
        env = "REGISTRY_ENCRYPT_FILE",
        conflicts_with = "encrypt",
        value_name = "FILE"
    )]
    encrypt_file: Option<std::path::PathBuf>,
    /// Time between membership exchanges with every known gateway (Go duration).
    #[arg(long, env = "REGISTRY_GOSSIP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    gossip_interval: Duration,
    /// A gateway not reached for this long is dead: not routed to, probed every tenth round
    /// (Go duration).
    #[arg(long, env = "REGISTRY_DEAD_AFTER", default_value = "5s", value_parser = parse_duration)]
    dead_after: Duration,
    /// A gateway not reached for this long is forgotten (Consul's reconnect_timeout_wan; Go
    /// duration).
    #[arg(long, env = "REGISTRY_RECONNECT_TIMEOUT", default_value = "72h", value_parser = parse_duration)]
    reconnect_timeout: Duration,
    #[command(flatten)]
    tls: registry_api::tls::flags::TlsFlags,
}

/// Subcommands.
#[derive(Subcommand)]
enum Command {
    /// Print a new shared key for --encrypt (32 random bytes, base64) and exit.
    Keygen,
    /// Make a CA and certificates for TLS (as `consul tls`), in the current directory.
    #[command(subcommand)]
    Tls(registry_api::tls::flags::TlsCommand),
    /// Ask the gateway running with the same flags whether it answers (GET /v1/agent/metrics,
    /// over TLS when it serves TLS): exit 0 if so, 1 if not, with the reason on stderr
    /// (container healthchecks).
    Health,
}

/// Parses a Go duration (`500ms`, `1m30s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    registry_api::duration::parse(s)
}

/// Exit code for unusable flags (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let a = Args::parse();
    match &a.command {
        Some(Command::Keygen) => {
            println!("{}", registry_api::auth::generate_key());
            return ExitCode::SUCCESS;
        }
        Some(Command::Tls(command)) => {
            return ExitCode::from(registry_api::tls::flags::run_command(command) as u8)
        }
        Some(Command::Health) => return health(&a),
        None => {}
    }
    // The same log setup as the server and the agent (stderr, `RUST_LOG`, default info).
    registry_api::logs::install();
    // The key is read here, not by clap, so that no error message ever quotes it.
    let encrypt = match registry_api::auth::key_text(a.encrypt.clone(), a.encrypt_file.as_deref()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let encrypt = match encrypt.as_deref().map(SharedKey::from_base64).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("error: --encrypt / REGISTRY_ENCRYPT: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = GatewayConfig {
        advertise: a.advertise,
        listen: a.listen,
        servers: a.server,
        retry_join_wan: a.retry_join_wan,
        gossip_interval: a.gossip_interval,
        dead_after: a.dead_after,
        reconnect_timeout: a.reconnect_timeout,
        encrypt,
        tls: match a.tls.load(registry_api::tls::DEFAULT_DOMAIN, false) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        ..GatewayConfig::new(a.datacenter)
    };
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    // As Go raises it for Consul: the soft open-file limit up to the hard one
    // (each HTTP connection, blocking queries above all, holds a descriptor).
    registry_api::serve::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wan-gateway health`: asks the gateway listening on --listen, over TLS with its own
/// certificate when it serves TLS (it does when --cert-file is given), as the gateway does.
fn health(a: &Args) -> ExitCode {
    let tls = match a.tls.load(registry_api::tls::DEFAULT_DOMAIN, false) {
        Ok(tls) => tls.filter(|t| t.settings().cert_file.is_some()),
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let probe = registry_api::health::Probe {
        addr: a.listen,
        tls,
        expect: registry_api::health::Expectation::GatewayAnswers,
    };
    ExitCode::from(probe.report_blocking() as u8)
}

/// Runs the gateway until Ctrl-C or SIGTERM.
async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    let result = wan_gateway::run(config, shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    let _ = signals.await;
    result
}

/// Waits for Ctrl-C (a terminal) or SIGTERM (`docker stop`).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
