//! Persistence of the agent's definitions under `data_dir`: `services.json` and
//! `checks.json`, written to a temporary file, fsynced and renamed so a crash never leaves half
//! a file, one write for all the changes made while the one before it ran (group commit), and read back leniently in case one does anyway. A restarted agent so brings its
//! services and checks back without the application registering again, as Consul's agent does
//! with its `services/` and `checks/` directories.
//!
//! Owns: the file formats, atomic writes and torn-file handling. Must not touch: the rules of
//! the state (loaded definitions go through the same validation as registrations).

use super::state::LocalService;
use super::Agent;
use registry_api::{AgentService, CheckRegistration, Error as ApiError};
use std::path::{Path, PathBuf};

/// On-disk form of `services.json`.
type PersistedServices = Vec<AgentService>;
/// On-disk form of `checks.json`.
type PersistedChecks = Vec<CheckRegistration>;
/// On-disk form of `tokens.json` (mode 0600): the tokens services and checks were
/// registered with, apart from the definitions so that only this file holds secrets.
type PersistedTokens = Vec<PersistedToken>;

/// One entry of `tokens.json`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PersistedToken {
    /// `service` or `check`.
    kind: String,
    /// The service's instance id or the check's id.
    #[serde(rename = "ID")]
    id: String,
    /// The token. Never logged.
    token: String,
}

/// The temporary file [`write_atomically`] writes before renaming it over `path`: in the
/// same directory, because a rename is atomic only within one file system.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// One file of the agent's state to replace: where, what, and whether it holds secrets
/// (then it is readable by its owner only, 0600, from its creation on).
struct StateFile {
    path: PathBuf,
    bytes: Vec<u8>,
    private: bool,
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, renames it over
/// `path` and flushes the directory, so that after a crash or a power loss `path` holds the
/// old or the new content, never a part of either. Without the file's fsync a power loss
/// can leave the rename on disk but not the data (a zero-length file on ext4 and XFS);
/// without the directory's, the rename itself may be lost.
#[cfg(test)]
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_all_atomically(vec![StateFile {
        path: path.to_owned(),
        bytes: bytes.to_vec(),
        private: false,
    }])
    .await
}

/// [`write_atomically`] for several files of one directory at once: their temporary files
/// are written and fsynced side by side (on the blocking pool, so the disk sees them
/// together and can commit them in one go), then renamed, then the directory is fsynced
/// once. Each file is replaced atomically; a crash between two renames leaves some files
/// new and some old, as one write after the other did before.
async fn write_all_atomically(files: Vec<StateFile>) -> std::io::Result<()> {
    let Some(dir) = files.first().map(|f| match f.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }) else {
        return Ok(());
    };
    // std::fs on the blocking pool: tokio::fs runs each call there anyway, and fsyncing a
    // directory needs a plain File.
    let mut writes = tokio::task::JoinSet::new();
    for f in &files {
        let (path, bytes, private) = (f.path.clone(), f.bytes.clone(), f.private);
        writes.spawn_blocking(move || write_temp_blocking(&path, &bytes, private));
    }
    // Every write is waited for, failed or not: none may still run once this returns.
    let mut failed = None;
    while let Some(done) = writes.join_next().await {
        if let Err(e) = done.map_err(std::io::Error::other).and_then(|r| r) {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let paths: Vec<PathBuf> = files.into_iter().map(|f| f.path).collect();
    tokio::task::spawn_blocking(move || {
        for path in &paths {
            std::fs::rename(temp_path(path), path)?;
        }
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes and fsyncs the temporary file of `path`.
fn write_temp_blocking(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temp_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        // The mode applies only to a file this call creates: a leftover must go first.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes a temporary file a crash left behind before its rename; the file it was meant
/// to replace still holds the previous state, which is what the agent loads.
async fn remove_leftover_temp(path: &Path) {
    let tmp = temp_path(path);
    match tokio::fs::remove_file(&tmp).await {
        Ok(()) => {
            tracing::info!(file = %tmp.display(), "removed an unfinished write left by a crash")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %tmp.display(), error = %e, "could not remove an unfinished write")
        }
    }
}

/// What [`read_entries`] found wrong with a file it still read what it could of.
#[derive(Debug, PartialEq, Eq)]
enum Damage {
    /// The file could not be read at all.
    Unreadable(String),
    /// The JSON is torn or not a list: the entries before the damage were kept.
    Torn {
        /// Entries read before the damage.
        kept: usize,
        /// The parser's complaint.
        error: String,
    },
    /// Some entries parsed as JSON but not as an entry, and were skipped.
    BadEntries(usize),
}

/// Parses a JSON list of entries, keeping whatever can be read: a torn file (zero length,
/// cut short by a crash, garbage) gives the entries that parse before the damage, and an
/// entry of the wrong shape is skipped. The agent must start after a power loss with what
/// it can read, rather than refuse to.
fn parse_entries<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, Option<Damage>) {
    /// Collects list items into a vector outside the deserializer, so that the items read
    /// before an error survive it.
    struct Salvage<'a>(&'a mut Vec<serde_json::Value>);
    impl<'de> serde::de::Visitor<'de> for Salvage<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<serde_json::Value>()? {
                self.0.push(item);
            }
            Ok(())
        }
    }
    let mut items = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed =
        serde::Deserializer::deserialize_seq(&mut de, Salvage(&mut items)).and_then(|()| de.end());
    let total = items.len();
    let entries: Vec<T> = items
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    let damage = match parsed {
        Err(e) => Some(Damage::Torn {
            kept: entries.len(),
            error: e.to_string(),
        }),
        Ok(()) if entries.len() < total => Some(Damage::BadEntries(total - entries.len())),
        Ok(()) => None,
    };
    (entries, damage)
}

