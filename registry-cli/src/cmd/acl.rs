//! `registry acl ...` (<https://developer.hashicorp.com/consul/commands/acl>): bootstrap,
//! policies, roles and tokens through `/v1/acl/*`, and `set-agent-token` through
//! `PUT /v1/agent/token/:type`. A token is printed as Consul's CLI prints it (`AccessorID:`,
//! `SecretID:`, ...), or the API's JSON with `-format json`.
//!
//! Owns: the commands' flags and messages. Must not touch: ACL semantics (the servers decide;
//! the shapes are `registry_api::acl`).

use super::Ctx;
use crate::{output, CmdResult, Failure};
use clap::{Args, Subcommand};
use registry_api::acl::{AclLink, AclPolicy, AclRole, AclToken};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `registry acl ...`.
#[derive(Subcommand, Debug)]
pub enum AclCmd {
    /// Makes the first management token (once per cluster) and prints it.
    Bootstrap,
    /// Policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Roles.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Sets one of the local agent's tokens (`agent` or `default`) at runtime.
    SetAgentToken(SetAgentToken),
}

/// `registry acl policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Creates a policy.
    Create(PolicyCreate),
    /// Lists the policies.
    List,
    /// Prints one policy, by -id or -name.
    Read(ByIdOrName),
    /// Deletes a policy, by -id or -name.
    Delete(ByIdOrName),
}

/// `registry acl role ...`.
#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Creates a role.
    Create(RoleCreate),
    /// Lists the roles.
    List,
    /// Prints one role, by -id or -name.
    Read(ByIdOrName),
    /// Deletes a role, by -id or -name.
    Delete(ByIdOrName),
}

/// `registry acl token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Creates a token.
    Create(TokenCreate),
    /// Lists the tokens.
    List,
    /// Prints one token (-accessor-id), or the one in use (-self).
    Read(TokenRead),
    /// Deletes a token.
    Delete(AccessorArg),
    /// Makes a new token with the same policies, roles and identities.
    Clone(TokenClone),
}

/// A policy.
#[derive(Args, Debug)]
pub struct PolicyCreate {
    /// Its unique name.
    #[arg(long)]
    pub name: String,
    /// The rules (HCL or JSON), or `@file` to read them from a file.
    #[arg(long, default_value = "")]
    pub rules: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A datacenter it applies in (repeatable; none: all).
    #[arg(long = "valid-datacenter")]
    pub valid_datacenters: Vec<String>,
}

/// A role.
#[derive(Args, Debug)]
pub struct RoleCreate {
    /// Its unique name.
    #[arg(long)]
    pub name: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A policy by name (repeatable).
    #[arg(long = "policy-name")]
    pub policy_names: Vec<String>,
    /// A policy by ID (repeatable).
    #[arg(long = "policy-id")]
    pub policy_ids: Vec<String>,
    /// A service identity (repeatable).
    #[arg(long = "service-identity")]
    pub service_identities: Vec<String>,
}

/// A token.
#[derive(Args, Debug)]
pub struct TokenCreate {
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A policy by name (repeatable).
    #[arg(long = "policy-name")]
    pub policy_names: Vec<String>,
    /// A policy by ID (repeatable).
    #[arg(long = "policy-id")]
    pub policy_ids: Vec<String>,
    /// A role by name (repeatable).
    #[arg(long = "role-name")]
    pub role_names: Vec<String>,
    /// A service identity (repeatable).
    #[arg(long = "service-identity")]
    pub service_identities: Vec<String>,
    /// A node identity as `NODE:DATACENTER` (repeatable).
    #[arg(long = "node-identity")]
    pub node_identities: Vec<String>,
    /// How long it works (`1h`); forever when not given.
    #[arg(long = "expires-ttl")]
    pub expires_ttl: Option<String>,
    /// Valid only in this datacenter.
    #[arg(long)]
    pub local: bool,
    /// The SecretID to use (default: a random one).
    #[arg(long)]
    pub secret: Option<String>,
}

/// `-id` or `-name`.
#[derive(Args, Debug)]
pub struct ByIdOrName {
    /// The ID.
    #[arg(long)]
    pub id: Option<String>,
    /// The name.
    #[arg(long)]
    pub name: Option<String>,
}

