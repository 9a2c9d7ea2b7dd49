//! `GET|PUT /v1/snapshot` (<https://developer.hashicorp.com/consul/api-docs/snapshot>): save
//! the whole applied state (catalog, KV, sessions, events, and whatever table comes next: it is
//! every row) as an archive (`registry_api::snapshot`), and restore one through Raft.
//!
//! A save reads in the mode asked for (default: the leader's, or a follower caught up to the
//! leader's commit; `?stale`: this server's own state, as Consul), then copies the rows under
//! one hold of the applied state, so the archive is one point in time: the index it names in
//! its header and in `X-Consul-Index`. A restore reads the whole archive and rebuilds a state
//! from it before anything is proposed: a damaged archive is a 400 with the reason and
//! changes nothing; a good one is one `Restore` entry, applied alike by every server
//! (`state/restore.rs`). A restore is an operator action: with no ACLs yet it is as open as
//! `DELETE /v1/operator/raft/peer` on the HTTP port (and on the RPC port, which agents
//! forward it to, signed when there is a shared key).
//!
//! Owns: the two handlers. Must not touch: the archive's format or what a restore does to
//! the state.

use super::params::{read_params, ReadParams};
use super::{consul_headers, AppState, HttpResult, Params, St};
use crate::reads::Consistency;
use crate::state::restore::{table_counts, RestoreRequest};
use crate::state::Command;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry_api::acl::extract::Authorized;
use registry_api::snapshot::{write_archive, SnapshotHeader};
use registry_api::Error as ApiError;
use std::time::{Instant, SystemTime};

/// `GET /v1/snapshot`: the archive, `Content-Type: application/x-gzip`.
pub(super) async fn save(State(st): St, auth: Authorized, Query(q): Params) -> HttpResult {
    // A snapshot holds every secret (KV, tokens): management only, as in Consul.
    auth.require_management()?;
    let started = Instant::now();
    let p: ReadParams = read_params(&q)?;
    st.raft.check_running()?;
    match p.mode_now(&st.raft) {
        Consistency::Stale => {}
        Consistency::Default => st.raft.default_barrier().await?,
        Consistency::Consistent => st.raft.linearizable_barrier().await?,
    }
    let term = st.raft.with_status(|s| s.term);
    let (rows, index) = st.raft.with_applied(|state, index| (state.rows(), index));
    let header = SnapshotHeader {
        index,
        term,
        datacenter: st.datacenter.clone(),
        node: st.node.clone(),
        created: registry_api::duration::rfc3339(SystemTime::now()),
        rows: 0,
        tables: table_counts(&rows),
    };
    // Compressing a large catalog takes a while: off the async threads.
    let archive = tokio::task::spawn_blocking(move || write_archive(&header, &rows))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(index, bytes = archive.len(), "snapshot saved");
    st.metrics.snapshot_save.record(started.elapsed());
    let mut resp = Response::new(Body::from(archive));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-gzip"),
    );
    consul_headers(&st, h, index.max(1));
    Ok(resp)
}

/// `PUT /v1/snapshot`: restores the archive in the body (at most
/// [`registry_api::snapshot::MAX_ARCHIVE`] bytes; more is a 413).
pub(super) async fn restore(State(st): St, auth: Authorized, body: Bytes) -> HttpResult {
    auth.require_management()?;
    // One restore at a time per server: each expands its archive (up to 1 GiB of rows)
    // before anything is proposed, so parallel ones would only multiply that memory.
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = ONE_AT_A_TIME.try_acquire().map_err(|_| {
        super::ApiError::TooManyRequests(
            "another snapshot restore is in progress on this server; try again when it is done"
                .into(),
        )
    })?;
    let started = Instant::now();
    let req = RestoreRequest {
        archive: Some(body.to_vec()),
    };
    drop(body);
    let req = verify(&st, req).await?;
    st.raft.propose(Command::Restore(req)).await?;
    let index = st.raft.applied_index();
    tracing::warn!(index, "snapshot restored: every table replaced");
    st.metrics.snapshot_restore.record(started.elapsed());
    Ok(StatusCode::OK.into_response())
}

/// Everything the apply will check, done here first (off the async threads): `Err` is the
/// 400 with the reason, and nothing was proposed.
async fn verify(st: &AppState, req: RestoreRequest) -> Result<RestoreRequest, ApiError> {
    let datacenter = st.datacenter.clone();
    tokio::task::spawn_blocking(move || {
        req.restored_state(&datacenter, 1, 0)
            .map(|_| req)
            .map_err(|reason| ApiError::BadRequest(format!("snapshot refused: {reason}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}
