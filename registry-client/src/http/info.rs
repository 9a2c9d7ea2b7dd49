//! The agent's own facts and its local services' health, in Consul's shapes:
//! `GET /v1/agent/version`, `GET /v1/agent/host`, `GET /v1/agent/health/service/id/:id` and
//! `GET /v1/agent/health/service/name/:name`. Served by every agent and, through the shared
//! agent router, by servers for themselves.
//!
//! Owns: reading the host's facts (cheaply, from `/proc`, without a system library) and the
//! local-health status codes and formats. Must not touch: the local state (read through
//! [`Agent`]).

use super::params::value;
use super::HttpResult;
use crate::agent::Agent;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use registry_api::acl::extract::Authorized;
use registry_api::acl::{Access, Resource, Scalar};
use registry_api::{PASSING, WARNING};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The agent, as every handler's state.
type St = State<Arc<Agent>>;
/// The query string as pairs, in order.
type Params = Query<Vec<(String, String)>>;

/// `GET /v1/agent/version`: Consul's `{SHA, BuildDate, HumanVersion, FIPS}`, with this
/// build's version (no commit or build date is compiled in: they are empty).
pub(super) async fn version() -> HttpResult {
    Ok(Json(json!({
        "SHA": option_env!("REGISTRY_GIT_SHA").unwrap_or(""),
        "BuildDate": option_env!("REGISTRY_BUILD_DATE").unwrap_or(""),
        "HumanVersion": env!("CARGO_PKG_VERSION"),
        "FIPS": "",
    }))
    .into_response())
}

/// Consul's `returnTextPlain`: `Accept: text/plain...` asks for the status as text, and so
/// does `?format=text` (another `?format=` is JSON unless `Accept` asked for text).
fn wants_text(headers: &HeaderMap, q: &[(String, String)]) -> bool {
    if headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("text/plain"))
    {
        return true;
    }
    value(q, "format") == Some("text")
}

/// `GET /v1/agent/health/service/id/:id`: the instance's `AgentServiceChecksInfo`, with
/// Consul's codes (200 passing, 429 warning, 503 critical or maintenance, 404 unknown);
/// as text (see [`wants_text`]) the aggregated status, or the not-found reason.
pub(super) async fn health_by_id(
    State(agent): St,
    auth: Authorized,
    Path(id): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> HttpResult {
    let text = wants_text(&headers, &q);
    // `service:read` on the instance's service (an unknown id is the 404 below).
    if let Some(svc) = agent.service(&id) {
        auth.require(Resource::Service, &svc.service, Access::Read)?;
    }
    let entry = agent.service(&id).and_then(|svc| {
        agent
            .health_by_service_name(&svc.service)
            .into_iter()
            .find(|e| e.service.id == id)
    });
    let Some(entry) = entry else {
        let reason = format!("ServiceId {id} not found");
        // Consul's body for an unknown id: the reason as text, or a critical entry.
        let body = json!({"AggregatedStatus": "critical", "Service": null, "Checks": null});
        return Ok(payload(StatusCode::NOT_FOUND, &reason, text, body));
    };
    let code = status_code(&entry.aggregated_status);
    let reason = entry.aggregated_status.clone();
    let body =
        serde_json::to_value(&entry).map_err(|e| registry_api::Error::Internal(e.to_string()))?;
    Ok(payload(code, &reason, text, body))
}

/// `GET /v1/agent/health/service/name/:name`: every local instance of the service with its
/// checks, answered with the worst instance's code (200 passing, 429 warning, 503 critical or
/// maintenance); 404 and `[]` when there is none. As text (see [`wants_text`]) the worst
/// aggregated status, or `ServiceName <name> Not Found`.
pub(super) async fn health_by_name(
    State(agent): St,
    auth: Authorized,
    Path(name): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> HttpResult {
    auth.require(Resource::Service, &name, Access::Read)?;
    let text = wants_text(&headers, &q);
    let entries = agent.health_by_service_name(&name);
    // Consul's loop: the first instance sets code and status, a worse one replaces them.
    let mut worst: Option<(StatusCode, String)> = None;
    for e in &entries {
        let code = status_code(&e.aggregated_status);
        if worst
            .as_ref()
            .is_none_or(|(c, _)| c.as_u16() < code.as_u16())
        {
            worst = Some((code, e.aggregated_status.clone()));
        }
    }
    let (code, reason) = worst.unwrap_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("ServiceName {name} Not Found"),
        )
    });
    let body =
        serde_json::to_value(&entries).map_err(|e| registry_api::Error::Internal(e.to_string()))?;
    Ok(payload(code, &reason, text, body))
}

