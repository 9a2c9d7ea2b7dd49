//! `registry snapshot save|restore|inspect <file>`
//! (<https://developer.hashicorp.com/consul/commands/snapshot>): `save` is `GET /v1/snapshot`
//! written to a temp file beside the target, verified, then renamed into place (a failed save
//! never leaves a partial file under the name); `restore` is `PUT /v1/snapshot` with the
//! file; `inspect` reads and verifies a file locally (`registry_api::snapshot::inspect`).
//!
//! Owns: the commands' files and messages. Must not touch: the archive format (registry-api).

use super::Ctx;
use crate::{output, CmdResult, Failure};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// `registry snapshot ...`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Saves the servers' state to a file.
    Save(FileArg),
    /// Restores the servers' state from a file.
    Restore(FileArg),
    /// Prints what a snapshot file holds (read locally).
    Inspect(FileArg),
}

/// The snapshot file.
#[derive(Args, Debug)]
pub struct FileArg {
    /// The snapshot file.
    pub file: PathBuf,
}

/// Runs a `snapshot` command.
pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> CmdResult {
    match cmd {
        SnapshotCmd::Save(a) => save(ctx, &a.file).await,
        SnapshotCmd::Restore(a) => {
            let bytes = tokio::fs::read(&a.file)
                .await
                .map_err(|e| Failure(format!("Error opening snapshot file: {e}")))?;
            ctx.client
                .send(
                    reqwest::Method::PUT,
                    "/v1/snapshot",
                    &ctx.dc_query(),
                    Some(bytes.into()),
                )
                .await
                .map_err(|e| Failure::doing("restoring snapshot", e))?;
            println!("Restored snapshot");
            Ok(0)
        }
        SnapshotCmd::Inspect(a) => {
            let bytes = tokio::fs::read(&a.file)
                .await
                .map_err(|e| Failure(format!("Error opening snapshot file: {e}")))?;
            let info = registry_api::snapshot::inspect(&bytes)
                .map_err(|e| Failure::doing("verifying snapshot", e))?;
            if ctx.json() {
                output::json(&info);
                return Ok(0);
            }
            let mut rows = vec![
                vec!["Index".to_string(), info.index.to_string()],
                vec!["Term".to_string(), info.term.to_string()],
                vec!["Version".to_string(), info.version.to_string()],
                vec!["Datacenter".to_string(), info.datacenter.clone()],
                vec!["Node".to_string(), info.node.clone()],
                vec!["Created".to_string(), info.created.clone()],
                vec!["Size".to_string(), info.size.to_string()],
                vec!["Checksum".to_string(), info.checksum.clone()],
                vec!["Rows".to_string(), info.rows.to_string()],
            ];
            for (table, count) in &info.tables {
                rows.push(vec![format!("  {table}"), count.to_string()]);
            }
            print!(
                "{}",
                output::table_text(&["", ""], &rows).trim_start_matches('\n')
            );
            Ok(0)
        }
    }
}

/// `snapshot save`: download, verify, write beside the target, rename.
async fn save(ctx: &Ctx, file: &Path) -> CmdResult {
    let resp = ctx
        .client
        .send(reqwest::Method::GET, "/v1/snapshot", &ctx.dc_query(), None)
        .await
        .map_err(|e| Failure::doing("saving snapshot", e))?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Failure::doing("saving snapshot", e))?;
    let info = registry_api::snapshot::inspect(&bytes)
        .map_err(|e| Failure::doing("verifying snapshot", e))?;
    let mut temp = file.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let written = async {
        // The archive holds every KV value: readable by its owner only, and never written
        // through a file (or symlink) that is already there.
        use tokio::io::AsyncWriteExt;
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await?;
        out.write_all(&bytes).await?;
        out.sync_all().await?;
        tokio::fs::rename(&temp, file).await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(Failure(format!("Error writing snapshot file: {e}")));
    }
    println!("Saved and verified snapshot to index {}", info.index);
    Ok(0)
}
