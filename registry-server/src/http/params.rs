//! The query parameters handlers share: the read parameters (consistency
//! mode with `?max_stale=`, blocking `?index=`/`?wait=`, tags, `?passing`,
//! `?filter=`, `?node-meta=`). What a parameter gets at all is decided once,
//! in [`registry_api::query`]. `?dc=` is not read here: requests for another datacenter
//! never reach a handler (`federation::route_remote_dc`). Must not evaluate
//! anything (filters are parsed here, evaluated by the handlers).

use crate::reads::{Blocking, Consistency};
use registry_api::filter::{Filter, NodeMeta, Schema};
use registry_api::limits::{DEFAULT_WAIT, MAX_WAIT};
use registry_api::{duration, Error as ApiError};

/// The query parameters shared by reads.
pub(super) struct ReadParams {
    /// The consistency mode (`?stale`, `?consistent`, neither).
    pub(super) mode: Consistency,
    /// Set for a blocking query (`?index=`).
    pub(super) blocking: Option<Blocking>,
    /// `?tag=`, each one required.
    pub(super) tags: Vec<String>,
    /// `?passing`: only instances whose checks all pass.
    pub(super) passing: bool,
    /// `?filter=`, unparsed (each endpoint parses it against its own selectors); empty is
    /// none, as in Consul.
    pub(super) filter: Option<String>,
    /// `?node-meta=key:value`, each one required.
    pub(super) node_meta: NodeMeta,
    /// `?max_stale=`: a stale read is fine if this server heard from the
    /// leader within it; otherwise the read goes the default way (Consul
    /// re-runs such a read on the leader).
    pub(super) max_stale: Option<std::time::Duration>,
}

impl ReadParams {
    /// The mode to read in now: `?max_stale=` turns into a default read on a
    /// server that last heard from its leader longer ago than that.
    pub(super) fn mode_now(&self, raft: &crate::raft::RaftHandle) -> Consistency {
        let Some(max) = self.max_stale else {
            return self.mode;
        };
        let fresh = raft.with_status(|s| match (s.role, s.last_leader_contact) {
            (crate::raft::Role::Leader, _) => true,
            (_, Some(at)) => at.elapsed() <= max,
            (_, None) => false,
        });
        if self.mode == Consistency::Stale && !fresh {
            Consistency::Default
        } else {
            self.mode
        }
    }

    /// The filter parsed against the endpoint's `schema`; a bad one is a 400 with the reason.
    pub(super) fn filter(&self, schema: Schema) -> Result<Option<Filter>, ApiError> {
        self.filter
            .as_deref()
            .map(|text| Filter::parse(text, schema).map_err(ApiError::BadRequest))
            .transpose()
    }

    /// What sets apart, in the answer cache's key, answers that differ only by
    /// `?filter=` or `?node-meta=` (the key must name everything the answer depends on).
    pub(super) fn key_suffix(&self) -> String {
        match (&self.filter, self.node_meta.is_empty()) {
            (None, true) => String::new(),
            (filter, _) => format!("\0filter={filter:?}\0node-meta={:?}", self.node_meta.0),
        }
    }
}

pub(super) fn has(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, _)| k == key)
}

pub(super) fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn read_params(q: &[(String, String)]) -> Result<ReadParams, ApiError> {
    // Consul's `parseConsistency`: a positive `max_stale` allows stale reads.
    let max_stale = match value(q, "max_stale") {
        None | Some("") => None,
        Some(v) => Some(
            duration::parse(v)
                .map_err(|_| ApiError::BadRequest(format!("Invalid max_stale value {v:?}")))?,
        )
        .filter(|d| !d.is_zero()),
    };
    let stale = has(q, "stale") || max_stale.is_some();
    let consistent = has(q, "consistent");
    let mode = match (stale, consistent) {
        (true, true) => {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ))
        }
        (true, false) => Consistency::Stale,
        (false, true) => Consistency::Consistent,
        (false, false) => Consistency::Default,
    };
    let min_index = match value(q, "index") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
        ),
    };
    let wait = match value(q, "wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(v) => duration::parse(v)
            .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?
            .min(MAX_WAIT),
    };
    let tags = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    Ok(ReadParams {
        mode,
        blocking: min_index.map(|min_index| Blocking { min_index, wait }),
        tags,
        passing: has(q, "passing"),
        filter: value(q, "filter")
            .filter(|f| !f.trim().is_empty())
            .map(str::to_string),
        node_meta: NodeMeta::from_query(
            q.iter()
                .filter(|(k, _)| k == "node-meta")
                .map(|(_, v)| v.as_str()),
        ),
        max_stale,
    })
}