/// Reads `path` with [`parse_entries`] (a missing file is empty), logging any damage with
/// the file's name. A torn
/// file that held anything is kept beside it as `<name>.corrupt` for a look by hand, since
/// the next change of state overwrites it.
async fn read_entries<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    read_entries_as(path, true).await
}

/// [`read_entries`]; `keep_copy: false` keeps no `.corrupt` copy (a file of secrets is not
/// copied where its mode would not protect it).
async fn read_entries_as<T: serde::de::DeserializeOwned>(path: &Path, keep_copy: bool) -> Vec<T> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            let damage = Damage::Unreadable(e.to_string());
            tracing::warn!(file = %path.display(), ?damage, "cannot read persisted agent state; starting without it");
            return Vec::new();
        }
    };
    let (entries, damage) = parse_entries(&bytes);
    if let Some(damage) = damage {
        let mut kept_copy = None;
        if keep_copy && !bytes.is_empty() && matches!(damage, Damage::Torn { .. }) {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".corrupt");
            let copy = path.with_file_name(name);
            if tokio::fs::write(&copy, &bytes).await.is_ok() {
                kept_copy = Some(copy.display().to_string());
            }
        }
        tracing::warn!(
            file = %path.display(),
            ?damage,
            loaded = entries.len(),
            copy = ?kept_copy,
            "persisted agent state is damaged (a crash or power loss?); starting with what could be read"
        );
    }
    entries
}

/// Writes those of `services.json`, `checks.json` and `tokens.json` (`encoded`, in that
/// order) whose content differs from what `written` says was last written. What it says
/// of the files being written is forgotten first: after a failure part of them may be new
/// on disk, and the next write must not skip them on the strength of an old record.
async fn write_changed(
    dir: &Path,
    written: &mut Written,
    encoded: [Vec<u8>; 3],
) -> std::io::Result<()> {
    const FILES: [(&str, bool); 3] = [
        ("services.json", false),
        ("checks.json", false),
        ("tokens.json", true),
    ];
    let mut slots = Vec::new();
    let mut files = Vec::new();
    for (i, bytes) in encoded.into_iter().enumerate() {
        if written.contents[i].as_ref() == Some(&bytes) {
            continue;
        }
        written.contents[i] = None;
        let (name, private) = FILES[i];
        slots.push((i, bytes.clone()));
        files.push(StateFile {
            path: dir.join(name),
            bytes,
            private,
        });
    }
    write_all_atomically(files).await?;
    for (i, bytes) in slots {
        written.contents[i] = Some(bytes);
    }
    Ok(())
}

