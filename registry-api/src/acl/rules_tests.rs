use super::*;

fn rules(entries: &[(Resource, Match, &str, Access)]) -> Rules {
    let mut r = Rules::default();
    for (res, how, name, access) in entries {
        r.add(*res, *how, name, *access);
    }
    r
}

#[test]
fn hcl_and_json_forms_of_one_policy_are_equal() {
    let hcl = r#"
        # A comment, as Consul's examples have.
        operator = "read"
        acl = "deny"
        service "web" {
          policy = "write"
          intentions = "read"
        }
        service "db" {
          policy = "read"
        }
        service_prefix "" { policy = "read" }
        key_prefix "app/" { policy = "list" }
        key "app/secret" { policy = "deny" }
        node_prefix "" { policy = "read" }
        agent "n1" { policy = "write" }
        session_prefix "" { policy = "write" }
        event_prefix "deploy" { policy = "write" }
        query "q" { policy = "read" }
        identity_prefix "w" { policy = "write" }
        keyring = "write"
        mesh = "read"
        peering = "deny"
    "#;
    let json = r#"{
        "operator": "read",
        "acl": "deny",
        "service": {"web": {"policy": "write", "intentions": "read"}, "db": {"policy": "read"}},
        "service_prefix": {"": {"policy": "read"}},
        "key_prefix": {"app/": {"policy": "list"}},
        "key": {"app/secret": {"policy": "deny"}},
        "node_prefix": {"": {"policy": "read"}},
        "agent": {"n1": {"policy": "write"}},
        "session_prefix": {"": {"policy": "write"}},
        "event_prefix": {"deploy": {"policy": "write"}},
        "query": {"q": {"policy": "read"}},
        "identity_prefix": {"w": {"policy": "write"}},
        "keyring": "write",
        "mesh": "read",
        "peering": "deny"
    }"#;
    // What HCL-to-JSON converters write: a family's blocks as a list, a body as a list.
    let json_lists = r#"{
        "operator": "read", "acl": "deny", "keyring": "write", "mesh": "read", "peering": "deny",
        "service": [{"web": [{"policy": "write", "intentions": "read"}]}, {"db": [{"policy": "read"}]}],
        "service_prefix": [{"": [{"policy": "read"}]}],
        "key_prefix": [{"app/": {"policy": "list"}}],
        "key": [{"app/secret": {"policy": "deny"}}],
        "node_prefix": [{"": {"policy": "read"}}],
        "agent": [{"n1": {"policy": "write"}}],
        "session_prefix": [{"": {"policy": "write"}}],
        "event_prefix": [{"deploy": {"policy": "write"}}],
        "query": [{"q": {"policy": "read"}}],
        "identity_prefix": [{"w": {"Policy": "write"}}]
    }"#;
    let from_hcl = Rules::parse(hcl).unwrap();
    assert_eq!(from_hcl, Rules::parse(json).unwrap());
    assert_eq!(from_hcl, Rules::parse(json_lists).unwrap());
    assert_eq!(from_hcl.len(), 16);
    assert_eq!(from_hcl.scalar(Scalar::Operator), Some(Access::Read));
    assert_eq!(from_hcl.scalar(Scalar::Acl), Some(Access::Deny));
    let mut expected = rules(&[
        (Resource::Service, Match::Exact, "web", Access::Write),
        (Resource::Service, Match::Exact, "db", Access::Read),
        (Resource::Service, Match::Prefix, "", Access::Read),
        (Resource::Key, Match::Prefix, "app/", Access::List),
        (Resource::Key, Match::Exact, "app/secret", Access::Deny),
        (Resource::Node, Match::Prefix, "", Access::Read),
        (Resource::Agent, Match::Exact, "n1", Access::Write),
        (Resource::Session, Match::Prefix, "", Access::Write),
        (Resource::Event, Match::Prefix, "deploy", Access::Write),
        (Resource::Query, Match::Exact, "q", Access::Read),
        (Resource::Identity, Match::Prefix, "w", Access::Write),
    ]);
    for (s, a) in [
        (Scalar::Operator, Access::Read),
        (Scalar::Acl, Access::Deny),
        (Scalar::Keyring, Access::Write),
        (Scalar::Mesh, Access::Read),
        (Scalar::Peering, Access::Deny),
    ] {
        expected.add_scalar(s, a);
    }
    assert_eq!(from_hcl, expected);
}

#[test]
fn empty_and_comment_only_texts_are_no_rules() {
    for text in [
        "",
        "  \n\t",
        "# nothing\n// still nothing\n/* none */",
        "{}",
    ] {
        let r = Rules::parse(text).unwrap();
        assert!(r.is_empty(), "{text:?}");
    }
}

