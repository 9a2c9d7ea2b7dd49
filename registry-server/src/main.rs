//! `registry-server`: flags -> config -> `run(config, shutdown)`.

use clap::Parser;
use registry_server::{ServerConfig, TransportKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// A registry server: one of the 3 or 5 Raft members of a datacenter, serving
/// Consul's HTTP API. Every flag can also be set as REGISTRY_<FLAG> (lists
/// comma-separated), e.g. REGISTRY_RETRY_JOIN=s1:8300,s2:8300.
// No Debug: the args hold the shared key, which must never be printed.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Node name of this server (default: the hostname).
    #[arg(long, env = "REGISTRY_NODE")]
    node: Option<String>,
    /// Datacenter this server belongs to.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    datacenter: String,
    /// Directory for RocksDB (Raft log and catalog). Required unless --dev.
    #[arg(long, env = "REGISTRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Space kept free in the data directory: with less, writes are refused with a 503 (deletes
    /// still go until half of it is left) and resume once space is freed. Bytes, or with
    /// KB/MB/GB/KiB/MiB/GiB; 0 turns the check off.
    #[arg(long, env = "REGISTRY_MIN_FREE_DISK", default_value = "64MiB",
          value_parser = registry_server::storage::space::parse_size)]
    min_free_disk: u64,
    /// HTTP API listen address (default 0.0.0.0:8500; 127.0.0.1:8500 with --dev).
    #[arg(long, env = "REGISTRY_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Server RPC listen address (Raft and forwarding).
    #[arg(long, env = "REGISTRY_RPC_ADDR", default_value = "0.0.0.0:8300")]
    rpc_addr: SocketAddr,
    /// RPC address other servers use to reach this one (HOST:PORT).
    #[arg(long, env = "REGISTRY_ADVERTISE")]
    advertise: Option<String>,
    /// Form a new cluster once this many servers see each other.
    #[arg(long, env = "REGISTRY_BOOTSTRAP_EXPECT", default_value_t = 0)]
    bootstrap_expect: usize,
    /// RPC address of another server (repeatable; this server's own may be among them).
    #[arg(long, env = "REGISTRY_RETRY_JOIN", value_delimiter = ',')]
    retry_join: Vec<String>,
    /// URL of one of this datacenter's WAN gateways (repeatable).
    #[arg(long, env = "REGISTRY_WAN_GATEWAY", value_delimiter = ',')]
    wan_gateway: Vec<String>,
    /// Development mode: one server, its own leader at once, data in a temp dir
    /// unless --data-dir is given, HTTP on 127.0.0.1:8500.
    #[arg(long, env = "REGISTRY_DEV")]
    dev: bool,
    /// Serve the web UI at /ui/ (on with --dev).
    #[arg(long, env = "REGISTRY_UI")]
    ui: bool,
    /// The cluster's shared key: 16, 24 or 32 random bytes in base64 (make one with
    /// `registry-server keygen`). The same key on every server, agent and gateway of the
    /// federation authenticates server RPC, agent heartbeats and gateway traffic; without it
    /// they are open to anyone who reaches the ports.
    #[arg(long, env = "REGISTRY_ENCRYPT", hide_env_values = true)]
    encrypt: Option<String>,
    /// A file holding the shared key, instead of --encrypt (`registry-server init` writes one).
    #[arg(long, env = "REGISTRY_ENCRYPT_FILE", conflicts_with = "encrypt")]
    encrypt_file: Option<PathBuf>,
    /// Configuration files (--config-file, --config-dir).
    #[command(flatten)]
    config: registry_api::config_file::ConfigFlags,
    /// The DNS interface (--dns-addr, --domain, --alt-domain, --recursors, --dns-ttl,
    /// --dns-only-passing).
    #[command(flatten)]
    dns: registry_dns::DnsFlags,
    /// HTTPS API listen address (Consul's port 8501); needs --cert-file and --key-file.
    #[arg(long, env = "REGISTRY_HTTPS_ADDR")]
    https_addr: Option<SocketAddr>,
    #[command(flatten)]
    tls: registry_api::tls::flags::TlsFlags,
    #[command(flatten)]
    acl: AclFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

/// ACLs (Consul's `acl` block and `primary_datacenter`). Tokens are secrets: their values
/// are never shown by --help or logged.
#[derive(clap::Args)]
struct AclFlags {
    /// Enforce ACL tokens on every endpoint (X-Consul-Token, Authorization: Bearer, ?token=).
    #[arg(long, env = "REGISTRY_ACL_ENABLED")]
    acl_enabled: bool,
    /// What a request whose token has no rule for it may do: allow or deny.
    #[arg(long, env = "REGISTRY_ACL_DEFAULT_POLICY", default_value = "allow")]
    acl_default_policy: registry_api::acl::DefaultPolicy,
    /// A management token the primary datacenter's leader installs at start (Consul's
    /// acl.tokens.initial_management); `PUT /v1/acl/bootstrap` is then refused.
    #[arg(
        long,
        env = "REGISTRY_ACL_INITIAL_MANAGEMENT_TOKEN",
        hide_env_values = true
    )]
    acl_initial_management_token: Option<String>,
    /// The token this server's own agent uses for its anti-entropy and heartbeats.
    #[arg(long, env = "REGISTRY_ACL_AGENT_TOKEN", hide_env_values = true)]
    acl_agent_token: Option<String>,
    /// In a secondary datacenter: the token (acl = "write" in the primary) its leader
    /// replicates the primary's tokens, policies and roles with.
    #[arg(long, env = "REGISTRY_ACL_REPLICATION_TOKEN", hide_env_values = true)]
    acl_replication_token: Option<String>,
    /// The datacenter that holds the authoritative tokens and policies (default: this one).
    #[arg(long, env = "REGISTRY_PRIMARY_DATACENTER")]
    primary_datacenter: Option<String>,
}

