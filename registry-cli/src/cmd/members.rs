//! `registry members`: the cluster's members as the agent lists them
//! (`GET /v1/agent/members`), in Consul's columns.
//!
//! Owns: the members table. Must not touch: how the agent decides membership.

use super::Ctx;
use crate::{output, CmdResult, Failure};
use clap::Args;

/// `registry members`.
#[derive(Args, Debug)]
pub struct MembersArgs {
    /// Only members whose status is this (alive, failed, left, leaving).
    #[arg(long)]
    pub status: Option<String>,
}

/// Serf's status names, by code.
pub fn status_name(code: u8) -> &'static str {
    match code {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "none",
    }
}

/// Runs `members`.
pub async fn run(ctx: &Ctx, a: MembersArgs) -> CmdResult {
    let mut members = ctx
        .client
        .agent_members()
        .await
        .map_err(|e| Failure::doing("retrieving members", e))?;
    if let Some(want) = &a.status {
        members.retain(|m| status_name(m.status) == want);
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.json() {
        output::json(&members);
        return Ok(0);
    }
    let tag = |m: &registry_api::AgentMember, k: &str| m.tags.get(k).cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let kind = match tag(m, "role").as_str() {
                "consul" => "server",
                "node" => "client",
                _ => "unknown",
            };
            let build = tag(m, "build");
            vec![
                m.name.clone(),
                format!("{}:{}", m.addr, m.port),
                status_name(m.status).to_string(),
                kind.to_string(),
                build.split(':').next().unwrap_or_default().to_string(),
                tag(m, "vsn"),
                tag(m, "dc"),
            ]
        })
        .collect();
    output::table(
        &[
            "Node", "Address", "Status", "Type", "Build", "Protocol", "DC",
        ],
        &rows,
    );
    Ok(0)
}