/// `token read`.
#[derive(Args, Debug)]
pub struct TokenRead {
    /// The token's AccessorID.
    #[arg(long = "accessor-id")]
    pub accessor_id: Option<String>,
    /// The token this command uses (`-token`, `REGISTRY_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN`).
    #[arg(long = "self")]
    pub own: bool,
}

/// A token's AccessorID.
#[derive(Args, Debug)]
pub struct AccessorArg {
    /// The AccessorID.
    #[arg(long = "accessor-id")]
    pub accessor_id: String,
}

/// `token clone`.
#[derive(Args, Debug)]
pub struct TokenClone {
    /// The AccessorID of the token to clone.
    #[arg(long = "accessor-id")]
    pub accessor_id: String,
    /// The new token's description (default: the original's).
    #[arg(long)]
    pub description: Option<String>,
}

/// `set-agent-token TYPE TOKEN`.
#[derive(Args, Debug)]
pub struct SetAgentToken {
    /// `agent` or `default`.
    pub kind: String,
    /// The token's SecretID.
    pub token: String,
}

/// Runs an `acl` command.
pub async fn run(ctx: &Ctx, cmd: AclCmd) -> CmdResult {
    match cmd {
        AclCmd::Bootstrap => {
            let token: AclToken = call(
                ctx,
                reqwest::Method::PUT,
                "/v1/acl/bootstrap",
                None::<&()>,
                "bootstrapping ACLs",
            )
            .await?;
            print_token(ctx, &token);
        }
        AclCmd::Policy(cmd) => policy(ctx, cmd).await?,
        AclCmd::Role(cmd) => role(ctx, cmd).await?,
        AclCmd::Token(cmd) => token(ctx, cmd).await?,
        AclCmd::SetAgentToken(a) => {
            let body = serde_json::json!({ "Token": a.token });
            let path = format!("/v1/agent/token/{}", a.kind);
            send(
                ctx,
                reqwest::Method::PUT,
                &path,
                Some(&body),
                "setting the agent token",
            )
            .await?;
            println!("ACL token {:?} set successfully", a.kind);
        }
    }
    Ok(0)
}

async fn policy(ctx: &Ctx, cmd: PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Create(a) => {
            let rules = match a.rules.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| Failure(format!("Error reading rules file {file}: {e}")))?,
                None => a.rules,
            };
            let body = AclPolicy {
                name: a.name,
                description: a.description,
                rules,
                datacenters: a.valid_datacenters,
                ..Default::default()
            };
            let p: AclPolicy = call(
                ctx,
                reqwest::Method::PUT,
                "/v1/acl/policy",
                Some(&body),
                "creating the policy",
            )
            .await?;
            print_policy(ctx, &p);
        }
        PolicyCmd::List => {
            let list: Vec<serde_json::Value> = call(
                ctx,
                reqwest::Method::GET,
                "/v1/acl/policies",
                None::<&()>,
                "listing policies",
            )
            .await?;
            if ctx.json() {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| vec![text(&p["ID"]), text(&p["Name"]), text(&p["Description"])])
                    .collect();
                output::table(&["ID", "Name", "Description"], &rows);
            }
        }
        PolicyCmd::Read(a) => {
            let path = by_id_or_name("policy", &a)?;
            let p: AclPolicy = call(
                ctx,
                reqwest::Method::GET,
                &path,
                None::<&()>,
                "reading the policy",
            )
            .await?;
            print_policy(ctx, &p);
        }
        PolicyCmd::Delete(a) => {
            let id = resolve_id::<AclPolicy>(ctx, "policy", &a, |p| p.id.clone()).await?;
            send(
                ctx,
                reqwest::Method::DELETE,
                &format!("/v1/acl/policy/{id}"),
                None::<&()>,
                "deleting the policy",
            )
            .await?;
            println!("Policy {id:?} deleted successfully");
        }
    }
    Ok(())
}