/// Consul's `CodeWithPayloadError`: `code`, the reason in `X-Consul-Reason`, and either the
/// reason as text or `body` as JSON.
fn payload(code: StatusCode, reason: &str, text: bool, body: Value) -> Response {
    let mut resp = if text {
        plain(code, reason.to_string())
    } else {
        (code, Json(body)).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(reason) {
        resp.headers_mut().insert("X-Consul-Reason", v);
    }
    resp
}

/// Consul's code for an aggregated status.
fn status_code(status: &str) -> StatusCode {
    match status {
        PASSING => StatusCode::OK,
        WARNING => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A `text/plain` answer.
fn plain(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /v1/agent/host`: Consul's `{Memory, CPU, Host, Disk, CollectionTime, Errors}` with
/// gopsutil's field names. What `/proc` does not give cheaply (disk usage: it needs
/// `statvfs`) is present and zero, and named in `Errors`. Needs `operator:read` (Consul's).
pub(super) async fn host(State(agent): St, auth: Authorized) -> HttpResult {
    auth.require_scalar(Scalar::Operator, Access::Read)?;
    let data_dir = agent.config().data_dir.clone();
    let info = tokio::task::spawn_blocking(move || collect_host(data_dir.as_deref()))
        .await
        .map_err(|e| registry_api::Error::Internal(format!("host information: {e}")))?;
    Ok(Json(info).into_response())
}

/// Reads the host's facts; each part that cannot be read is named in `Errors`.
fn collect_host(data_dir: Option<&FsPath>) -> Value {
    let mut errors: Vec<String> = Vec::new();
    let meminfo = read_kv("/proc/meminfo", &mut errors);
    let kb = |k: &str| {
        meminfo
            .get(k)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let (total, free, buffers, cached) = (
        kb("MemTotal"),
        kb("MemFree"),
        kb("Buffers"),
        kb("Cached") + kb("SReclaimable"),
    );
    let available = kb("MemAvailable");
    let used = total.saturating_sub(free + buffers + cached);
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    };
    let memory = json!({
        "total": total, "available": available, "used": used,
        "usedPercent": percent(used, total), "free": free,
        "active": kb("Active"), "inactive": kb("Inactive"), "wired": 0, "laundry": 0,
        "buffers": buffers, "cached": cached, "writeBack": kb("Writeback"), "dirty": kb("Dirty"),
        "writeBackTmp": kb("WritebackTmp"), "shared": kb("Shmem"), "slab": kb("Slab"),
        "sreclaimable": kb("SReclaimable"), "sunreclaim": kb("SUnreclaim"),
        "pageTables": kb("PageTables"), "swapCached": kb("SwapCached"),
        "commitLimit": kb("CommitLimit"), "committedAS": kb("Committed_AS"),
        "highTotal": kb("HighTotal"), "highFree": kb("HighFree"), "lowTotal": kb("LowTotal"),
        "lowFree": kb("LowFree"), "swapTotal": kb("SwapTotal"), "swapFree": kb("SwapFree"),
        "mapped": kb("Mapped"), "vmallocTotal": kb("VmallocTotal"),
        "vmallocUsed": kb("VmallocUsed"), "vmallocChunk": kb("VmallocChunk"),
        "hugePagesTotal": kb("HugePages_Total") / 1024, "hugePagesFree": kb("HugePages_Free") / 1024,
        "hugePageSize": kb("Hugepagesize"),
    });

    let cpu = cpus(&mut errors);
    let host = host_stat(&mut errors);
    let disk_path = data_dir
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    let fstype = fs_type(&disk_path).unwrap_or_default();
    errors.push(format!("disk usage of {disk_path} is not collected"));
    let disk = json!({
        "path": disk_path, "fstype": fstype, "total": 0, "free": 0, "used": 0,
        "usedPercent": 0.0, "inodesTotal": 0, "inodesUsed": 0, "inodesFree": 0,
        "inodesUsedPercent": 0.0,
    });
    let collected = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    json!({
        "Memory": memory,
        "CPU": cpu,
        "Host": host,
        "Disk": disk,
        "CollectionTime": collected,
        "Errors": errors,
    })
}

/// `key: value` lines of a `/proc` file (a missing file is an error entry, and empty).
fn read_kv(path: &str, errors: &mut Vec<String>) -> BTreeMap<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
        Err(e) => {
            errors.push(format!("{path}: {e}"));
            BTreeMap::new()
        }
    }
}

/// One gopsutil `InfoStat` per processor in `/proc/cpuinfo`.
fn cpus(errors: &mut Vec<String>) -> Vec<Value> {
    let text = match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("/proc/cpuinfo: {e}"));
            return Vec::new();
        }
    };
    text.split("\n\n")
        .filter(|block| block.contains("processor"))
        .map(|block| {
            let f: BTreeMap<&str, &str> = block
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let get = |k: &str| f.get(k).copied().unwrap_or("");
            let int = |k: &str| get(k).parse::<i64>().unwrap_or(0);
            let cache_kb = get("cache size")
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0);
            json!({
                "cpu": int("processor"), "vendorId": get("vendor_id"), "family": get("cpu family"),
                "model": get("model"), "stepping": int("stepping"),
                "physicalId": get("physical id"), "coreId": get("core id"),
                "cores": int("cpu cores"), "modelName": get("model name"),
                "mhz": get("cpu MHz").parse::<f64>().unwrap_or(0.0), "cacheSize": cache_kb,
                "flags": get("flags").split_whitespace().collect::<Vec<_>>(),
                "microcode": get("microcode"),
            })
        })
        .collect()
}

/// gopsutil's `host.InfoStat`.
fn host_stat(errors: &mut Vec<String>) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    let hostname = registry_api::process::hostname_or("");
    let uptime = read("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|u| u.parse::<f64>().ok())
        })
        .map(|u| u as u64)
        .unwrap_or_else(|| {
            errors.push("/proc/uptime: unreadable".into());
            0
        });
    let boot_time = read("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0);
    let os_release: BTreeMap<String, String> = read("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    let os = |k: &str| os_release.get(k).cloned().unwrap_or_default();
    let mut m = Map::new();
    m.insert("hostname".into(), hostname.into());
    m.insert("uptime".into(), uptime.into());
    m.insert("bootTime".into(), boot_time.into());
    m.insert("procs".into(), procs.into());
    m.insert("os".into(), std::env::consts::OS.into());
    m.insert("platform".into(), os("ID").into());
    m.insert("platformFamily".into(), os("ID_LIKE").into());
    m.insert("platformVersion".into(), os("VERSION_ID").into());
    m.insert(
        "kernelVersion".into(),
        read("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .into(),
    );
    m.insert("kernelArch".into(), std::env::consts::ARCH.into());
    m.insert("virtualizationSystem".into(), "".into());
    m.insert("virtualizationRole".into(), "".into());
    m.insert(
        "hostId".into(),
        read("/etc/machine-id")
            .or_else(|_| read("/proc/sys/kernel/random/boot_id"))
            .unwrap_or_default()
            .into(),
    );
    Value::Object(m)
}

/// The type of the file system `path` lies on: the longest mount point in `/proc/mounts`
/// that contains it.
fn fs_type(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            let inside = path == point
                || point == "/"
                || path.strip_prefix(point).is_some_and(|r| r.starts_with('/'));
            inside.then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}
