//! The command tree (clap derive) and Consul's one-dash flag spelling.
//!
//! Owns: the top-level flags and subcommand list, and the argv rewrite. Must not touch: what
//! a command does (`cmd/`).

use crate::cmd;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::ffi::OsString;

/// Consul's command line for the registry: talks to an agent's (or server's) HTTP API.
///
/// Flags take one dash or two (`-http-addr` = `--http-addr`). Exit codes: 0 success, 1 an
/// error from the API or the command, 2 a usage error.
#[derive(Parser, Debug)]
#[command(name = "registry", version)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (Consul's HTTP API options).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The agent's HTTP address ([http://]host:port); default REGISTRY_HTTP_ADDR, then
    /// CONSUL_HTTP_ADDR, then 127.0.0.1:8500.
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// ACL token sent as X-Consul-Token; default REGISTRY_HTTP_TOKEN, then CONSUL_HTTP_TOKEN.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Datacenter to ask (default: the agent's).
    #[arg(long, global = true, value_name = "DC")]
    pub datacenter: Option<String>,
    /// Output: human tables or JSON.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// CA certificate (PEM) an https:// agent's certificate must chain to; default
    /// REGISTRY_CACERT, then CONSUL_CACERT.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) shown to an agent that requires one (--verify-incoming);
    /// default REGISTRY_CLIENT_CERT, then CONSUL_CLIENT_CERT.
    #[arg(long, global = true, value_name = "FILE")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's key; default REGISTRY_CLIENT_KEY, then CONSUL_CLIENT_KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub client_key: Option<std::path::PathBuf>,
    /// Name the agent's certificate must carry, instead of the host dialled (e.g.
    /// server.dc1.consul); default REGISTRY_TLS_SERVER_NAME, then CONSUL_TLS_SERVER_NAME.
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// Output formats.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, as Consul prints them.
    Table,
    /// The API's JSON.
    Json,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Lists the cluster's members (nodes with an agent).
    Members(cmd::members::MembersArgs),
    /// Reads the catalog: datacenters, nodes, services.
    #[command(subcommand)]
    Catalog(cmd::catalog::CatalogCmd),
    /// Registers or deregisters services with the local agent from definition files.
    #[command(subcommand)]
    Services(cmd::services::ServicesCmd),
    /// Reads and writes the key/value store.
    #[command(subcommand)]
    Kv(cmd::kv::KvCmd),
    /// Runs a command while holding a lock in the KV store (as `consul lock`).
    Lock(cmd::lock::LockArgs),
    /// Prints a view's JSON each time it changes (blocking queries), or runs a handler.
    Watch(cmd::watch::WatchArgs),
    /// Cluster operations.
    #[command(subcommand)]
    Operator(cmd::operator::OperatorCmd),
    /// Saves, restores and inspects snapshots of the servers' state.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCmd),
    /// ACL bootstrap, policies, roles and tokens (as `consul acl`).
    #[command(subcommand)]
    Acl(cmd::acl::AclCmd),
    /// Asks the agent to re-read its configuration files.
    Reload,
    /// Makes a CA and certificates for TLS (as `consul tls`), in the current directory.
    #[command(subcommand)]
    Tls(registry_api::tls::flags::TlsCommand),
}

/// The long flags of `command` and its subcommands, each with whether it takes a value.
fn long_flags(command: &clap::Command, out: &mut BTreeMap<String, bool>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            let takes_value = arg.get_action().takes_values();
            out.insert(long.to_string(), takes_value);
        }
    }
    for sub in command.get_subcommands() {
        long_flags(sub, out);
    }
}

/// `argv` with Consul's one-dash long flags (`-http-addr`, `-recurse=true`) rewritten to
/// clap's two dashes. Only names that are flags of this tree are touched, never short flags
/// (`-h`), negative numbers, values, anything after `--`, or the child command of `lock`
/// (everything from its second positional on).
pub fn consul_style(argv: Vec<OsString>, command: &clap::Command) -> Vec<OsString> {
    let mut flags = BTreeMap::new();
    long_flags(command, &mut flags);
    flags.insert("help".into(), false);
    flags.insert("version".into(), false);
    let mut out = Vec::with_capacity(argv.len());
    let mut args = argv.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    let mut value_next = false;
    let mut positionals = 0;
    let mut in_lock = false;
    let mut lock_positionals = 0;
    let mut verbatim = false;
    for arg in args {
        if verbatim {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        if text == "--" {
            verbatim = true;
            out.push(arg);
            continue;
        }
        if let Some(rest) = text.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            let name = rest.split('=').next().unwrap_or(rest);
            if name.len() > 1 {
                if let Some(takes_value) = flags.get(name) {
                    value_next = *takes_value && !rest.contains('=');
                    out.push(OsString::from(format!("--{rest}")));
                    continue;
                }
            }
            out.push(arg);
            continue;
        }
        if let Some(rest) = text.strip_prefix("--") {
            let name = rest.split('=').next().unwrap_or(rest);
            value_next = flags.get(name).copied().unwrap_or(false) && !rest.contains('=');
            out.push(arg);
            continue;
        }
        // A positional.
        positionals += 1;
        if in_lock {
            lock_positionals += 1;
            if lock_positionals == 2 {
                // The child command starts here: leave it exactly as given.
                verbatim = true;
            }
        } else if text == "lock" && positionals == 1 {
            in_lock = true;
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn rewrite(args: &[&str]) -> Vec<String> {
        let argv = std::iter::once("registry")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        consul_style(argv, &Cli::command())
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn one_dash_long_flags_become_two() {
        assert_eq!(
            rewrite(&["-http-addr", "127.0.0.1:1", "kv", "get", "-recurse", "a"]),
            ["--http-addr", "127.0.0.1:1", "kv", "get", "--recurse", "a"]
        );
        assert_eq!(
            rewrite(&["kv", "put", "-flags=5", "k", "-5"]),
            ["kv", "put", "--flags=5", "k", "-5"]
        );
        // A value that looks like a flag stays a value.
        assert_eq!(
            rewrite(&["kv", "put", "-token", "-recurse", "k"]),
            ["kv", "put", "--token", "-recurse", "k"]
        );
        assert_eq!(rewrite(&["-h"]), ["-h"]);
        assert_eq!(rewrite(&["-help"]), ["--help"]);
        assert_eq!(
            rewrite(&["kv", "get", "--", "-recurse"]),
            ["kv", "get", "--", "-recurse"]
        );
    }

    #[test]
    fn the_child_of_lock_is_left_alone() {
        assert_eq!(
            rewrite(&["lock", "-timeout", "5s", "app", "cmd", "-recurse", "-format"]),
            [
                "lock",
                "--timeout",
                "5s",
                "app",
                "cmd",
                "-recurse",
                "-format"
            ]
        );
    }

    #[test]
    fn the_tree_is_valid() {
        Cli::command().debug_assert();
    }
}