async fn role(ctx: &Ctx, cmd: RoleCmd) -> Result<(), Failure> {
    match cmd {
        RoleCmd::Create(a) => {
            let body = AclRole {
                name: a.name,
                description: a.description,
                policies: links(&a.policy_ids, &a.policy_names),
                service_identities: service_identities(&a.service_identities),
                ..Default::default()
            };
            let r: AclRole = call(
                ctx,
                reqwest::Method::PUT,
                "/v1/acl/role",
                Some(&body),
                "creating the role",
            )
            .await?;
            print_role(ctx, &r);
        }
        RoleCmd::List => {
            let list: Vec<AclRole> = call(
                ctx,
                reqwest::Method::GET,
                "/v1/acl/roles",
                None::<&()>,
                "listing roles",
            )
            .await?;
            if ctx.json() {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| vec![r.id.clone(), r.name.clone(), names(&r.policies)])
                    .collect();
                output::table(&["ID", "Name", "Policies"], &rows);
            }
        }
        RoleCmd::Read(a) => {
            let path = by_id_or_name("role", &a)?;
            let r: AclRole = call(
                ctx,
                reqwest::Method::GET,
                &path,
                None::<&()>,
                "reading the role",
            )
            .await?;
            print_role(ctx, &r);
        }
        RoleCmd::Delete(a) => {
            let id = resolve_id::<AclRole>(ctx, "role", &a, |r| r.id.clone()).await?;
            send(
                ctx,
                reqwest::Method::DELETE,
                &format!("/v1/acl/role/{id}"),
                None::<&()>,
                "deleting the role",
            )
            .await?;
            println!("Role {id:?} deleted successfully");
        }
    }
    Ok(())
}

async fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::Create(a) => {
            let mut nodes = Vec::new();
            for n in &a.node_identities {
                let Some((node, dc)) = n.split_once(':') else {
                    return Err(Failure(format!(
                        "-node-identity {n:?}: want NODE:DATACENTER"
                    )));
                };
                nodes.push(registry_api::acl::NodeIdentity {
                    node_name: node.into(),
                    datacenter: dc.into(),
                });
            }
            let body = AclToken {
                secret_id: a.secret.unwrap_or_default(),
                description: a.description,
                policies: links(&a.policy_ids, &a.policy_names),
                roles: links(&[], &a.role_names),
                service_identities: service_identities(&a.service_identities),
                node_identities: nodes,
                local: a.local,
                expiration_ttl: a.expires_ttl,
                ..Default::default()
            };
            let t: AclToken = call(
                ctx,
                reqwest::Method::PUT,
                "/v1/acl/token",
                Some(&body),
                "creating the token",
            )
            .await?;
            print_token(ctx, &t);
        }
        TokenCmd::List => {
            let list: Vec<AclToken> = call(
                ctx,
                reqwest::Method::GET,
                "/v1/acl/tokens",
                None::<&()>,
                "listing tokens",
            )
            .await?;
            if ctx.json() {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.accessor_id.clone(),
                            t.description.clone(),
                            names(&t.policies),
                            t.local.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["AccessorID", "Description", "Policies", "Local"], &rows);
            }
        }
        TokenCmd::Read(a) => {
            let path = match (a.own, a.accessor_id) {
                (true, None) => "/v1/acl/token/self".to_string(),
                (false, Some(id)) => format!("/v1/acl/token/{id}"),
                _ => return Err(Failure("give exactly one of -accessor-id and -self".into())),
            };
            let t: AclToken = call(
                ctx,
                reqwest::Method::GET,
                &path,
                None::<&()>,
                "reading the token",
            )
            .await?;
            print_token(ctx, &t);
        }
        TokenCmd::Delete(a) => {
            let path = format!("/v1/acl/token/{}", a.accessor_id);
            send(
                ctx,
                reqwest::Method::DELETE,
                &path,
                None::<&()>,
                "deleting the token",
            )
            .await?;
            println!("Token {:?} deleted successfully", a.accessor_id);
        }
        TokenCmd::Clone(a) => {
            let path = format!("/v1/acl/token/{}/clone", a.accessor_id);
            let body = serde_json::json!({ "Description": a.description });
            let t: AclToken = call(
                ctx,
                reqwest::Method::PUT,
                &path,
                Some(&body),
                "cloning the token",
            )
            .await?;
            print_token(ctx, &t);
        }
    }
    Ok(())
}

