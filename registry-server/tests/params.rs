//! The query-parameter policy (`registry_api::query`) on a server, one row per parameter
//! and outcome: unknown parameters are ignored; the Consul parameters this registry cannot
//! honour are a 400 naming them; the ones it honours as they are (`near`, `leader`, `token`,
//! `merge-central-config`, `cached`, `Cache-Control`) answer as without them, plus
//! `X-Cache: MISS` where Consul caches; `?pretty` indents; `?max_stale` reads stale. And every
//! known read path carries the `X-Consul-*` index headers on its errors too (a bad filter, a
//! bad index, a refused parameter, `No cluster leader`), while an unknown path stays a plain
//! 404.

use registry_testkit::cluster::*;
use std::time::Duration;

/// What a GET answered.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(reqwest::Method::GET, base, path, headers).await
}

/// What a request with `method` answered.
async fn send(method: reqwest::Method, base: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = registry_api::tls::plain_client().request(method, format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

/// One row: a path with parameters (and headers), the status, and text the body must hold
/// (for a 400, its reason; for a 200, nothing).
struct Row {
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    body: &'static str,
}

const fn row(path: &'static str, status: u16, body: &'static str) -> Row {
    Row {
        path,
        headers: &[],
        status,
        body,
    }
}

impl Row {
    /// The row with `headers` sent too.
    const fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Row {
        Row { headers, ..self }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consul_parameter_is_honoured_or_refused_by_name() {
    let c = TestCluster::start(1).await;
    c.wait_leader().await;
    let base = c.node(0).url();
    assert!(c
        .client(0)
        .catalog_register(&reg("n1", "web", "web1"), None)
        .await
        .unwrap());
    let plain = get(&base, "/v1/catalog/service/web", &[]).await;
    assert_eq!(plain.status, 200);

    let ns = "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature";
    let part =
        "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature";
    let rows = [
        // Not Consul's: ignored, as Consul ignores it.
        row(
            "/v1/catalog/service/web?cachebuster=12345&sampling=1",
            200,
            "",
        ),
        // Namespaces and partitions: the default one is the only one there is.
        row("/v1/catalog/service/web?ns=default", 200, ""),
        row("/v1/catalog/service/web?ns=", 200, ""),
        row("/v1/catalog/service/web?ns=team", 400, ns),
        row("/v1/agent/services?ns=team", 400, ns),
        row(
            "/v1/catalog/service/web",
            400,
            "Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature",
        )
        .headers(&[("X-Consul-Namespace", "team")]),
        row("/v1/catalog/service/web", 200, "").headers(&[("X-Consul-Namespace", "default")]),
        row("/v1/catalog/service/web?partition=DEFAULT", 200, ""),
        row("/v1/catalog/service/web?partition=p1", 400, part),
        row(
            "/v1/catalog/service/web",
            400,
            "Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature",
        )
        .headers(&[("X-Consul-Partition", "p1")]),
        // Peering: there are no peers.
        row("/v1/health/service/web?peer=", 200, ""),
        row("/v1/health/service/web?peer=other", 400, "\"peer\""),
        // Honoured as they are.
        row("/v1/catalog/service/web?near=_agent", 200, ""),
        row("/v1/catalog/service/web?leader", 200, ""),
        row("/v1/catalog/service/web?token=anything", 200, ""),
        row("/v1/catalog/service/web?merge-central-config", 200, ""),
        row("/v1/catalog/service/web?cached", 200, ""),
        row("/v1/catalog/service/web?cached", 200, "")
            .headers(&[("Cache-Control", "max-age=30, stale-if-error=60")]),
        row(
            "/v1/catalog/service/web",
            400,
            "Invalid Cache-Control header.",
        )
        .headers(&[("Cache-Control", "max-age=soon")]),
        row(
            "/v1/catalog/service/web?cached&consistent",
            400,
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ),
        // max_stale: a stale read, checked as Consul checks it.
        row("/v1/catalog/service/web?max_stale=10s", 200, ""),
        row(
            "/v1/catalog/service/web?max_stale=later",
            400,
            "Invalid max_stale value \"later\"",
        ),
        row(
            "/v1/catalog/service/web?max_stale=10s&consistent",
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
    ];
    for r in rows {
        let a = get(&base, r.path, r.headers).await;
        assert_eq!(a.status, r.status, "{} {:?}: {}", r.path, r.headers, a.body);
        if r.status == 200 {
            // Same answer as without the parameter (these change nothing here).
            if r.path.starts_with("/v1/catalog/service/web") {
                assert_eq!(a.body, plain.body, "{}", r.path);
            }
        } else {
            assert!(a.body.contains(r.body), "{}: {}", r.path, a.body);
        }
    }

    // X-Cache: MISS on what Consul caches, nowhere else, and never without ?cached.
    let cached = get(&base, "/v1/catalog/service/web?cached", &[]).await;
    assert_eq!(cached.headers["x-cache"], "MISS");
    assert!(cached.headers.get("age").is_none());
    for path in ["/v1/catalog/service/web", "/v1/catalog/nodes?cached"] {
        let a = get(&base, path, &[]).await;
        assert!(a.headers.get("x-cache").is_none(), "{path}");
    }
    let a = get(&base, "/v1/health/service/web?cached", &[]).await;
    assert_eq!(a.headers["x-cache"], "MISS");

    // ?pretty: the same JSON, indented as Go's MarshalIndent does, on the agent's too.
    for path in ["/v1/catalog/service/web", "/v1/agent/version"] {
        let compact = get(&base, path, &[]).await;
        let pretty = get(&base, &format!("{path}?pretty"), &[]).await;
        assert_eq!(pretty.status, 200);
        assert!(pretty.body.contains("\n    "), "{path}: {}", pretty.body);
        assert!(pretty.body.ends_with("}\n") || pretty.body.ends_with("]\n"));
        let a: serde_json::Value = serde_json::from_str(&compact.body).unwrap();
        let b: serde_json::Value = serde_json::from_str(&pretty.body).unwrap();
        assert_eq!(a, b, "{path}");
        // A HEAD with ?pretty: no body to indent, and the length of the answer it stands for.
        let head = send(reqwest::Method::HEAD, &base, &format!("{path}?pretty"), &[]).await;
        assert_eq!(head.status, 200, "{path}");
        let length = head
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            length,
            Some(compact.body.len().to_string()),
            "{path}: {:?}",
            head.headers
        );
        assert!(head.body.is_empty(), "{path}");
    }
    c.shutdown().await;
}

/// The index headers of an answer, as (index, known leader).
fn index_headers(a: &Answer) -> Option<(u64, String)> {
    let h = &a.headers;
    let index = h.get("x-consul-index")?.to_str().ok()?.parse().ok()?;
    let known = h.get("x-consul-knownleader")?.to_str().ok()?.to_string();
    h.get("x-consul-lastcontact")?;
    Some((index, known))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors_carry_the_index_headers_and_unknown_paths_do_not() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let base = c.node(leader).url();
    for path in [
        "/v1/catalog/services?filter=ServiceName%20%3D%3D",
        "/v1/health/service/web?index=soon",
        "/v1/catalog/nodes?wait=forever",
        "/v1/catalog/nodes?stale&consistent",
        "/v1/catalog/nodes?ns=team",
        "/v1/health/state/nonsense",
    ] {
        let a = get(&base, path, &[]).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        let (index, known) = index_headers(&a).unwrap_or_else(|| panic!("{path}: {:?}", a.headers));
        assert!(index >= 1, "{path}");
        assert_eq!(known, "true", "{path}");
    }
    // Unknown paths and writes stay as they were: no index headers.
    let unknown = get(&base, "/v1/catalog/nonsense", &[]).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.headers.get("x-consul-index").is_none());
    assert_eq!(unknown.headers["content-type"], "text/plain; charset=utf-8");

    // No leader: the survivor's reads fail with Consul's text and the headers say so.
    let survivor = (leader + 1) % 3;
    let mut c = c;
    for i in 0..3 {
        if i != survivor {
            c.stop(i).await;
        }
    }
    let base = c.node(survivor).url();
    let a = wait_until(
        Duration::from_secs(15),
        "No cluster leader on the survivor",
        || async {
            let a = get(&base, "/v1/catalog/nodes", &[]).await;
            (a.status == 500
                && a.headers
                    .get("x-consul-knownleader")
                    .is_some_and(|v| v == "false"))
            .then_some(a)
        },
    )
    .await;
    assert_eq!(a.body, "No cluster leader");
    assert!(index_headers(&a).is_some(), "{:?}", a.headers);
    c.shutdown().await;
}
