//! `registry operator raft list-peers|remove-peer|transfer-leader`
//! (<https://developer.hashicorp.com/consul/commands/operator/raft>), over
//! `/v1/operator/raft/configuration`, `DELETE /v1/operator/raft/peer` and
//! `POST /v1/operator/raft/transfer-leader`.
//!
//! Owns: the commands' arguments and output. Must not touch: how servers change the Raft
//! configuration.

use super::Ctx;
use crate::{output, CmdResult, Failure};
use clap::{Args, Subcommand};

/// `registry operator ...`.
#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Raft operations.
    #[command(subcommand)]
    Raft(RaftCmd),
}

/// `registry operator raft ...`.
#[derive(Subcommand, Debug)]
pub enum RaftCmd {
    /// Lists the Raft peers: node, id, address, state, voter.
    ListPeers,
    /// Removes a peer from the Raft configuration (by -address or -id).
    RemovePeer(RemovePeerArgs),
    /// Hands leadership to another server (-id: that one).
    TransferLeader(TransferArgs),
}

/// `registry operator raft remove-peer`.
#[derive(Args, Debug)]
pub struct RemovePeerArgs {
    /// The peer's RPC address (host:port).
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    pub address: Option<String>,
    /// The peer's Raft id.
    #[arg(long)]
    pub id: Option<String>,
}

/// `registry operator raft transfer-leader`.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// The server to lead next (its Raft id; default: any other voter).
    #[arg(long)]
    pub id: Option<String>,
}

/// Runs an `operator` command.
pub async fn run(ctx: &Ctx, cmd: OperatorCmd) -> CmdResult {
    let OperatorCmd::Raft(cmd) = cmd;
    match cmd {
        RaftCmd::ListPeers => {
            let conf = ctx
                .client
                .raft_configuration()
                .await
                .map_err(|e| Failure::doing("getting peers", e))?;
            if ctx.json() {
                output::json(&conf);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = conf
                .servers
                .iter()
                .map(|s| {
                    vec![
                        s.node.clone(),
                        s.id.clone(),
                        s.address.clone(),
                        if s.leader { "leader" } else { "follower" }.into(),
                        s.voter.to_string(),
                        if s.protocol_version.is_empty() {
                            "<=1".into()
                        } else {
                            s.protocol_version.clone()
                        },
                    ]
                })
                .collect();
            output::table(
                &["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
                &rows,
            );
        }
        RaftCmd::RemovePeer(a) => {
            let (query, what) = match (&a.address, &a.id) {
                (Some(addr), _) => (
                    vec![("address", addr.as_str())],
                    format!("address {addr:?}"),
                ),
                (None, Some(id)) => (vec![("id", id.as_str())], format!("ID {id:?}")),
                (None, None) => return Err(Failure("Error: -address or -id is required".into())),
            };
            ctx.client
                .raft_remove_peer(&query)
                .await
                .map_err(|e| Failure::doing("removing peer", e))?;
            println!("Removed peer with {what}");
        }
        RaftCmd::TransferLeader(a) => {
            let ok = ctx
                .client
                .raft_transfer_leader(a.id.as_deref())
                .await
                .map_err(|e| Failure::doing("transferring leadership", e))?;
            if !ok {
                return Err(Failure(
                    "Error transferring leadership: the server did not report success".into(),
                ));
            }
            println!("Success");
        }
    }
    Ok(0)
}
