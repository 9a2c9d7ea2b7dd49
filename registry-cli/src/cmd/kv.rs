//! `registry kv get|put|delete|export|import`, with Consul's messages
//! (<https://developer.hashicorp.com/consul/commands/kv>); export and import speak Consul's
//! format (a JSON array of `{"key", "flags", "value"}`, the value in base64).
//!
//! Owns: the commands' arguments and output. Must not touch: the KV rules (the servers').

use super::{data_arg, Ctx};
use crate::{output, CmdResult, Failure};
use clap::{Args, Subcommand};
use registry_api::kv::{KvExportEntry, KvPair};

/// `registry kv ...`.
#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Prints a key's value (or, with -recurse, every key under a prefix).
    Get(GetArgs),
    /// Writes a value (`-` reads stdin, `@file` a file).
    Put(PutArgs),
    /// Deletes a key (or, with -recurse, a prefix).
    Delete(DeleteArgs),
    /// Prints the keys under a prefix as JSON (Consul's export format).
    Export(ExportArgs),
    /// Writes keys from JSON in the export format (argument, `-` for stdin or `@file`).
    Import(ImportArgs),
}

/// `registry kv get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key (a prefix with -recurse or -keys).
    #[arg(default_value = "")]
    pub key: String,
    /// Every key under the prefix, as `key:value`.
    #[arg(long)]
    pub recurse: bool,
    /// Only the keys under the prefix (up to -separator).
    #[arg(long)]
    pub keys: bool,
    /// With -keys: list up to this separator.
    #[arg(long, default_value = "/")]
    pub separator: String,
    /// All the entry's fields.
    #[arg(long)]
    pub detailed: bool,
}

/// `registry kv put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value: the text, `-` for stdin, `@file` for a file's bytes; empty when left out.
    #[arg(allow_hyphen_values = true)]
    pub data: Option<String>,
    /// Flags to store with the key.
    #[arg(long)]
    pub flags: Option<u64>,
    /// Check-and-set: write only if the key's modify index is -modify-index.
    #[arg(long)]
    pub cas: bool,
    /// With -cas: the expected modify index (0: only if the key does not exist).
    #[arg(long, default_value_t = 0)]
    pub modify_index: u64,
    /// Acquire the key as a lock for -session.
    #[arg(long)]
    pub acquire: bool,
    /// Release the key's lock held by -session.
    #[arg(long)]
    pub release: bool,
    /// The session for -acquire and -release.
    #[arg(long)]
    pub session: Option<String>,
}

/// `registry kv delete`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key (a prefix with -recurse).
    #[arg(default_value = "")]
    pub key: String,
    /// Delete every key under the prefix.
    #[arg(long)]
    pub recurse: bool,
    /// Check-and-set: delete only if the key's modify index is -modify-index.
    #[arg(long)]
    pub cas: bool,
    /// With -cas: the expected modify index.
    #[arg(long, default_value_t = 0)]
    pub modify_index: u64,
}

/// `registry kv export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The prefix (all keys when left out).
    #[arg(default_value = "")]
    pub prefix: String,
}

/// `registry kv import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The JSON: the text, `-` for stdin, `@file` for a file.
    #[arg(default_value = "-")]
    pub data: String,
    /// Put this in front of every imported key.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// A value as text (lossy for non-UTF-8 bytes, as a terminal shows them).
fn text(pair: &KvPair) -> String {
    String::from_utf8_lossy(pair.value.as_deref().unwrap_or_default()).into_owned()
}

/// Runs a `kv` command.
pub async fn run(ctx: &Ctx, cmd: KvCmd) -> CmdResult {
    match cmd {
        KvCmd::Get(a) => get(ctx, a).await,
        KvCmd::Put(a) => put(ctx, a).await,
        KvCmd::Delete(a) => delete(ctx, a).await,
        KvCmd::Export(a) => {
            let pairs = list(ctx, &a.prefix, "exporting").await?;
            let entries: Vec<KvExportEntry> = pairs.iter().map(KvExportEntry::from_pair).collect();
            output::json(&entries);
            Ok(0)
        }
        KvCmd::Import(a) => {
            let data = data_arg(&a.data)
                .await
                .map_err(|e| Failure::doing("reading the data", e))?;
            let entries: Vec<KvExportEntry> = registry_api::decode::from_slice(&data)
                .map_err(|e| Failure::doing("parsing the data", e))?;
            for entry in entries {
                let value = entry
                    .value_bytes()
                    .map_err(|e| Failure::doing("decoding the data", e))?;
                let key = format!("{}{}", a.prefix, entry.key);
                let flags = entry.flags.to_string();
                let mut q = ctx.dc_query();
                q.push(("flags", &flags));
                ctx.client
                    .kv_put(&key, value, &q)
                    .await
                    .map_err(|e| Failure::doing(&format!("importing key {key:?}"), e))?;
                println!("Imported: {key}");
            }
            Ok(0)
        }
    }
}

/// Every entry under `prefix`.
async fn list(ctx: &Ctx, prefix: &str, doing: &str) -> Result<Vec<KvPair>, Failure> {
    Ok(ctx
        .client
        .kv_get(prefix, &ctx.opts(), &[("recurse", "")])
        .await
        .map_err(|e| Failure::doing(doing, e))?
        .0
        .unwrap_or_default())
}

