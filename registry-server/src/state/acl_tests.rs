use super::*;
use registry_api::acl::DefaultPolicy;

fn apply(
    t: &mut AclTable,
    index: u64,
    cmd: AclCommand<'_>,
) -> Result<super::super::Outcome, String> {
    let (plan, outcome) = t.plan(index, 1_000_000, &cmd)?;
    let mut rows = Vec::new();
    plan.encode(t, &mut rows)?;
    t.commit(plan);
    Ok(outcome)
}

fn token(accessor: &str, secret: &str, policies: &[&str]) -> AclTokenSetRequest {
    AclTokenSetRequest {
        token: AclToken {
            accessor_id: accessor.into(),
            secret_id: secret.into(),
            policies: policies
                .iter()
                .map(|n| AclLink {
                    id: String::new(),
                    name: n.to_string(),
                })
                .collect(),
            ..Default::default()
        },
        create: true,
    }
}

fn policy(id: &str, name: &str, rules: &str) -> AclPolicySetRequest {
    AclPolicySetRequest {
        policy: AclPolicy {
            id: id.into(),
            name: name.into(),
            rules: rules.into(),
            ..Default::default()
        },
        create: true,
    }
}

#[test]
fn bootstrap_happens_once_and_makes_a_management_token() {
    let mut t = AclTable::default();
    let boot = AclBootstrapRequest {
        token: AclToken {
            accessor_id: "a1".into(),
            secret_id: "s1".into(),
            ..Default::default()
        },
        from_config: false,
    };
    apply(&mut t, 5, AclCommand::Bootstrap(&boot)).unwrap();
    assert_eq!(t.bootstrap_index(), 5);
    let auth = t.authority("s1", "dc1", DefaultPolicy::Deny).unwrap();
    assert!(auth.management);
    let mut again = boot.clone();
    again.token.accessor_id = "a2".into();
    again.token.secret_id = "s2".into();
    let e = apply(&mut t, 6, AclCommand::Bootstrap(&again)).unwrap_err();
    assert_eq!(e, "ACL bootstrap no longer allowed (reset index: 5)");
    assert!(
        t.token("a2").is_none(),
        "a refused bootstrap writes nothing"
    );
    // The configured initial management token is installed once, bootstrap or not.
    again.from_config = true;
    apply(&mut t, 7, AclCommand::Bootstrap(&again)).unwrap();
    assert!(
        t.authority("s2", "dc1", DefaultPolicy::Deny)
            .unwrap()
            .management
    );
    assert_eq!(
        apply(&mut t, 8, AclCommand::Bootstrap(&again)).unwrap(),
        super::super::Outcome::Bool(false)
    );
    assert_eq!(t.index(), 7, "a no-op does not move the index");
}

#[test]
fn tokens_link_policies_by_name_and_deleted_links_drop_out() {
    let mut t = AclTable::default();
    apply(
        &mut t,
        2,
        AclCommand::PolicySet(&policy(
            "p1",
            "web",
            "service \"web\" { policy = \"write\" }",
        )),
    )
    .unwrap();
    apply(
        &mut t,
        3,
        AclCommand::TokenSet(&token("a1", "s1", &["web"])),
    )
    .unwrap();
    let tok = t.token("a1").unwrap();
    assert_eq!(
        tok.policies,
        [AclLink {
            id: "p1".into(),
            name: "web".into()
        }]
    );
    let auth = t.authority("s1", "dc1", DefaultPolicy::Deny).unwrap();
    assert_eq!(auth.rules.len(), 1);
    assert!(!auth.management);
    let missing = apply(
        &mut t,
        4,
        AclCommand::TokenSet(&token("a2", "s2", &["nope"])),
    )
    .unwrap_err();
    assert!(missing.contains("No such ACL policy"), "{missing}");
    apply(&mut t, 5, AclCommand::PolicyDelete("p1")).unwrap();
    assert!(t.token("a1").unwrap().policies.is_empty());
    assert!(t
        .authority("s1", "dc1", DefaultPolicy::Deny)
        .unwrap()
        .rules
        .is_empty());
    let builtin = apply(&mut t, 6, AclCommand::PolicyDelete(GLOBAL_MANAGEMENT_ID)).unwrap_err();
    assert!(builtin.contains("not permitted"));
    let anon = apply(&mut t, 6, AclCommand::TokenDelete(ANONYMOUS_ACCESSOR)).unwrap_err();
    assert!(anon.contains("not permitted"));
}

#[test]
fn bad_rules_and_duplicate_names_are_refused() {
    let mut t = AclTable::default();
    let e = apply(
        &mut t,
        2,
        AclCommand::PolicySet(&policy("p1", "x", "service \"a\" { policy = \"reed\" }")),
    )
    .unwrap_err();
    assert!(e.starts_with("Failed to parse policy"), "{e}");
    apply(&mut t, 3, AclCommand::PolicySet(&policy("p1", "x", ""))).unwrap();
    let e = apply(&mut t, 4, AclCommand::PolicySet(&policy("p2", "x", ""))).unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    let e = apply(
        &mut t,
        4,
        AclCommand::PolicySet(&policy("p3", "bad name", "")),
    )
    .unwrap_err();
    assert!(e.contains("Invalid Policy name"), "{e}");
}

#[test]
fn a_ttl_becomes_an_expiration_time_from_the_entry() {
    let mut t = AclTable::default();
    let mut req = token("a1", "s1", &[]);
    req.token.expiration_ttl = Some("1h".into());
    apply(&mut t, 2, AclCommand::TokenSet(&req)).unwrap();
    let auth = t.authority("s1", "dc1", DefaultPolicy::Allow).unwrap();
    assert_eq!(auth.expires_at_ms, Some(1_000_000 + 3_600_000));
}

#[test]
fn rows_rebuild_the_same_table_and_a_replica_keeps_local_tokens() {
    let mut t = AclTable::default();
    apply(&mut t, 2, AclCommand::PolicySet(&policy("p1", "web", ""))).unwrap();
    apply(
        &mut t,
        3,
        AclCommand::TokenSet(&token("a1", "s1", &["web"])),
    )
    .unwrap();
    let mut back = AclTable::default();
    for (k, v) in t.rows() {
        let k = String::from_utf8(k).unwrap();
        back.load_row(k.strip_prefix(ACL_PREFIX).unwrap(), &v)
            .unwrap();
    }
    assert_eq!(back, t);

    let mut secondary = AclTable::default();
    let mut local = token("l1", "ls", &[]);
    local.token.local = true;
    apply(&mut secondary, 2, AclCommand::TokenSet(&local)).unwrap();
    let replica = AclReplicateRequest {
        policies: t.policies().cloned().collect(),
        roles: t.roles().collect(),
        tokens: t.tokens().collect(),
    };
    apply(&mut secondary, 9, AclCommand::Replicate(&replica)).unwrap();
    assert!(secondary.token("l1").is_some(), "local tokens stay");
    assert!(secondary
        .authority("s1", "dc2", DefaultPolicy::Deny)
        .is_some());
    let index = secondary.index();
    apply(&mut secondary, 10, AclCommand::Replicate(&replica)).unwrap();
    assert_eq!(secondary.index(), index, "the same replica changes nothing");
}
