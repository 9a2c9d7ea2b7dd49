//! `registry catalog datacenters|nodes|services`: reads of the catalog
//! (`/v1/catalog/datacenters`, `/nodes`, `/services`), in Consul's columns.
//!
//! Owns: those tables. Must not touch: the catalog's rules.

use super::Ctx;
use crate::{output, CmdResult, Failure};
use clap::{Args, Subcommand};

/// `registry catalog ...`.
#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Lists the known datacenters.
    Datacenters,
    /// Lists the nodes of the catalog.
    Nodes(NodesArgs),
    /// Lists the services of the catalog.
    Services(ServicesArgs),
}

/// `registry catalog nodes`.
#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Only nodes that run an instance of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Show the node's full id (not only its first 8 characters).
    #[arg(long)]
    pub detailed: bool,
}

/// `registry catalog services`.
#[derive(Args, Debug)]
pub struct ServicesArgs {
    /// Show each service's tags.
    #[arg(long)]
    pub tags: bool,
}

/// Runs a `catalog` command.
pub async fn run(ctx: &Ctx, cmd: CatalogCmd) -> CmdResult {
    match cmd {
        CatalogCmd::Datacenters => {
            let dcs = ctx
                .client
                .catalog_datacenters()
                .await
                .map_err(|e| Failure::doing("listing datacenters", e))?;
            if ctx.json() {
                output::json(&dcs);
            } else {
                for dc in dcs {
                    println!("{dc}");
                }
            }
        }
        CatalogCmd::Nodes(a) => {
            let mut nodes = ctx
                .client
                .catalog_nodes(&ctx.opts())
                .await
                .map_err(|e| Failure::doing("listing nodes", e))?
                .0;
            if let Some(service) = &a.service {
                let instances = ctx
                    .client
                    .catalog_service(service, &ctx.opts())
                    .await
                    .map_err(|e| Failure::doing("listing nodes", e))?
                    .0;
                nodes.retain(|n| instances.iter().any(|i| i.node == n.node));
            }
            if ctx.json() {
                output::json(&nodes);
                return Ok(0);
            }
            if nodes.is_empty() {
                eprintln!("No nodes match the given query - try expanding your search.");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let id = if a.detailed {
                        n.id.clone()
                    } else {
                        n.id.chars().take(8).collect()
                    };
                    vec![n.node.clone(), id, n.address.clone(), n.datacenter.clone()]
                })
                .collect();
            output::table(&["Node", "ID", "Address", "DC"], &rows);
        }
        CatalogCmd::Services(a) => {
            let services = ctx
                .client
                .catalog_services(&ctx.opts())
                .await
                .map_err(|e| Failure::doing("listing services", e))?
                .0;
            if ctx.json() {
                output::json(&services);
                return Ok(0);
            }
            if a.tags {
                let rows: Vec<Vec<String>> = services
                    .iter()
                    .map(|(name, tags)| {
                        let mut tags = tags.clone();
                        tags.sort();
                        tags.dedup();
                        vec![name.clone(), tags.join(",")]
                    })
                    .collect();
                print!(
                    "{}",
                    output::table_text(&["", ""], &rows).trim_start_matches('\n')
                );
            } else {
                for name in services.keys() {
                    println!("{name}");
                }
            }
        }
    }
    Ok(0)
}
