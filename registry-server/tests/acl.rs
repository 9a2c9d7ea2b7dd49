//! ACLs (issue [12]): bootstrap, tokens, policies and roles through Consul's `/v1/acl/*` API,
//! and their enforcement on real servers over HTTP: each rule family (exact, prefix, the most
//! specific rule wins, deny wins a merge), default allow and deny, the anonymous token,
//! expiry, list filtering with `X-Consul-Results-Filtered-By-ACLs`, blocking queries under a
//! token, and replication to a second datacenter that keeps resolving while the primary is
//! unreachable.

use registry_api::acl::DefaultPolicy;
use registry_server::acl::{AclConfig, AclDefault};
use registry_testkit::cluster::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const MGMT: &str = "c0ffee00-0000-4000-8000-000000000001";

fn acl(default: DefaultPolicy, initial: Option<&str>) -> AclConfig {
    AclConfig {
        enabled: true,
        default_policy: AclDefault(default),
        initial_management: initial.map(str::to_string),
        ..Default::default()
    }
}

/// A raw HTTP caller: status, headers, body, with a token in `X-Consul-Token`.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

/// What a call answered.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn filtered(&self) -> bool {
        self.headers
            .get("X-Consul-Results-Filtered-By-ACLs")
            .is_some_and(|v| v == "true")
    }
}

impl Api {
    fn new(base: String) -> Api {
        Api {
            base,
            http: registry_api::tls::plain_client(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, None).await
    }

    async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call("PUT", path, token, Some(body)).await
    }

    /// A policy named `name` with `rules`, made with the management token.
    async fn policy(&self, name: &str, rules: &str) -> Value {
        let r = self
            .put(
                "/v1/acl/policy",
                Some(MGMT),
                json!({"Name": name, "Rules": rules}),
            )
            .await;
        assert_eq!(r.status, 200, "policy {name}: {}", r.body);
        r.json()
    }

    /// A token with `policies` (by name); its SecretID.
    async fn token(&self, policies: &[&str]) -> String {
        let links: Vec<Value> = policies.iter().map(|p| json!({"Name": p})).collect();
        let r = self
            .put("/v1/acl/token", Some(MGMT), json!({"Policies": links}))
            .await;
        assert_eq!(r.status, 200, "token: {}", r.body);
        r.json()["SecretID"].as_str().unwrap().to_string()
    }

    async fn register(&self, token: Option<&str>, node: &str, service: &str) -> u16 {
        self.put(
            "/v1/catalog/register",
            token,
            json!({"Node": node, "Address": "10.0.0.1", "Service": {"Service": service, "Port": 80}}),
        )
        .await
        .status
    }
}

/// One server with ACLs as given, and no embedded agent (the catalog holds what tests write).
async fn one_server(acl: AclConfig) -> (TestCluster, Api) {
    let c = TestCluster::builder(1).agents(false).acl(acl).start().await;
    c.wait_leader().await;
    let api = Api::new(c.node(0).url());
    (c, api)
}