/// Subcommands (without one, the server runs).
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print a new random key for --encrypt and exit.
    Keygen,
    /// Make a CA and certificates for TLS (as `consul tls`), in the current directory.
    #[command(subcommand)]
    Tls(registry_api::tls::flags::TlsCommand),
    /// Ask the server running with the same flags whether it is healthy (answers, knows a
    /// leader): exit 0 if so, 1 if not, with the reason on stderr (container healthchecks).
    Health,
    /// Make the shared key and a CA's certificates for the given datacenters in --dir, if not
    /// there yet (the lab's init container); the CA key is not kept.
    Init(registry_api::init::InitArgs),
}

/// mimalloc instead of glibc's malloc: at 100,000 instances the catalog (in
/// its forms of 2026-11-26) took 2.1 KB per instance with glibc and 1.9 KB
/// with mimalloc (no per-chunk header, no 32-byte minimum), and allocation was
/// a tenth of the server's CPU under write load (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RocksDB allocates with the C library's malloc, not with [`ALLOC`]. glibc
/// gives each thread that meets contention an arena of its own and keeps what
/// is freed in it: RocksDB's flush and compaction threads held two more, ~5 MB
/// between them at 100,000 instances, for memory in use a moment at a time. One
/// arena for the process (glibc's `M_ARENA_MAX`): leader RSS at 100,000
/// instances 101-103 -> 98 MB, filling as fast (BENCHMARKS.md, 2026-12-01). Its
/// lock is shared by RocksDB's threads only: everything in Rust uses mimalloc.
fn one_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is
    // thread-safe and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Lines on stderr, and the stream `GET /v1/agent/monitor` reads.
    registry_api::logs::install();
    one_c_heap();
    // As Go raises it for Consul: the soft open-file limit up to the hard one
    // (each HTTP connection, blocking queries above all, holds a descriptor).
    registry_api::serve::raise_fd_limit();
    // Parsed through the matches so that configuration files fill only the flags not given.
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let args =
        <Args as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match &args.command {
        Some(Command::Keygen) => {
            println!("{}", registry_api::auth::generate_key());
            return Ok(());
        }
        Some(Command::Tls(command)) => {
            std::process::exit(registry_api::tls::flags::run_command(command))
        }
        Some(Command::Health) => {
            let probe = registry_api::health::Probe {
                addr: args
                    .http_addr
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8500))),
                tls: None,
                expect: registry_api::health::Expectation::KnowsLeader,
            };
            std::process::exit(probe.report().await)
        }
        Some(Command::Init(init)) => std::process::exit(registry_api::init::run_command(init)),
        None => {}
    }
    let mut config = ServerConfig::new(
        args.node
            .unwrap_or_else(|| registry_api::process::hostname_or("registry-server")),
    );
    config.datacenter = args.datacenter;
    config.data_dir = args.data_dir;
    config.min_free_disk = args.min_free_disk;
    config.dev = args.dev;
    config.ui = args.ui || args.dev;
    config.http_addr = args.http_addr.unwrap_or_else(|| {
        if args.dev {
            SocketAddr::from(([127, 0, 0, 1], 8500))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 8500))
        }
    });
    config.rpc_addr = if args.dev && args.rpc_addr.port() == 8300 {
        SocketAddr::from(([127, 0, 0, 1], 8300))
    } else {
        args.rpc_addr
    };
    config.advertise = args.advertise;
    config.bootstrap_expect = args.bootstrap_expect;
    config.retry_join = args.retry_join;
    config.wan_gateways = args.wan_gateway;
    config.transport = TransportKind::Tcp;
    let encrypt =
        match registry_api::auth::key_text(args.encrypt.clone(), args.encrypt_file.as_deref()) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("registry-server: {e}");
                std::process::exit(2);
            }
        };
    config.encrypt = match encrypt
        .as_deref()
        .map(registry_api::auth::SharedKey::from_base64)
    {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(e)) => {
            eprintln!("registry-server: --encrypt: {e}");
            std::process::exit(2);
        }
    };
    config.config_sources = args.config.sources();
    // A key from --encrypt-file wins over a configuration file's, as one from --encrypt does.
    let given = |id: &str| {
        registry_api::config_file::given_by_user(&matches, id)
            || (id == "encrypt"
                && registry_api::config_file::given_by_user(&matches, "encrypt_file"))
    };
    if let Err(e) = config.apply_file_settings(&given) {
        eprintln!("registry-server: configuration: {e}");
        std::process::exit(2);
    }
    config.acl = registry_server::acl::AclConfig {
        enabled: args.acl.acl_enabled,
        default_policy: registry_server::acl::AclDefault(args.acl.acl_default_policy),
        initial_management: args.acl.acl_initial_management_token,
        agent_token: args.acl.acl_agent_token,
        replication_token: args.acl.acl_replication_token,
        primary_datacenter: args.acl.primary_datacenter,
    };
    config.https_addr = args.https_addr;
    // Certificates are named under the DNS domain (server.<dc>.<domain>), as Consul's are.
    config.tls = match args.tls.load(&args.dns.domain, args.https_addr.is_some()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("registry-server: {e}");
            std::process::exit(2);
        }
    };
    config.dns = match args.dns.config() {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("registry-server: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("registry-server: {e}");
        std::process::exit(2);
    }

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        registry_api::process::shutdown_signal().await;
        signal.cancel();
    });
    registry_server::run(config, shutdown).await
}
