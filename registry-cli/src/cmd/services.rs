//! `registry services register|deregister <file>...` (definitions in Consul's configuration
//! format, JSON or HCL, read by `registry_api::config_file` as agent configuration files are)
//! and `registry reload` (`PUT /v1/agent/reload`).
//!
//! Owns: the commands' messages. Must not touch: the definition format (registry-api) or its
//! validation (the agent's).

use super::Ctx;
use crate::{CmdResult, Failure};
use clap::{Args, Subcommand};
use registry_api::config_file;
use registry_api::service_def::ServiceDefinition;
use std::path::PathBuf;

/// `registry services ...`.
#[derive(Subcommand, Debug)]
pub enum ServicesCmd {
    /// Registers the services defined in the files with the local agent.
    Register(RegisterArgs),
    /// Deregisters the services defined in the files (or -id) from the local agent.
    Deregister(DeregisterArgs),
}

/// `registry services register`.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// Files with `service` / `services` definitions (Consul's JSON format).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `registry services deregister`.
#[derive(Args, Debug)]
pub struct DeregisterArgs {
    /// The instance id to deregister (instead of files).
    #[arg(long)]
    pub id: Option<String>,
    /// Files with `service` / `services` definitions.
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    pub files: Vec<PathBuf>,
}

/// The definitions of `files` (JSON, or HCL for `*.hcl`, as configuration files are read);
/// the error names the file and the line.
async fn read_definitions(files: &[PathBuf]) -> Result<Vec<ServiceDefinition>, Failure> {
    let mut out = Vec::new();
    for path in files {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Failure(format!("Error reading {}: {e}", path.display())))?;
        let parsed = config_file::parse_file(path, &text)
            .map_err(|e| Failure(format!("Error parsing {e}")))?;
        if parsed.services.is_empty() {
            return Err(Failure(format!(
                "Error parsing {}: no service definitions (\"service\" or \"services\")",
                path.display()
            )));
        }
        out.extend(parsed.services.into_iter().map(|(_, def)| def));
    }
    Ok(out)
}

/// Runs a `services` command.
pub async fn run(ctx: &Ctx, cmd: ServicesCmd) -> CmdResult {
    match cmd {
        ServicesCmd::Register(a) => {
            for def in read_definitions(&a.files).await? {
                let name = &def.registration.name;
                ctx.client
                    .agent_service_register(&def.registration)
                    .await
                    .map_err(|e| Failure::doing(&format!("registering service {name:?}"), e))?;
                println!("Registered service: {name}");
            }
        }
        ServicesCmd::Deregister(a) => {
            let ids: Vec<String> = match a.id {
                Some(id) => vec![id],
                None => read_definitions(&a.files)
                    .await?
                    .iter()
                    .map(|d| d.id().to_string())
                    .collect(),
            };
            for id in ids {
                ctx.client
                    .agent_service_deregister(&id)
                    .await
                    .map_err(|e| Failure::doing(&format!("deregistering service {id:?}"), e))?;
                println!("Deregistered service: {id}");
            }
        }
    }
    Ok(0)
}

/// Runs `reload`.
pub async fn reload(ctx: &Ctx) -> CmdResult {
    ctx.client
        .agent_reload()
        .await
        .map_err(|e| Failure::doing("reloading", e))?;
    println!("Configuration reload triggered");
    Ok(0)
}
