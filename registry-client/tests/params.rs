//! The query-parameter policy (`registry_api::query`) on a standalone agent, and the agent's
//! own formats: `?ns`/`?partition` other than `default` are a 400 on its endpoints, `?pretty`
//! indents; `/v1/agent/health/service/name/:name` answers `?format=text` (or
//! `Accept: text/plain`) with the worst status as text, and `[]` with a 404 for an unknown
//! name, as Consul does; a forwarded read that no server answers still carries the index
//! headers, as Consul's agent sends them.

mod common;

use common::*;

async fn get_with(api: &Api, path: &str, accept: Option<&str>) -> (u16, String, String, String) {
    let mut req = api.http.get(format!("{}{path}", api.base));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let r = req.send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ct, reason) = (header("content-type"), header("x-consul-reason"));
    (r.status().as_u16(), ct, reason, r.text().await.unwrap())
}

#[tokio::test]
async fn health_by_name_answers_text_and_json_as_consul() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    let body = r#"{"Name":"web","ID":"web1","Check":{"CheckID":"t1","TTL":"60s"}}"#;
    assert_eq!(api.put("/v1/agent/service/register", body).await.0, 200);
    let body =
        r#"{"Name":"web","ID":"web2","Check":{"CheckID":"t2","TTL":"60s","Status":"passing"}}"#;
    assert_eq!(api.put("/v1/agent/service/register", body).await.0, 200);

    // The worst of the two instances: web1 is critical.
    let path = "/v1/agent/health/service/name/web";
    let (code, ct, reason, text) = get_with(&api, &format!("{path}?format=text"), None).await;
    assert_eq!(
        (code, text.as_str(), reason.as_str()),
        (503, "critical", "critical")
    );
    assert!(ct.starts_with("text/plain"), "{ct}");
    let (code, _, _, text) = get_with(&api, path, Some("text/plain")).await;
    assert_eq!((code, text.as_str()), (503, "critical"));
    // Accept wins over ?format= (Consul looks at it first); otherwise ?format= decides.
    let (code, _, _, text) =
        get_with(&api, &format!("{path}?format=json"), Some("text/plain")).await;
    assert_eq!((code, text.as_str()), (503, "critical"));
    let (code, ct, _, text) = get_with(&api, &format!("{path}?format=json"), None).await;
    assert_eq!(code, 503);
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    assert_eq!(api.put("/v1/agent/check/warn/t1", "").await.0, 200);
    let (code, _, _, text) = get_with(&api, &format!("{path}?format=text"), None).await;
    assert_eq!((code, text.as_str()), (429, "warning"));
    assert_eq!(api.put("/v1/agent/check/pass/t1", "").await.0, 200);
    let (code, _, reason, text) = get_with(&api, &format!("{path}?format=text"), None).await;
    assert_eq!(
        (code, text.as_str(), reason.as_str()),
        (200, "passing", "passing")
    );

    // Unknown: the reason as text, or an empty list.
    let (code, _, reason, text) =
        get_with(&api, "/v1/agent/health/service/name/nope?format=text", None).await;
    assert_eq!((code, text.as_str()), (404, "ServiceName nope Not Found"));
    assert_eq!(reason, "ServiceName nope Not Found");
    let (code, ct, _, text) = get_with(&api, "/v1/agent/health/service/name/nope", None).await;
    assert_eq!((code, text.as_str()), (404, "[]"));
    assert!(ct.starts_with("application/json"), "{ct}");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_agent_applies_the_policy_to_its_own_endpoints() {
    let server = FakeServer::start().await;
    let agent = start_agent(test_config("n1", &[server.addr])).await;
    let api = Api::new(agent.http_addr);
    api.put("/v1/agent/service/register", r#"{"Name":"web"}"#)
        .await;
    let (code, text) = api.get("/v1/agent/services?ns=team").await;
    assert_eq!(code, 400);
    assert_eq!(
        text,
        "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature"
    );
    let (code, text) = api.get("/v1/agent/checks?partition=p").await;
    assert_eq!(code, 400, "{text}");
    assert_eq!(api.get("/v1/agent/services?ns=default").await.0, 200);
    assert_eq!(api.get("/v1/agent/services?whatever=1").await.0, 200);
    // The WAN pool is the gateways': ?wan= on members is refused, not ignored.
    let (code, text) = api.get("/v1/agent/members?wan=1").await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("WAN"), "{text}");
    let (code, text) = api.get("/v1/agent/services?pretty").await;
    assert_eq!(code, 200);
    assert!(text.starts_with("{\n    \"web\": {\n        "), "{text}");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_forwarded_read_no_server_answers_still_has_index_headers() {
    let dead = dead_addr().await;
    let agent = start_agent(test_config("n1", &[dead])).await;
    let api = Api::new(agent.http_addr);
    let r = api
        .http
        .get(format!("{}/v1/health/service/web", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(r.headers()["x-consul-index"], "1");
    assert_eq!(r.headers()["x-consul-knownleader"], "false");
    assert_eq!(r.headers()["x-consul-lastcontact"], "0");
    // A write is not a read: no index headers.
    let r = api
        .http
        .put(format!("{}/v1/catalog/register", api.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert!(r.headers().get("x-consul-index").is_none());
    agent.stop().await;
}