async fn get(ctx: &Ctx, a: GetArgs) -> CmdResult {
    if a.keys {
        let (keys, _) = ctx
            .client
            .get::<Option<Vec<String>>>(
                &format!("/v1/kv/{}?keys&separator={}", a.key, encode(&a.separator)),
                &ctx.opts(),
            )
            .await
            .or_else(|e| match e.status() {
                Some(404) => Ok((None, Default::default())),
                _ => Err(e),
            })
            .map_err(|e| Failure::doing("querying Consul agent", e))?;
        let keys = keys.unwrap_or_default();
        if ctx.json() {
            output::json(&keys);
        } else {
            for k in keys {
                println!("{k}");
            }
        }
        return Ok(0);
    }
    if a.recurse {
        let pairs = list(ctx, &a.key, "querying Consul agent").await?;
        if ctx.json() {
            output::json(&pairs);
            return Ok(0);
        }
        for pair in &pairs {
            if a.detailed {
                print_detailed(pair);
                println!();
            } else {
                println!("{}:{}", pair.key, text(pair));
            }
        }
        return Ok(0);
    }
    if a.key.is_empty() {
        return Err(Failure("Error! Missing KEY argument".into()));
    }
    let (pairs, _) = ctx
        .client
        .kv_get(&a.key, &ctx.opts(), &[])
        .await
        .map_err(|e| Failure::doing("querying Consul agent", e))?;
    let Some(pair) = pairs.and_then(|p| p.into_iter().next()) else {
        return Err(Failure(format!("Error! No key exists at: {}", a.key)));
    };
    if ctx.json() {
        output::json(&pair);
    } else if a.detailed {
        print_detailed(&pair);
    } else {
        println!("{}", text(&pair));
    }
    Ok(0)
}

/// Consul's `-detailed` listing.
fn print_detailed(pair: &KvPair) {
    let session = if pair.session.is_empty() {
        "-"
    } else {
        &pair.session
    };
    let rows = vec![
        vec!["CreateIndex".into(), pair.create_index.to_string()],
        vec!["Flags".into(), pair.flags.to_string()],
        vec!["Key".into(), pair.key.clone()],
        vec!["LockIndex".into(), pair.lock_index.to_string()],
        vec!["ModifyIndex".into(), pair.modify_index.to_string()],
        vec!["Session".into(), session.to_string()],
        vec!["Value".into(), text(pair)],
    ];
    print!(
        "{}",
        output::table_text(&["", ""], &rows).trim_start_matches('\n')
    );
}

/// `s` escaped for a query string value.
fn encode(s: &str) -> String {
    registry_api::client::path_segment(s)
}

async fn put(ctx: &Ctx, a: PutArgs) -> CmdResult {
    let value = match &a.data {
        Some(d) => data_arg(d)
            .await
            .map_err(|e| Failure::doing("reading the data", e))?,
        None => Vec::new(),
    };
    let flags = a.flags.map(|f| f.to_string());
    let cas = a.modify_index.to_string();
    let mut q = ctx.dc_query();
    if let Some(f) = &flags {
        q.push(("flags", f));
    }
    if a.cas {
        q.push(("cas", &cas));
    }
    if a.acquire || a.release {
        let Some(session) = a.session.as_deref() else {
            return Err(Failure(
                "Error! Missing -session (required with -acquire and -release)".into(),
            ));
        };
        q.push((if a.acquire { "acquire" } else { "release" }, session));
    }
    let ok = ctx
        .client
        .kv_put(&a.key, value, &q)
        .await
        .map_err(|e| Failure(format!("Error! Failed writing data: {e}")))?;
    if !ok {
        let why = if a.cas {
            "CAS failed"
        } else if a.acquire {
            "lock acquisition failed"
        } else {
            "lock release failed"
        };
        return Err(Failure(format!("Error! Did not write to {}: {why}", a.key)));
    }
    if a.acquire {
        println!("Success! Lock acquired on: {}", a.key);
    } else if a.release {
        println!("Success! Lock released on: {}", a.key);
    } else {
        println!("Success! Data written to: {}", a.key);
    }
    Ok(0)
}

async fn delete(ctx: &Ctx, a: DeleteArgs) -> CmdResult {
    if a.key.is_empty() && !a.recurse {
        return Err(Failure("Error! Missing KEY argument".into()));
    }
    let cas = a.modify_index.to_string();
    let mut q = ctx.dc_query();
    if a.recurse {
        q.push(("recurse", ""));
    }
    if a.cas {
        q.push(("cas", &cas));
    }
    let ok = ctx
        .client
        .kv_delete(&a.key, &q)
        .await
        .map_err(|e| Failure(format!("Error! Did not delete key {}: {e}", a.key)))?;
    if !ok {
        return Err(Failure(format!(
            "Error! Did not delete key {}: CAS failed",
            a.key
        )));
    }
    if a.recurse {
        println!("Success! Deleted keys with prefix: {}", a.key);
    } else {
        println!("Success! Deleted key: {}", a.key);
    }
    Ok(0)
}
