//! ACLs on a standalone agent (issue 16): a cluster with ACLs on and default deny, and a
//! `registry_client` agent in the same process. The agent resolves request tokens through
//! its servers, enforces Consul's rules on its own endpoints, syncs its node with its agent
//! token and each service with the token it was registered with.

use registry_api::acl::DefaultPolicy;
use registry_server::acl::{AclConfig, AclDefault};
use registry_testkit::cluster::*;
use registry_testkit::wait_until;
use serde_json::{json, Value};
use std::time::Duration;

const MGMT: &str = "c0ffee00-0000-4000-8000-00000000a6e7";
const WAIT: Duration = Duration::from_secs(20);

/// Status, whether the answer was filtered, and body.
async fn call(
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, bool, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = registry_api::tls::plain_client().request(method, url);
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let filtered = resp
        .headers()
        .get("X-Consul-Results-Filtered-By-ACLs")
        .is_some_and(|v| v == "true");
    (resp.status().as_u16(), filtered, resp.text().await.unwrap())
}

/// Makes policy `name` with `rules` and a token linked to it; returns its SecretID.
async fn token_with(server: &str, name: &str, rules: &str) -> String {
    let (status, _, body) = call(
        "PUT",
        format!("{server}/v1/acl/policy"),
        Some(MGMT),
        Some(json!({"Name": name, "Rules": rules})),
    )
    .await;
    assert_eq!(status, 200, "policy {name}: {body}");
    let (status, _, body) = call(
        "PUT",
        format!("{server}/v1/acl/token"),
        Some(MGMT),
        Some(json!({"Policies": [{"Name": name}]})),
    )
    .await;
    assert_eq!(status, 200, "token {name}: {body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    token["SecretID"].as_str().unwrap().to_string()
}

/// The services the catalog has on `node`, read with the management token.
async fn catalog_services(server: &str, node: &str) -> Vec<String> {
    let (status, _, body) = call(
        "GET",
        format!("{server}/v1/catalog/node-services/{node}"),
        Some(MGMT),
        None,
    )
    .await;
    if status != 200 {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    list["Services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["Service"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enforces_acls_and_syncs_with_each_services_token() {
    let c = TestCluster::builder(1)
        .acl(AclConfig {
            enabled: true,
            default_policy: AclDefault(DefaultPolicy::Deny),
            initial_management: Some(MGMT.into()),
            agent_token: Some(MGMT.into()),
            ..Default::default()
        })
        .start()
        .await;
    c.wait_leader().await;
    let server = c.node(0).url();
    // The initial management token is installed by the leader: wait until it works.
    wait_until(WAIT, "the management token works", || async {
        call(
            "GET",
            format!("{server}/v1/acl/token/self"),
            Some(MGMT),
            None,
        )
        .await
        .0 == 200
    })
    .await;
    let agent_token = token_with(
        &server,
        "agent-a",
        "node \"host-a\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }",
    )
    .await;
    let web = token_with(&server, "web", r#"service "web" { policy = "write" }"#).await;
    let web_read = token_with(&server, "web-read", r#"service "web" { policy = "read" }"#).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = c.agent_config("host-a", Some(dir.path()));
    cfg.acl_agent_token = Some(registry_client::acl::SecretToken(agent_token.clone()));
    let a = registry_client::start(cfg).await.unwrap();
    let agent = format!("http://{}", a.http_addr);

    // (a) The agent syncs its node with its own token.
    wait_until(WAIT, "the agent's node in the catalog", || async {
        call(
            "GET",
            format!("{server}/v1/catalog/node/host-a"),
            Some(MGMT),
            None,
        )
        .await
        .2
        .contains("host-a")
    })
    .await;
    // A service registered with a token that may write `web` syncs with that token (the
    // agent's own may only read services).
    let (status, _, body) = call(
        "PUT",
        format!("{agent}/v1/agent/service/register"),
        Some(&web),
        Some(json!({"Name": "web", "Port": 80, "Check": {"TTL": "30s"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_until(WAIT, "web in the catalog", || async {
        catalog_services(&server, "host-a")
            .await
            .contains(&"web".to_string())
    })
    .await;
    // Removed behind the agent's back (with the management token): anti-entropy puts it back
    // with the service's token.
    let (status, _, body) = call(
        "PUT",
        format!("{server}/v1/catalog/deregister"),
        Some(MGMT),
        Some(json!({"Node": "host-a", "ServiceID": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_until(WAIT, "web back in the catalog", || async {
        catalog_services(&server, "host-a")
            .await
            .contains(&"web".to_string())
    })
    .await;
    // The token is kept beside the agent's state, readable by its owner only, and not in
    // the definitions.
    let tokens = dir.path().join("tokens.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tokens).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&tokens).unwrap().contains(&web));
    assert!(!std::fs::read_to_string(dir.path().join("services.json"))
        .unwrap()
        .contains(&web));

    // (b) `db` with a `web`-only token: 403, and nothing changes.
    let (status, _, body) = call(
        "PUT",
        format!("{agent}/v1/agent/service/register"),
        Some(&web),
        Some(json!({"Name": "db", "Port": 5432})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with("Permission denied"), "{body}");
    let (_, _, body) = call(
        "GET",
        format!("{agent}/v1/agent/services"),
        Some(MGMT),
        None,
    )
    .await;
    let services: Value = serde_json::from_str(&body).unwrap();
    assert!(services.get("db").is_none(), "{body}");
    // Nor may it deregister what it may not write (a node check is the node's).
    let (status, _, _) = call(
        "PUT",
        format!("{agent}/v1/agent/maintenance?enable=true"),
        Some(&web),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // (c) A `web`-read token lists only web, and is told the list was filtered.
    let (status, _, body) = call(
        "PUT",
        format!("{agent}/v1/agent/service/register"),
        Some(MGMT),
        Some(json!({"Name": "api", "Port": 81})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, filtered, body) = call(
        "GET",
        format!("{agent}/v1/agent/services"),
        Some(&web_read),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let services: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&String> = services.as_object().unwrap().keys().collect();
    assert_eq!(names, ["web"], "{body}");
    assert!(filtered);
    // The management token sees both, unfiltered.
    let (_, filtered, body) = call(
        "GET",
        format!("{agent}/v1/agent/services"),
        Some(MGMT),
        None,
    )
    .await;
    assert!(
        body.contains("api") && body.contains("web") && !filtered,
        "{body}"
    );

    // (d) No token, default deny: `/v1/agent/self` is 403; a token nobody knows is Consul's
    // `ACL not found`; `/v1/agent/version` stays open.
    let (status, _, body) = call("GET", format!("{agent}/v1/agent/self"), None, None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = call(
        "GET",
        format!("{agent}/v1/agent/self"),
        Some("00000000-0000-4000-8000-0000000bad00"),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    assert_eq!(
        call("GET", format!("{agent}/v1/agent/version"), None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        call("GET", format!("{agent}/v1/agent/self"), Some(MGMT), None)
            .await
            .0,
        200
    );

    // The `default` token (acl:write to set) is what requests without one carry.
    let (status, _, _) = call(
        "PUT",
        format!("{agent}/v1/agent/token/default"),
        Some(&web),
        Some(json!({"Token": web_read})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, body) = call(
        "PUT",
        format!("{agent}/v1/agent/token/default"),
        Some(MGMT),
        Some(json!({"Token": web_read})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, filtered, body) =
        call("GET", format!("{agent}/v1/agent/services"), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        filtered && body.contains("web") && !body.contains("api"),
        "{body}"
    );
    a.stop().await;

    // Restarted on the same state, the agent syncs `web` with its token still.
    let mut cfg = c.agent_config("host-a", Some(dir.path()));
    cfg.acl_agent_token = Some(registry_client::acl::SecretToken(agent_token));
    let a = registry_client::start(cfg).await.unwrap();
    let (status, _, body) = call(
        "PUT",
        format!("{server}/v1/catalog/deregister"),
        Some(MGMT),
        Some(json!({"Node": "host-a", "ServiceID": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_until(WAIT, "web back in the catalog after a restart", || async {
        catalog_services(&server, "host-a")
            .await
            .contains(&"web".to_string())
    })
    .await;
    a.stop().await;
}