/// Sends a request with an optional JSON body; a failure says what was being `done`.
async fn send<B: Serialize + ?Sized>(
    ctx: &Ctx,
    method: reqwest::Method,
    path: &str,
    body: Option<&B>,
    doing: &str,
) -> Result<reqwest::Response, Failure> {
    let body = body
        .map(|b| serde_json::to_vec(b).map(reqwest::Body::from))
        .transpose()
        .map_err(|e| Failure(format!("Error {doing}: {e}")))?;
    ctx.client
        .send(method, path, &ctx.dc_query(), body)
        .await
        .map_err(|e| Failure::doing(doing, e))
}

/// Sends a request and decodes its JSON answer.
async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
    ctx: &Ctx,
    method: reqwest::Method,
    path: &str,
    body: Option<&B>,
    doing: &str,
) -> Result<T, Failure> {
    let resp = send(ctx, method, path, body, doing).await?;
    resp.json()
        .await
        .map_err(|e| Failure(format!("Error {doing}: the answer does not decode: {e}")))
}

/// The read path of `-id` or `-name`.
fn by_id_or_name(kind: &str, a: &ByIdOrName) -> Result<String, Failure> {
    match (&a.id, &a.name) {
        (Some(id), None) => Ok(format!("/v1/acl/{kind}/{id}")),
        (None, Some(name)) => Ok(format!("/v1/acl/{kind}/name/{name}")),
        _ => Err(Failure("give exactly one of -id and -name".into())),
    }
}

/// The ID `-id` gives, or the one of the item `-name` names.
async fn resolve_id<T: DeserializeOwned>(
    ctx: &Ctx,
    kind: &str,
    a: &ByIdOrName,
    id_of: impl Fn(&T) -> String,
) -> Result<String, Failure> {
    if let (Some(id), None) = (&a.id, &a.name) {
        return Ok(id.clone());
    }
    let path = by_id_or_name(kind, a)?;
    let item: T = call(
        ctx,
        reqwest::Method::GET,
        &path,
        None::<&()>,
        &format!("reading the {kind}"),
    )
    .await?;
    Ok(id_of(&item))
}

fn links(ids: &[String], names: &[String]) -> Vec<AclLink> {
    ids.iter()
        .map(|id| AclLink {
            id: id.clone(),
            name: String::new(),
        })
        .chain(names.iter().map(|name| AclLink {
            id: String::new(),
            name: name.clone(),
        }))
        .collect()
}

fn service_identities(names: &[String]) -> Vec<registry_api::acl::ServiceIdentity> {
    names
        .iter()
        .map(|n| registry_api::acl::ServiceIdentity {
            service_name: n.clone(),
            datacenters: Vec::new(),
        })
        .collect()
}

fn names(links: &[AclLink]) -> String {
    links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Consul's CLI layout of a token.
fn print_token(ctx: &Ctx, t: &AclToken) {
    if ctx.json() {
        output::json(t);
        return;
    }
    println!("AccessorID:       {}", t.accessor_id);
    println!("SecretID:         {}", t.secret_id);
    println!("Description:      {}", t.description);
    println!("Local:            {}", t.local);
    println!("Create Time:      {}", t.create_time);
    if let Some(at) = &t.expiration_time {
        println!("Expiration Time:  {at}");
    }
    if !t.policies.is_empty() {
        println!("Policies:");
        for p in &t.policies {
            println!("   {} - {}", p.id, p.name);
        }
    }
    if !t.roles.is_empty() {
        println!("Roles:");
        for r in &t.roles {
            println!("   {} - {}", r.id, r.name);
        }
    }
}

fn print_policy(ctx: &Ctx, p: &AclPolicy) {
    if ctx.json() {
        output::json(p);
        return;
    }
    println!("ID:           {}", p.id);
    println!("Name:         {}", p.name);
    println!("Description:  {}", p.description);
    println!("Datacenters:  {}", p.datacenters.join(", "));
    println!("Rules:\n{}", p.rules);
}

fn print_role(ctx: &Ctx, r: &AclRole) {
    if ctx.json() {
        output::json(r);
        return;
    }
    println!("ID:           {}", r.id);
    println!("Name:         {}", r.name);
    println!("Description:  {}", r.description);
    println!("Policies:");
    for p in &r.policies {
        println!("   {} - {}", p.id, p.name);
    }
}