/// Waits until the configured initial management token works.
async fn management_ready(api: &Api) {
    wait_until(
        Duration::from_secs(10),
        "the initial management token",
        || async { (api.get("/v1/acl/token/self", Some(MGMT)).await.status == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_happens_once_and_its_token_manages_everything() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, None)).await;
    let first = api.put("/v1/acl/bootstrap", None, json!({})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let token = first.json();
    let secret = token["SecretID"].as_str().unwrap().to_string();
    assert_eq!(token["Policies"][0]["Name"], "global-management");
    let again = api.put("/v1/acl/bootstrap", None, json!({})).await;
    assert_eq!(again.status, 403);
    assert!(
        again.body.starts_with("ACL bootstrap no longer allowed"),
        "{}",
        again.body
    );
    // The management token writes; no token (anonymous, default deny) does not.
    assert_eq!(api.register(Some(&secret), "n1", "web").await, 200);
    let denied = api
        .put(
            "/v1/catalog/register",
            None,
            json!({"Node": "n2", "Address": "10.0.0.2"}),
        )
        .await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.body.starts_with("Permission denied"),
        "{}",
        denied.body
    );
    assert!(
        denied.body.contains(registry_api::acl::ANONYMOUS_ACCESSOR),
        "names the accessor: {}",
        denied.body
    );
    assert!(!denied.body.contains("anonymous\""), "never the secret");
    let nodes = api.get("/v1/catalog/nodes", Some(&secret)).await;
    assert_eq!(
        nodes.json().as_array().unwrap().len(),
        1,
        "n2 was not written"
    );
    // An unknown token is Consul's 403 ACL not found; status stays open.
    let unknown = api.get("/v1/catalog/nodes", Some("not-a-token")).await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (403, "ACL not found")
    );
    assert_eq!(
        api.get("/v1/status/leader", Some("not-a-token"))
            .await
            .status,
        200
    );
    // ACL endpoints need acl rights.
    assert_eq!(api.get("/v1/acl/tokens", None).await.status, 403);
    let tokens = api.get("/v1/acl/tokens", Some(&secret)).await;
    assert_eq!(
        tokens.json().as_array().unwrap().len(),
        2,
        "{}",
        tokens.body
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_endpoints_answer_401_with_acls_off() {
    let c = TestCluster::builder(1).agents(false).start().await;
    c.wait_leader().await;
    let api = Api::new(c.node(0).url());
    let r = api.put("/v1/acl/bootstrap", None, json!({})).await;
    assert_eq!((r.status, r.body.as_str()), (401, "ACL support disabled"));
    // And every token may do everything, as in Consul without ACLs.
    assert_eq!(api.register(Some("anything"), "n1", "web").await, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_family_exact_prefix_most_specific_and_deny() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    api.policy(
        "app",
        r#"
        service_prefix "" { policy = "read" }
        service "web" { policy = "write" }
        service_prefix "web-int" { policy = "deny" }
        node_prefix "" { policy = "write" }
        key_prefix "app/" { policy = "write" }
        key "app/secret" { policy = "deny" }
        session_prefix "" { policy = "write" }
        event_prefix "deploy" { policy = "write" }
        "#,
    )
    .await;
    let t = api.token(&["app"]).await;
    let t = Some(t.as_str());
    // Services: exact write, prefix read, a more specific prefix deny.
    assert_eq!(api.register(t, "n1", "web").await, 200);
    assert_eq!(api.register(t, "n1", "db").await, 403, "read only");
    assert_eq!(api.register(t, "n1", "web-internal").await, 403, "denied");
    assert_eq!(api.register(Some(MGMT), "n1", "db").await, 200);
    assert_eq!(api.register(Some(MGMT), "n1", "web-internal").await, 200);
    let services = api.get("/v1/catalog/services", t).await;
    let listed: Vec<String> = services
        .json()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(listed, ["db", "web"], "web-internal is hidden");
    assert!(services.filtered(), "and the header says so");
    let all = api.get("/v1/catalog/services", Some(MGMT)).await;
    assert!(!all.filtered());
    assert_eq!(all.json().as_object().unwrap().len(), 3);
    let hidden = api.get("/v1/health/service/web-internal", t).await;
    assert_eq!(hidden.json(), json!([]));
    assert!(hidden.filtered());
    // Keys: prefix write, an exact deny inside it, nothing outside.
    assert_eq!(api.put("/v1/kv/app/x", t, json!(1)).await.status, 200);
    assert_eq!(api.put("/v1/kv/app/secret", t, json!(1)).await.status, 403);
    assert_eq!(api.put("/v1/kv/other", t, json!(1)).await.status, 403);
    assert_eq!(
        api.put("/v1/kv/app/secret", Some(MGMT), json!(2))
            .await
            .status,
        200
    );
    assert_eq!(api.get("/v1/kv/app/secret", t).await.status, 403);
    let tree = api.get("/v1/kv/app/?recurse", t).await;
    let keys: Vec<String> = tree
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/x"]);
    assert!(tree.filtered());
    let listed = api.get("/v1/kv/app/?keys", t).await;
    assert_eq!(listed.json(), json!(["app/x"]));
    // A recursive delete needs write on everything under the prefix.
    assert_eq!(
        api.call("DELETE", "/v1/kv/app/?recurse", t, None)
            .await
            .status,
        403
    );
    assert_eq!(
        api.get("/v1/kv/app/x", Some(MGMT)).await.status,
        200,
        "nothing deleted"
    );
    assert_eq!(
        api.call("DELETE", "/v1/kv/app/x?recurse", t, None)
            .await
            .status,
        200
    );
    // Events: prefix write.
    assert_eq!(
        api.put("/v1/event/fire/deploy-web", t, json!(null))
            .await
            .status,
        200
    );
    assert_eq!(
        api.put("/v1/event/fire/restart", t, json!(null))
            .await
            .status,
        403
    );
    // Operator and ACL scalars: not granted, denied (default deny).
    assert_eq!(
        api.get("/v1/operator/raft/configuration", t).await.status,
        403
    );
    assert_eq!(api.get("/v1/acl/policies", t).await.status, 403);
    assert_eq!(api.get("/v1/snapshot", t).await.status, 403);
    // A transaction with one denied operation applies nothing (Consul's 409 with errors).
    let txn = api
        .put(
            "/v1/txn",
            t,
            json!([
                {"KV": {"Verb": "set", "Key": "app/y", "Value": "eA=="}},
                {"KV": {"Verb": "set", "Key": "other", "Value": "eA=="}}
            ]),
        )
        .await;
    assert_eq!(txn.status, 409, "{}", txn.body);
    assert!(txn.body.contains("Permission denied"), "{}", txn.body);
    assert_eq!(api.get("/v1/kv/app/y", Some(MGMT)).await.status, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_wins_a_merge_of_two_policies_and_roles_link_policies() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    api.policy(
        "writer",
        "service_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }",
    )
    .await;
    api.policy("no-db", r#"service "db" { policy = "deny" }"#)
        .await;
    let role = api
        .put(
            "/v1/acl/role",
            Some(MGMT),
            json!({"Name": "ops", "Policies": [{"Name": "no-db"}]}),
        )
        .await;
    assert_eq!(role.status, 200, "{}", role.body);
    let r = api
        .put(
            "/v1/acl/token",
            Some(MGMT),
            json!({"Policies": [{"Name": "writer"}], "Roles": [{"Name": "ops"}]}),
        )
        .await;
    let secret = r.json()["SecretID"].as_str().unwrap().to_string();
    assert_eq!(api.register(Some(&secret), "n1", "web").await, 200);
    assert_eq!(api.register(Some(&secret), "n1", "db").await, 403);
    // Take the deny away through the role: allowed at once (the resolver cache follows).
    let role_id = role.json()["ID"].as_str().unwrap().to_string();
    let updated = api
        .put(
            &format!("/v1/acl/role/{role_id}"),
            Some(MGMT),
            json!({"Name": "ops", "Policies": []}),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(api.register(Some(&secret), "n1", "db").await, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_allow_lets_the_anonymous_token_through_and_rules_still_deny() {
    let (c, api) = one_server(acl(DefaultPolicy::Allow, Some(MGMT))).await;
    management_ready(&api).await;
    assert_eq!(
        api.register(None, "n1", "web").await,
        200,
        "anonymous, default allow"
    );
    api.policy("no-web", r#"service "web" { policy = "deny" }"#)
        .await;
    let t = api.token(&["no-web"]).await;
    assert_eq!(api.register(Some(&t), "n1", "web").await, 403);
    assert_eq!(
        api.register(Some(&t), "n1", "db").await,
        200,
        "no rule: the default"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_token_gets_the_policies_given_to_it() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    assert_eq!(api.register(Some(MGMT), "n1", "web").await, 200);
    let before = api.get("/v1/catalog/services", None).await;
    assert_eq!(before.json(), json!({}));
    assert!(before.filtered());
    api.policy(
        "read-all",
        "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
    )
    .await;
    let anon = registry_api::acl::ANONYMOUS_ACCESSOR;
    let r = api
        .put(
            &format!("/v1/acl/token/{anon}"),
            Some(MGMT),
            json!({"Policies": [{"Name": "read-all"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = api.get("/v1/catalog/services", None).await;
    assert_eq!(after.json(), json!({"web": []}));
    assert!(!after.filtered());
    assert_eq!(api.register(None, "n1", "db").await, 403, "still read only");
    let gone = api
        .call("DELETE", &format!("/v1/acl/token/{anon}"), Some(MGMT), None)
        .await;
    assert_eq!(
        gone.status, 400,
        "the anonymous token cannot be deleted: {}",
        gone.body
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_stops_working() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    api.policy(
        "w",
        "service_prefix \"\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }",
    )
    .await;
    let r = api
        .put(
            "/v1/acl/token",
            Some(MGMT),
            json!({"Policies": [{"Name": "w"}], "ExpirationTTL": "2s"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["ExpirationTime"].is_string(), "{}", r.body);
    let secret = r.json()["SecretID"].as_str().unwrap().to_string();
    assert_eq!(api.register(Some(&secret), "n1", "web").await, 200);
    let reply = wait_until(Duration::from_secs(10), "the token to expire", || async {
        let r = api.get("/v1/catalog/services", Some(&secret)).await;
        (r.status == 403).then_some(r.body)
    })
    .await;
    assert_eq!(reply, "ACL not found");
    assert_eq!(api.register(Some(&secret), "n1", "db").await, 403);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_never_answers_with_what_the_token_may_not_see() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    api.policy(
        "web-reader",
        "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
    )
    .await;
    let t = api.token(&["web-reader"]).await;
    assert_eq!(api.register(Some(MGMT), "n1", "web").await, 200);
    let first = api.get("/v1/catalog/services", Some(&t)).await;
    let index: u64 = first.headers["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let waiter = {
        let (api, t) = (api.clone(), t.clone());
        tokio::spawn(async move {
            api.get(
                &format!("/v1/catalog/services?index={index}&wait=10s"),
                Some(&t),
            )
            .await
        })
    };
    let before = api.get("/v1/health/service/db", Some(&t)).await;
    let db_index: u64 = before.headers["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let hidden = {
        let (api, t) = (api.clone(), t.clone());
        tokio::spawn(async move {
            api.get(
                &format!("/v1/health/service/db?index={db_index}&wait=10s"),
                Some(&t),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.register(Some(MGMT), "n2", "db").await, 200);
    let woke = waiter.await.unwrap();
    assert_eq!(woke.status, 200);
    assert_eq!(woke.json(), json!({"web": []}), "db never shows");
    assert!(woke.filtered());
    let db = hidden.await.unwrap();
    let woke_at: u64 = db.headers["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(woke_at > db_index, "woken by db's registration");
    assert_eq!(db.json(), json!([]), "without db's instance");
    assert!(db.filtered());
    c.shutdown().await;
}

fn gateway_config(dc: &str, servers: Vec<String>, join: Vec<String>) -> wan_gateway::GatewayConfig {
    let mut cfg = wan_gateway::GatewayConfig::new(dc);
    cfg.listen = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    cfg.servers = servers;
    cfg.retry_join_wan = join;
    cfg.gossip_interval = Duration::from_millis(100);
    cfg.dead_after = Duration::from_secs(1);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_datacenter_replicates_tokens_and_resolves_them_while_the_primary_is_down() {
    let dc1 = TestCluster::builder(1)
        .dc("dc1")
        .agents(false)
        .acl(acl(DefaultPolicy::Deny, Some(MGMT)))
        .start()
        .await;
    let dc2 = TestCluster::builder(1)
        .dc("dc2")
        .agents(false)
        .acl(AclConfig {
            primary_datacenter: Some("dc1".into()),
            replication_token: Some(MGMT.into()),
            ..acl(DefaultPolicy::Deny, None)
        })
        .start()
        .await;
    dc1.wait_leader().await;
    dc2.wait_leader().await;
    let gw1 = wan_gateway::start(gateway_config("dc1", dc1.urls(), vec![]))
        .await
        .unwrap();
    let gw2 = wan_gateway::start(gateway_config(
        "dc2",
        dc2.urls(),
        vec![gw1.addr.to_string()],
    ))
    .await
    .unwrap();
    dc1.set_gateways(&[gw1.url()]);
    dc2.set_gateways(&[gw2.url()]);
    let (api1, api2) = (Api::new(dc1.node(0).url()), Api::new(dc2.node(0).url()));
    management_ready(&api1).await;
    // The management token itself reaches dc2 by replication.
    management_ready(&api2).await;
    api1.policy(
        "web",
        "service \"web\" { policy = \"write\" }\nnode_prefix \"\" { policy = \"write\" }",
    )
    .await;
    let t = api1.token(&["web"]).await;
    wait_until(
        Duration::from_secs(15),
        "the token replicated to dc2",
        || async { (api2.get("/v1/acl/token/self", Some(&t)).await.status == 200).then_some(()) },
    )
    .await;
    assert_eq!(api2.register(Some(&t), "n2", "web").await, 200);
    assert_eq!(api2.register(Some(&t), "n2", "db").await, 403);
    // A `?dc=dc2` request from dc1 carries its token; dc2 resolves it from its replica.
    let remote = api1.get("/v1/catalog/service/web?dc=dc2", Some(&t)).await;
    assert_eq!(remote.status, 200, "{}", remote.body);
    assert_eq!(remote.json().as_array().unwrap().len(), 1);
    // An ACL write in dc2 is made in the primary.
    let made_in_dc2 = api2
        .put(
            "/v1/acl/policy",
            Some(MGMT),
            json!({"Name": "from-dc2", "Rules": ""}),
        )
        .await;
    assert_eq!(made_in_dc2.status, 200, "{}", made_in_dc2.body);
    assert_eq!(
        api1.get("/v1/acl/policy/name/from-dc2", Some(MGMT))
            .await
            .status,
        200
    );
    // The primary goes away: dc2 keeps resolving what it replicated.
    gw1.stop().await;
    wait_until(
        Duration::from_secs(10),
        "dc1 unreachable from dc2",
        || async {
            (api2
                .get("/v1/catalog/services?dc=dc1", Some(MGMT))
                .await
                .status
                != 200)
                .then_some(())
        },
    )
    .await;
    assert_eq!(api2.register(Some(&t), "n2", "web").await, 200);
    assert_eq!(api2.register(Some(&t), "n3", "db").await, 403);
    gw2.stop().await;
    dc1.shutdown().await;
    dc2.shutdown().await;
}

/// Review findings: a write is checked against what it touches as stored, not the names the
/// client sends: a transaction cannot take over another service's instance by its ID, nor a
/// register attach a check to it; a tree read leaves out denied keys; a token cannot delete
/// itself; a huge TTL is refused, not a panic on every server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_checked_against_what_they_touch() {
    let (c, api) = one_server(acl(DefaultPolicy::Deny, Some(MGMT))).await;
    management_ready(&api).await;
    api.policy(
        "mine",
        "service \"mine\" {\n  policy = \"write\"\n}\nnode_prefix \"\" {\n  policy = \"read\"\n}\nkey_prefix \"\" {\n  policy = \"read\"\n}\nkey_prefix \"secret/\" {\n  policy = \"deny\"\n}",
    )
    .await;
    let t = api.token(&["mine"]).await;
    let t = Some(t.as_str());
    assert_eq!(api.register(Some(MGMT), "n1", "web").await, 200);
    // A transaction naming "mine" but aimed at web's instance ID.
    let txn = api
        .put(
            "/v1/txn",
            t,
            json!([{"Service": {"Verb": "delete", "Node": "n1", "Service": {"ID": "web", "Service": "mine"}}}]),
        )
        .await;
    assert_eq!(txn.status, 409, "{}", txn.body);
    let web = api.get("/v1/catalog/service/web", Some(MGMT)).await;
    assert_eq!(
        web.json().as_array().unwrap().len(),
        1,
        "web is still there"
    );
    // A check naming "mine" but attached to web's instance.
    let check = api
        .put(
            "/v1/catalog/register",
            t,
            json!({"Node": "n1", "SkipNodeUpdate": true, "Check": {"CheckID": "x", "ServiceID": "web", "ServiceName": "mine", "Status": "critical"}}),
        )
        .await;
    assert_eq!(check.status, 403, "{}", check.body);
    // A tree read in a transaction leaves out the denied keys.
    assert_eq!(
        api.put("/v1/kv/secret/a", Some(MGMT), json!(1))
            .await
            .status,
        200
    );
    assert_eq!(
        api.put("/v1/kv/open/a", Some(MGMT), json!(1)).await.status,
        200
    );
    let tree = api
        .put(
            "/v1/txn",
            t,
            json!([{"KV": {"Verb": "get-tree", "Key": ""}}]),
        )
        .await;
    assert_eq!(tree.status, 200, "{}", tree.body);
    assert!(
        tree.body.contains("open/a") && !tree.body.contains("secret/a"),
        "{}",
        tree.body
    );
    assert!(tree.filtered());
    // No token deletes itself; a TTL past the year 9999 is refused and the server lives on.
    let me = api.get("/v1/acl/token/self", Some(MGMT)).await.json()["AccessorID"]
        .as_str()
        .unwrap()
        .to_string();
    let own = api
        .call("DELETE", &format!("/v1/acl/token/{me}"), Some(MGMT), None)
        .await;
    assert_eq!(own.status, 403, "{}", own.body);
    let huge = api
        .put(
            "/v1/acl/token",
            Some(MGMT),
            json!({"ExpirationTTL": "100000000h"}),
        )
        .await;
    assert_eq!(huge.status, 400, "{}", huge.body);
    assert_eq!(
        api.register(Some(MGMT), "n1", "after").await,
        200,
        "still serving"
    );
    c.shutdown().await;
}

/// A secondary without a replication token resolves a token made in the primary by asking
/// the primary (Consul's remote resolution): it works there at once, and the primary's
/// management token may set the secondary's replication token at runtime, after which
/// replication runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_asks_the_primary_about_tokens_it_does_not_hold() {
    let dc1 = TestCluster::builder(1)
        .dc("dc1")
        .agents(false)
        .acl(acl(DefaultPolicy::Deny, Some(MGMT)))
        .start()
        .await;
    let dc2 = TestCluster::builder(1)
        .dc("dc2")
        .agents(false)
        .acl(AclConfig {
            primary_datacenter: Some("dc1".into()),
            ..acl(DefaultPolicy::Deny, None)
        })
        .start()
        .await;
    dc1.wait_leader().await;
    dc2.wait_leader().await;
    let gw1 = wan_gateway::start(gateway_config("dc1", dc1.urls(), vec![]))
        .await
        .unwrap();
    let gw2 = wan_gateway::start(gateway_config(
        "dc2",
        dc2.urls(),
        vec![gw1.addr.to_string()],
    ))
    .await
    .unwrap();
    dc1.set_gateways(&[gw1.url()]);
    dc2.set_gateways(&[gw2.url()]);
    let (api1, api2) = (Api::new(dc1.node(0).url()), Api::new(dc2.node(0).url()));
    management_ready(&api1).await;
    api1.policy(
        "web",
        "service \"web\" {\n  policy = \"write\"\n}\nnode_prefix \"\" {\n  policy = \"write\"\n}",
    )
    .await;
    let t = api1.token(&["web"]).await;
    // No replication token in dc2: the token is resolved by the primary.
    wait_until(
        Duration::from_secs(15),
        "dc2 resolving through dc1",
        || async { (api2.register(Some(&t), "n2", "web").await == 200).then_some(()) },
    )
    .await;
    assert_eq!(api2.register(Some(&t), "n2", "db").await, 403);
    // The primary's management token sets dc2's replication token; replication follows.
    let set = api2
        .put(
            "/v1/agent/token/replication",
            Some(MGMT),
            json!({"Token": MGMT}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    wait_until(
        Duration::from_secs(15),
        "dc2's replica holds the token",
        || async {
            let listed = api2.get("/v1/acl/tokens", Some(MGMT)).await;
            (listed.status == 200
                && listed.body.contains("SecretID")
                && listed.json().as_array().is_some_and(|a| a.len() >= 3))
            .then_some(())
        },
    )
    .await;
    gw2.stop().await;
    gw1.stop().await;
    dc1.shutdown().await;
    dc2.shutdown().await;
}