#[test]
fn repeated_rules_merge_by_precedence_within_a_policy() {
    let r = Rules::parse(
        r#"
        key "k" { policy = "read" }
        key "k" { policy = "list" }
        service "web" { policy = "write" }
        service "web" { policy = "read" }
        service "web" { policy = "deny" }
        service "web" { policy = "write" }
        "#,
    )
    .unwrap();
    assert_eq!(
        r,
        rules(&[
            (Resource::Key, Match::Exact, "k", Access::List),
            (Resource::Service, Match::Exact, "web", Access::Deny),
        ])
    );
    // Exact and prefix rules of one name are different rules.
    let r =
        Rules::parse("node \"a\" { policy = \"read\" }\nnode_prefix \"a\" { policy = \"write\" }")
            .unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn access_precedence_is_the_variant_order() {
    assert!(Access::Deny > Access::Write);
    assert!(Access::Write > Access::List);
    assert!(Access::List > Access::Read);
    let cases = [
        (Access::Read, Access::Read, true),
        (Access::Read, Access::List, false),
        (Access::Read, Access::Write, false),
        (Access::List, Access::Read, true),
        (Access::List, Access::List, true),
        (Access::List, Access::Write, false),
        (Access::Write, Access::Read, true),
        (Access::Write, Access::List, true),
        (Access::Write, Access::Write, true),
        (Access::Deny, Access::Read, false),
        (Access::Deny, Access::Write, false),
        (Access::Write, Access::Deny, false),
    ];
    for (rule, wanted, allowed) in cases {
        assert_eq!(rule.grants(wanted), allowed, "{rule} grants {wanted}?");
    }
}

#[test]
fn identities_are_consuls_templated_policies() {
    assert_eq!(
        Rules::service_identity("web"),
        Rules::parse(
            r#"
            service "web" { policy = "write" }
            service "web-sidecar-proxy" { policy = "write" }
            service_prefix "" { policy = "read" }
            node_prefix "" { policy = "read" }
            "#
        )
        .unwrap()
    );
    assert_eq!(
        Rules::node_identity("n1"),
        Rules::parse(
            "node \"n1\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }"
        )
        .unwrap()
    );
}

#[test]
fn display_reads_back_to_the_same_rules() {
    let mut r = Rules::service_identity("web");
    r.add(
        Resource::Key,
        Match::Prefix,
        "odd \"name\" \\ ${x} %{y} \n",
        Access::List,
    );
    r.add(Resource::Key, Match::Exact, "ünïcode/ключ", Access::Deny);
    r.add_scalar(Scalar::Operator, Access::Write);
    let text = r.to_string();
    assert_eq!(Rules::parse(&text).unwrap(), r, "{text}");
}

#[test]
fn bad_input_says_what_and_where() {
    let cases: &[(&str, &str)] = &[
        (
            r#"service "web" { policy = "reed" }"#,
            r#"invalid policy "reed" for service "web" (want read, write or deny)"#,
        ),
        (
            r#"service "web" { policy = "list" }"#,
            r#"invalid policy "list" for service "web" (want read, write or deny; list is only for key and key_prefix)"#,
        ),
        (
            r#"key_prefix "a/" { policy = "lst" }"#,
            r#"invalid policy "lst" for key_prefix "a/" (want read, write, list or deny)"#,
        ),
        (
            r#"service "web" { policy = "Write" }"#,
            r#"invalid policy "Write" for service "web" (want read, write or deny)"#,
        ),
        (
            "service \"web\" {\n policy = \"write\"\n intentions = \"all\"\n}",
            r#"invalid intentions "all" for service "web" (want read, write or deny)"#,
        ),
        (
            r#"operator = "list""#,
            r#"invalid policy "list" for operator (want read, write or deny; list is only for key and key_prefix)"#,
        ),
        (
            r#"services "web" { policy = "read" }"#,
            r#"unknown rule kind "services""#,
        ),
        (r#"bogus = "read""#, r#"unknown rule kind "bogus""#),
        (
            r#"service "web" { }"#,
            r#"service "web": the policy is missing"#,
        ),
        (
            "node \"n\" {\n policy = \"read\"\n intentions = \"read\"\n}",
            r#"node "n": unknown field "intentions" (want policy)"#,
        ),
        (
            r#"service web { policy = "read" }"#,
            "service web: the name must be a quoted string",
        ),
        (
            r#"service { policy = "read" }"#,
            "service: a name is missing",
        ),
        (
            r#"service "a" "b" { policy = "read" }"#,
            "service: takes one name, not several",
        ),
        (r#"operator { policy = "read" }"#, "operator: takes a value"),
        (
            r#"operator = 1"#,
            "operator: must be a string (read, write or deny), not a number",
        ),
        (
            r#"service "web" { policy = var.p }"#,
            r#"service "web": values must be literal strings"#,
        ),
        (
            r#"service "web" { policy = "${p}" }"#,
            r#"service "web": values must be literal strings"#,
        ),
        (r#"service "web" {"#, "invalid rules syntax at line 1"),
        (
            r#"{"service": {"web": {"policy": 7}}}"#,
            r#"service "web": policy must be a string, not a number"#,
        ),
        (
            r#"{"service": {"web": "write"}}"#,
            r#"service "web": must be a block with a policy, not a string"#,
        ),
        (
            r#"{"service": ["web"]}"#,
            "service: list items must be objects of names to rules, not a string",
        ),
        (r#"{"service": "web"}"#, "service: must map names to rules"),
        (r#"{"service": "#, "invalid rules syntax at line 1"),
        (r#"{"acl": "write"} x"#, "invalid rules syntax at line 1"),
    ];
    for (text, want) in cases {
        let err = Rules::parse(text).expect_err(text).to_string();
        assert!(err.starts_with(want), "{text}\n got: {err}\nwant: {want}");
    }
}

#[test]
fn syntax_errors_carry_the_line() {
    let err =
        Rules::parse("operator = \"read\"\n\nservice \"web\" {\n  policy = \n}\n").unwrap_err();
    let RulesError::Syntax { line, .. } = err else {
        panic!("{err:?}");
    };
    assert!(line >= 4, "{line}");
    let err = Rules::parse("{\n\"acl\": \"read\",\n\"key\": [}").unwrap_err();
    assert!(matches!(err, RulesError::Syntax { line: 3, .. }), "{err:?}");
}

#[test]
fn the_work_is_bounded() {
    let long = format!("# {}", "x".repeat(MAX_RULES_BYTES));
    assert_eq!(Rules::parse(&long), Err(RulesError::TooLong(long.len())));
    let many: String = (0..=MAX_RULES)
        .map(|i| format!("key \"k{i}\" {{ policy = \"read\" }}\n"))
        .collect();
    assert!(many.len() <= MAX_RULES_BYTES);
    assert_eq!(Rules::parse(&many), Err(RulesError::TooMany));
    // The same rule repeated still counts: the bound is on the work.
    let repeated = "key \"k\" { policy = \"read\" }\n".repeat(MAX_RULES + 1);
    assert_eq!(Rules::parse(&repeated), Err(RulesError::TooMany));
    let at_limit: String = (0..MAX_RULES)
        .map(|i| format!("key \"k{i}\" {{ policy = \"read\" }}\n"))
        .collect();
    assert_eq!(Rules::parse(&at_limit).unwrap().len(), MAX_RULES);
    // Deep nesting is a syntax error, not a stack overflow.
    for deep in [
        "a = ".to_string() + &"[".repeat(30_000),
        "{\"a\":".repeat(10_000),
    ] {
        assert!(
            matches!(Rules::parse(&deep), Err(RulesError::Syntax { .. })),
            "{}",
            &deep[..10]
        );
    }
}

#[test]
fn default_policy_words() {
    assert_eq!(
        "allow".parse::<DefaultPolicy>().unwrap(),
        DefaultPolicy::Allow
    );
    assert_eq!(
        "deny".parse::<DefaultPolicy>().unwrap(),
        DefaultPolicy::Deny
    );
    assert!("Allow".parse::<DefaultPolicy>().is_err());
    assert_eq!(DefaultPolicy::Allow.to_string(), "allow");
    assert_eq!(DefaultPolicy::Deny.to_string(), "deny");
}

#[test]
fn words_print_as_consul_writes_them() {
    assert_eq!(
        Resource::ALL.map(|r| r.to_string()).join(","),
        "agent,event,identity,key,node,query,service,session"
    );
    assert_eq!(
        Scalar::ALL.map(|s| s.to_string()).join(","),
        "acl,keyring,mesh,operator,peering"
    );
    assert_eq!(
        [Access::Read, Access::List, Access::Write, Access::Deny].map(|a| a.to_string()),
        ["read", "list", "write", "deny"]
    );
    for (i, r) in Resource::ALL.into_iter().enumerate() {
        assert_eq!(r as usize, i);
    }
    for (i, s) in Scalar::ALL.into_iter().enumerate() {
        assert_eq!(s as usize, i);
    }
}
