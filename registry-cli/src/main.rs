//! `registry`: Consul's command line over the registry's HTTP API
//! (<https://developer.hashicorp.com/consul/commands>): `members`, `catalog`, `services`,
//! `kv`, `lock`, `watch`, `operator raft`, `snapshot`, `reload`, `tls`.
//!
//! Flags are spelled as Consul spells them, with one dash (`-http-addr`, `-recurse`), or as
//! clap does, with two (`--http-addr`): a single-dash long flag is rewritten before parsing
//! ([`args::consul_style`]). The agent is found through `-http-addr`, else
//! `REGISTRY_HTTP_ADDR`, else Consul's `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`; the token
//! through `-token`, `REGISTRY_HTTP_TOKEN` or `CONSUL_HTTP_TOKEN`.
//!
//! Exit codes, as Consul's and as scripts expect: 0 success, 1 an error from the API or the
//! command (its reason on stderr as `Error ...: <reason>`), 2 a usage error; `lock` exits
//! with its child's code.
//!
//! Owns: the command tree and the dispatch. Must not touch: HTTP details (the typed client in
//! `registry-api`) or any server-side rule.

mod args;
mod cmd;
mod output;

use args::{Cli, Command};
use clap::{CommandFactory, FromArgMatches};

/// A command's failure: the text for stderr (exit code 1).
#[derive(Debug)]
pub struct Failure(pub String);

impl Failure {
    /// `Error <doing>: <reason>`, Consul's form.
    pub fn doing(doing: &str, reason: impl Into<Reason>) -> Self {
        Failure(format!("Error {doing}: {}", reason.into().0))
    }
}

/// Why something failed, as one line: an error with its causes (`transport: error sending
/// request: ... connection refused`), so that the user sees the root cause.
pub struct Reason(String);

/// `e` and each of its sources, joined with `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl From<registry_api::client::ClientError> for Reason {
    fn from(e: registry_api::client::ClientError) -> Self {
        Reason(chain(&e))
    }
}

impl From<reqwest::Error> for Reason {
    fn from(e: reqwest::Error) -> Self {
        Reason(chain(&e))
    }
}

impl From<std::io::Error> for Reason {
    fn from(e: std::io::Error) -> Self {
        Reason(chain(&e))
    }
}

impl From<registry_api::snapshot::SnapshotError> for Reason {
    fn from(e: registry_api::snapshot::SnapshotError) -> Self {
        Reason(e.to_string())
    }
}

impl From<String> for Reason {
    fn from(e: String) -> Self {
        Reason(e)
    }
}

impl From<&str> for Reason {
    fn from(e: &str) -> Self {
        Reason(e.to_string())
    }
}

/// What a command returns: its exit code, or a failure.
pub type CmdResult = Result<i32, Failure>;

fn main() {
    let argv = args::consul_style(std::env::args_os().collect(), &Cli::command());
    let matches = Cli::command().get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error starting: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    // Blocking reads (stdin of `kv put -`) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

/// Runs the command; the process's exit code.
async fn run(cli: Cli) -> i32 {
    if let Command::Tls(command) = &cli.command {
        // Files only: no agent to ask.
        return registry_api::tls::flags::run_command(command);
    }
    let ctx = match cmd::Ctx::new(&cli.global) {
        Ok(ctx) => ctx,
        Err(Failure(text)) => {
            eprintln!("{text}");
            return 2;
        }
    };
    let result = match cli.command {
        Command::Members(a) => cmd::members::run(&ctx, a).await,
        Command::Catalog(a) => cmd::catalog::run(&ctx, a).await,
        Command::Services(a) => cmd::services::run(&ctx, a).await,
        Command::Kv(a) => cmd::kv::run(&ctx, a).await,
        Command::Lock(a) => cmd::lock::run(&ctx, a).await,
        Command::Watch(a) => cmd::watch::run(&ctx, a).await,
        Command::Operator(a) => cmd::operator::run(&ctx, a).await,
        Command::Snapshot(a) => cmd::snapshot::run(&ctx, a).await,
        Command::Acl(a) => cmd::acl::run(&ctx, a).await,
        Command::Reload => cmd::services::reload(&ctx).await,
        Command::Tls(_) => Ok(0),
    };
    match result {
        Ok(code) => code,
        Err(Failure(text)) => {
            eprintln!("{text}");
            1
        }
    }
}