/// What the agent last wrote of its state, kept under `persist_lock`. No `Debug` of the
/// contents: `tokens.json` holds secrets.
#[derive(Default)]
pub(super) struct Written {
    /// The number of the last change the files on disk include.
    upto: u64,
    /// The last content written of `services.json`, `checks.json` and `tokens.json`, in
    /// that order (`None` before the first write since start): an unchanged file is not
    /// written again.
    contents: [Option<Vec<u8>>; 3],
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("upto", &self.upto)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Makes the change the caller just made to the state durable: returns once
    /// `services.json`, `checks.json` and `tokens.json` hold it. Group commit: the change
    /// gets a number; one write at a time takes the whole current state and the number of
    /// the last change in it, and a caller whose change a write that started after it has
    /// already covered returns without writing. Concurrent registrations on one agent so
    /// share writes (of the files that changed, fsynced side by side, then their directory),
    /// rather than queueing for one each. A change whose write failed stays in memory (the
    /// caller is told, with a 500) and goes to disk with the next write, as before.
    pub(super) async fn persist(&self) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(dir) = &self.config.data_dir else {
            return Ok(());
        };
        // Numbered after the caller's change (made under the state lock, now released): a
        // copy of the state taken with `changes` at or past this number includes it.
        let mine = self.changes.fetch_add(1, SeqCst) + 1;
        let mut written = self.persist_lock.clone().lock_owned().await;
        if written.upto >= mine {
            return Ok(());
        }
        let (upto, services, checks, tokens): (
            u64,
            PersistedServices,
            PersistedChecks,
            PersistedTokens,
        ) = {
            let st = self.lock();
            let upto = self.changes.load(SeqCst);
            // Services from configuration files (and their checks) are read from the files
            // at every start, so a definition removed from them does not come back.
            let from_files = |id: &str| st.file_services.contains_key(id);
            let services = st.services.values().filter(|s| !from_files(&s.service.id));
            let checks = st
                .checks
                .values()
                .filter(|c| !from_files(&c.definition.service_id));
            let service_tokens = services.clone().filter_map(|s| {
                Some(PersistedToken {
                    kind: "service".into(),
                    id: s.service.id.clone(),
                    token: s.token.clone()?,
                })
            });
            let check_tokens = checks.clone().filter_map(|c| {
                Some(PersistedToken {
                    kind: "check".into(),
                    id: c.check.check_id.clone(),
                    token: c.token.clone()?,
                })
            });
            (
                upto,
                services.map(|s| s.service.clone()).collect(),
                checks.map(|c| c.definition.clone()).collect(),
                service_tokens.chain(check_tokens).collect(),
            )
        };
        let encoded = (|| {
            Ok::<_, serde_json::Error>([
                serde_json::to_vec_pretty(&services)?,
                serde_json::to_vec_pretty(&checks)?,
                serde_json::to_vec_pretty(&tokens)?,
            ])
        })()
        .map_err(|e| ApiError::Internal(format!("failed to encode agent state: {e}")))?;
        // The write runs in a task of its own that holds the lock: a caller that goes away
        // (a client hanging up) must not leave it half done, with its temporary files still
        // being written under the next write's.
        let dir = dir.clone();
        let write = tokio::spawn(async move {
            let result = write_changed(&dir, &mut written, encoded).await;
            match &result {
                Ok(()) => written.upto = upto,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "persisting agent state failed")
                }
            }
            result
        });
        match write.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Internal(format!(
                "failed to persist agent state: {e}"
            ))),
            Err(e) => Err(ApiError::Internal(format!(
                "failed to persist agent state: {e}"
            ))),
        }
    }

    /// Loads `services.json` and `checks.json` and starts the checks' runners. A definition
    /// that no longer validates, or a file a crash left torn, is skipped (as much of it as
    /// cannot be read) with a warning rather than failing the start.
    pub(super) async fn load(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.config.data_dir else {
            return Ok(());
        };
        let services_path = dir.join("services.json");
        let checks_path = dir.join("checks.json");
        let tokens_path = dir.join("tokens.json");
        remove_leftover_temp(&services_path).await;
        remove_leftover_temp(&checks_path).await;
        remove_leftover_temp(&tokens_path).await;
        let services: PersistedServices = read_entries(&services_path).await;
        let checks: PersistedChecks = read_entries(&checks_path).await;
        let tokens: PersistedTokens = read_entries_as(&tokens_path, false).await;
        let token_of = |kind: &str, id: &str| {
            tokens
                .iter()
                .find(|t| t.kind == kind && t.id == id)
                .map(|t| t.token.clone())
        };
        let _persist = self.persist_lock.lock().await;
        let mut st = self.lock();
        for service in services {
            if service.id.is_empty() || service.service.is_empty() {
                tracing::warn!(service = ?service, "skipping persisted service without id or name");
                continue;
            }
            let generation = st.bump();
            let token = token_of("service", &service.id);
            st.services.insert(
                service.id.clone(),
                LocalService {
                    service,
                    in_sync: false,
                    generation,
                    token,
                },
            );
        }
        for def in checks {
            let id = def.check_id.clone();
            if !def.service_id.is_empty() && !st.services.contains_key(&def.service_id) {
                tracing::warn!(check = %id, service = %def.service_id, "skipping persisted check of an unknown service");
                continue;
            }
            match self.prepare_check(def) {
                Ok(p) => self.install_check(&mut st, p, token_of("check", &id)),
                Err(e) => {
                    tracing::warn!(check = %id, error = %e, "skipping invalid persisted check")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str) -> AgentService {
        AgentService {
            id: id.into(),
            service: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn torn_state_files_give_what_can_be_read() {
        let whole = serde_json::to_vec_pretty(&vec![svc("a"), svc("b")]).unwrap();
        let (all, damage) = parse_entries::<AgentService>(&whole);
        assert_eq!((all.len(), damage), (2, None));
        // Zero length (a power loss after an un-fsynced rename), garbage, not a list.
        for bad in [&b""[..], b"\0\0\0\0", b"{\"ID\":\"a\"}", b"[{\"ID\":"] {
            let (got, damage) = parse_entries::<AgentService>(bad);
            assert!(got.is_empty(), "{bad:?}");
            assert!(
                matches!(damage, Some(Damage::Torn { kept: 0, .. })),
                "{bad:?}: {damage:?}"
            );
        }
        // Cut in the middle of the second entry: the first one is kept.
        let cut = &whole[..whole.len() - 20];
        let (got, damage) = parse_entries::<AgentService>(cut);
        assert_eq!(got, vec![svc("a")]);
        assert!(
            matches!(damage, Some(Damage::Torn { kept: 1, .. })),
            "{damage:?}"
        );
        // An entry of the wrong shape is skipped, the others kept.
        let (got, damage) = parse_entries::<AgentService>(br#"[{"ID":"a","Service":"a"},7]"#);
        assert_eq!((got, damage), (vec![svc("a")], Some(Damage::BadEntries(1))));
    }

    #[tokio::test]
    async fn write_atomically_replaces_the_file_through_a_temp_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.json");
        let tmp = temp_path(&path);
        // Same directory: a rename across file systems would not be atomic.
        assert_eq!(tmp.parent(), path.parent());
        assert_eq!(tmp.file_name().unwrap(), "services.json.tmp");

        write_atomically(&path, b"old").await.unwrap();
        write_atomically(&path, b"new").await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists(), "nothing is left beside it");

        // A crash before the rename leaves the old file whole and a temp file, which the
        // next start removes without reading it.
        std::fs::write(&tmp, b"[{\"ID\":\"half").unwrap();
        remove_leftover_temp(&path).await;
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
