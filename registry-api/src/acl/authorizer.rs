//! The pure decision function of Consul's ACLs (`acl/policy_authorizer.go`): from a token's
//! merged rules and the datacenter's default policy, may this request touch this resource?
//!
//! `allows` runs on every request and once per item when a list answer is filtered (100,000
//! services, say), so the rules are compiled once, in [`Authorizer::new`], into one byte trie
//! per resource family: a lookup walks the name once (`O(len(name) · log(fan-out))`) and
//! allocates nothing. The compiled form sits behind an `Arc`, so the per-request copy that
//! [`super::Authz`] holds is a reference count, not a copy of the rules.

use super::rules::{Access, DefaultPolicy, Match, Resource, Rules, Scalar};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What a token may do: management (everything), or its policies' rules merged over the
/// default policy.
#[derive(Clone)]
pub struct Authorizer {
    /// `None`: a management token, allowed everything.
    compiled: Option<Arc<Compiled>>,
}

/// A token's rules, merged and compiled for lookups.
struct Compiled {
    /// One trie per [`Resource`], indexed by its discriminant.
    families: [NameTrie; Resource::ALL.len()],
    /// The scalars, indexed by [`Scalar`]'s discriminant; `None` when no policy sets one.
    scalars: [Option<Access>; Scalar::ALL.len()],
    /// What a request no rule speaks about gets.
    default: DefaultPolicy,
    /// How many distinct rules were compiled (for `Debug`).
    rule_count: usize,
}

impl Authorizer {
    /// A management token's (Consul's `global-management`): everything is allowed.
    pub fn management() -> Self {
        Authorizer { compiled: None }
    }

    /// The rules of every policy (and identity) of a token, merged as Consul does
    /// (`acl/policy_merger.go`: per family and name, deny > write > list > read), over
    /// `default`.
    pub fn new(rules: &[&Rules], default: DefaultPolicy) -> Self {
        let mut merged = Rules::default();
        for r in rules {
            merged.merge(r);
        }
        let mut per_family: BTreeMap<Resource, Vec<(Match, &str, Access)>> = BTreeMap::new();
        for (resource, how, name, access) in merged.named() {
            per_family
                .entry(resource)
                .or_default()
                .push((how, name, access));
        }
        let families = Resource::ALL.map(|resource| {
            NameTrie::build(per_family.get(&resource).map(Vec::as_slice).unwrap_or(&[]))
        });
        let scalars = Scalar::ALL.map(|scalar| merged.scalar(scalar));
        Authorizer {
            compiled: Some(Arc::new(Compiled {
                families,
                scalars,
                default,
                rule_count: merged.len(),
            })),
        }
    }

    /// Whether this is a management token's (allowed everything, nothing to filter).
    pub fn is_management(&self) -> bool {
        self.compiled.is_none()
    }

    /// The default policy under the rules (`None` for management).
    pub fn default_policy(&self) -> Option<DefaultPolicy> {
        self.compiled.as_ref().map(|c| c.default)
    }

    /// May `name` of `resource` be accessed at `access`? An exact rule for the name decides;
    /// else the longest prefix rule that the name starts with; else the default policy. A
    /// rule decides both ways: a deny (or a read, for a write) is not overridden by an allow
    /// default. (Write grants read+list+write; List grants list+read; Read grants read.)
    pub fn allows(&self, resource: Resource, name: &str, access: Access) -> bool {
        let Some(c) = &self.compiled else {
            return true;
        };
        match c.families[resource as usize].lookup(name) {
            Some(rule) => rule.grants(access),
            None => c.default_allows(access),
        }
    }

    /// May the scalar resource be accessed at `access`? A set scalar decides, else the
    /// default policy.
    pub fn allows_scalar(&self, scalar: Scalar, access: Access) -> bool {
        let Some(c) = &self.compiled else {
            return true;
        };
        match c.scalars[scalar as usize] {
            Some(rule) => rule.grants(access),
            None => c.default_allows(access),
        }
    }

    /// Consul's KeyWritePrefix (a recursive KV delete): allowed when the longest prefix rule
    /// that applies to `prefix` grants write AND no rule (exact or prefix) at or under
    /// `prefix` grants less; with no applicable prefix rule and nothing weaker under it, the
    /// default policy decides.
    pub fn key_write_prefix(&self, prefix: &str) -> bool {
        let Some(c) = &self.compiled else {
            return true;
        };
        let (applicable, weaker_under) = c.families[Resource::Key as usize].write_prefix(prefix);
        match applicable {
            Some(rule) if rule != Access::Write => false,
            _ if weaker_under => false,
            Some(_) => true,
            None => c.default_allows(Access::Write),
        }
    }
}

impl Compiled {
    /// The default policy's answer for a request no rule speaks about.
    fn default_allows(&self, access: Access) -> bool {
        self.default == DefaultPolicy::Allow && access != Access::Deny
    }
}

/// A summary: the compiled rules can be large, and an authorizer ends up in request logs.
impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.compiled {
            None => f.write_str("Authorizer(management)"),
            Some(c) => write!(
                f,
                "Authorizer(default {}, {} rules)",
                c.default, c.rule_count
            ),
        }
    }
}

/// The rules of one family as a byte trie over their names: exact and prefix rules of a name
/// sit at the node its last byte reaches (Consul keeps the same pair in a radix tree leaf).
struct NameTrie {
    /// Node 0 is the root (the empty name). A child is always pushed after its parent, so
    /// its index is larger.
    nodes: Vec<TrieNode>,
}

/// One byte of one or more names.
#[derive(Default)]
struct TrieNode {
    /// `(byte, node)`, sorted by byte (binary-searched).
    children: Vec<(u8, u32)>,
    /// The exact rule for the name that ends here.
    exact: Option<Access>,
    /// The prefix rule for the prefix that ends here.
    prefix: Option<Access>,
    /// Whether a rule (exact or prefix) here or below grants less than write: precomputed
    /// for KeyWritePrefix, which must otherwise walk the whole subtree.
    weaker_below: bool,
}

impl NameTrie {
    /// The trie of `rules` (distinct `(match, name)` pairs: [`Rules`] merged them).
    fn build(rules: &[(Match, &str, Access)]) -> Self {
        let mut nodes = vec![TrieNode::default()];
        for (how, name, access) in rules {
            let mut at = 0usize;
            for byte in name.bytes() {
                at = match nodes[at].children.binary_search_by_key(&byte, |(b, _)| *b) {
                    Ok(i) => nodes[at].children[i].1 as usize,
                    Err(i) => {
                        let child = nodes.len();
                        // Rules are bounded (MAX_RULES x MAX_RULES_BYTES per policy, a
                        // bounded number of policies per token): far below u32::MAX nodes.
                        nodes[at].children.insert(i, (byte, child as u32));
                        nodes.push(TrieNode::default());
                        child
                    }
                };
            }
            let node = &mut nodes[at];
            match how {
                Match::Exact => node.exact = Some(*access),
                Match::Prefix => node.prefix = Some(*access),
            }
        }
        // Children have larger indices than their parents, so one pass from the end sees
        // every subtree complete before its root.
        for i in (0..nodes.len()).rev() {
            let node = &nodes[i];
            let weaker = |rule: Option<Access>| rule.is_some_and(|a| a != Access::Write);
            let here = weaker(node.exact)
                || weaker(node.prefix)
                || node
                    .children
                    .iter()
                    .any(|(_, c)| nodes[*c as usize].weaker_below);
            nodes[i].weaker_below = here;
        }
        NameTrie { nodes }
    }

    /// The child of `node` for `byte`.
    fn child(&self, node: usize, byte: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        children
            .binary_search_by_key(&byte, |(b, _)| *b)
            .ok()
            .map(|i| children[i].1 as usize)
    }

    /// The rule that applies to `name`: its exact rule, else the longest prefix rule it
    /// starts with (Consul's `getPolicy`).
    fn lookup(&self, name: &str) -> Option<Access> {
        let mut at = 0usize;
        let mut longest_prefix = self.nodes[at].prefix;
        for byte in name.bytes() {
            match self.child(at, byte) {
                Some(next) => at = next,
                // No rule is for a name this long that starts this way.
                None => return longest_prefix,
            }
            if let Some(rule) = self.nodes[at].prefix {
                longest_prefix = Some(rule);
            }
        }
        self.nodes[at].exact.or(longest_prefix)
    }

    /// For KeyWritePrefix: the longest prefix rule that applies to `prefix` (one equal to it
    /// included), and whether a rule at or under `prefix` grants less than write.
    fn write_prefix(&self, prefix: &str) -> (Option<Access>, bool) {
        let mut at = 0usize;
        let mut longest_prefix = self.nodes[at].prefix;
        for byte in prefix.bytes() {
            match self.child(at, byte) {
                Some(next) => at = next,
                // No rule at all is at or under `prefix`.
                None => return (longest_prefix, false),
            }
            if let Some(rule) = self.nodes[at].prefix {
                longest_prefix = Some(rule);
            }
        }
        (longest_prefix, self.nodes[at].weaker_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Deny, List, Read, Write};
    use DefaultPolicy::{Allow, Deny as DefaultDeny};

    fn authz(texts: &[&str], default: DefaultPolicy) -> Authorizer {
        let rules: Vec<Rules> = texts
            .iter()
            .map(|t| Rules::parse(t).unwrap_or_else(|e| panic!("{t}: {e}")))
            .collect();
        let refs: Vec<&Rules> = rules.iter().collect();
        Authorizer::new(&refs, default)
    }

    /// Each row: name, access, allowed?
    fn check(a: &Authorizer, resource: Resource, rows: &[(&str, Access, bool)]) {
        for (name, access, allowed) in rows {
            assert_eq!(
                a.allows(resource, name, *access),
                *allowed,
                "{resource} {name:?} {access} under {a:?}"
            );
        }
    }

    /// Consul's "Prefer Exact Matches" case (`policy_authorizer_test.go`), for every named
    /// family: exact foo write, exact football deny, prefixes foot and fo read.
    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins_in_every_family() {
        for resource in Resource::ALL {
            let text = format!(
                r#"
                {exact} "foo" {{ policy = "write" }}
                {exact} "football" {{ policy = "deny" }}
                {prefix} "foot" {{ policy = "read" }}
                {prefix} "fo" {{ policy = "read" }}
                "#,
                exact = resource.keyword(Match::Exact),
                prefix = resource.keyword(Match::Prefix),
            );
            for default in [Allow, DefaultDeny] {
                let a = authz(&[&text], default);
                check(
                    &a,
                    resource,
                    &[
                        ("fo", Read, true),
                        ("fo", Write, false),
                        ("for", Read, true),
                        ("for", Write, false),
                        ("foo", Read, true),
                        ("foo", Write, true),
                        ("foot", Read, true),
                        ("foot", Write, false),
                        ("foot2", Read, true),
                        ("foot2", Write, false),
                        ("food", Read, true),
                        ("food", Write, false),
                        ("football", Read, false),
                        ("football", Write, false),
                        // Outside every rule: the default decides.
                        ("f", Read, default == Allow),
                        ("bar", Write, default == Allow),
                        ("", Read, default == Allow),
                    ],
                );
            }
        }
    }

    #[test]
    fn an_empty_prefix_matches_everything_and_longer_ones_override_it() {
        let a = authz(
            &[r#"
            service_prefix "" { policy = "read" }
            service_prefix "web" { policy = "write" }
            service_prefix "web-internal" { policy = "deny" }
            service "web-internal-ok" { policy = "read" }
            "#],
            DefaultDeny,
        );
        check(
            &a,
            Resource::Service,
            &[
                ("", Read, true),
                ("", Write, false),
                ("db", Read, true),
                ("db", Write, false),
                ("web", Write, true),
                ("web-public", Write, true),
                ("web-internal", Read, false),
                ("web-internal-x", Read, false),
                ("web-internal-ok", Read, true),
                ("web-internal-ok", Write, false),
                ("we", Write, false),
                ("ünïcode", Read, true),
            ],
        );
        // Other families are untouched by service rules.
        check(&a, Resource::Node, &[("web", Read, false)]);
    }

    #[test]
    fn a_rule_decides_both_ways_over_the_default() {
        let a = authz(
            &["node \"n1\" { policy = \"read\" }\nnode \"n2\" { policy = \"deny\" }"],
            Allow,
        );
        check(
            &a,
            Resource::Node,
            &[
                ("n1", Read, true),
                // A read rule does not fall through to the allow default for a write.
                ("n1", Write, false),
                ("n2", Read, false),
                ("n3", Write, true),
            ],
        );
        let a = authz(&[r#"node "n1" { policy = "write" }"#], DefaultDeny);
        check(
            &a,
            Resource::Node,
            &[("n1", Write, true), ("n3", Read, false)],
        );
    }

    #[test]
    fn list_is_for_keys_and_grants_list_and_read() {
        let a = authz(
            &[r#"
            key_prefix "app/" { policy = "list" }
            key_prefix "ro/" { policy = "read" }
            key_prefix "rw/" { policy = "write" }
            key_prefix "no/" { policy = "deny" }
            "#],
            DefaultDeny,
        );
        check(
            &a,
            Resource::Key,
            &[
                ("app/x", Read, true),
                ("app/x", List, true),
                ("app/x", Write, false),
                ("ro/x", Read, true),
                ("ro/x", List, false),
                ("ro/x", Write, false),
                ("rw/x", List, true),
                ("rw/x", Write, true),
                ("no/x", Read, false),
                ("no/x", List, false),
                ("other", List, false),
            ],
        );
        assert!(Rules::parse(r#"service "s" { policy = "list" }"#).is_err());
        assert!(Rules::parse(r#"key "k" { policy = "list" }"#).is_ok());
    }

    #[test]
    fn merging_policies_deny_beats_write_beats_list_beats_read() {
        // The same name in two policies: the stronger level wins, whatever the order.
        let cases = [
            ("read", "write", Write),
            ("write", "deny", Deny),
            ("read", "list", List),
            ("list", "write", Write),
            ("deny", "read", Deny),
            ("read", "read", Read),
        ];
        for (one, two, merged) in cases {
            for (how, name) in [(Match::Exact, "app/k"), (Match::Prefix, "app/")] {
                let p1 = format!(
                    r#"{} "{name}" {{ policy = "{one}" }}"#,
                    Resource::Key.keyword(how)
                );
                let p2 = format!(
                    r#"{} "{name}" {{ policy = "{two}" }}"#,
                    Resource::Key.keyword(how)
                );
                for order in [[&p1, &p2], [&p2, &p1]] {
                    let a = authz(&[order[0], order[1]], Allow);
                    for wanted in [Read, List, Write] {
                        assert_eq!(
                            a.allows(Resource::Key, "app/k", wanted),
                            merged.grants(wanted),
                            "{one}+{two} {how:?} {wanted}"
                        );
                    }
                }
            }
        }
        // Scalars merge likewise.
        let a = authz(&[r#"operator = "write""#, r#"operator = "deny""#], Allow);
        assert!(!a.allows_scalar(Scalar::Operator, Read));
        let a = authz(&[r#"acl = "read""#, r#"acl = "write""#], DefaultDeny);
        assert!(a.allows_scalar(Scalar::Acl, Write));
        // Different names from different policies all apply.
        let a = authz(
            &[
                r#"service "web" { policy = "write" }"#,
                "service_prefix \"\" { policy = \"read\" }\nservice \"db\" { policy = \"deny\" }",
            ],
            DefaultDeny,
        );
        check(
            &a,
            Resource::Service,
            &[
                ("web", Write, true),
                ("api", Read, true),
                ("api", Write, false),
                ("db", Read, false),
            ],
        );
    }

    #[test]
    fn scalars_decide_else_the_default() {
        let a = authz(
            &["operator = \"read\"\nacl = \"write\"\nkeyring = \"deny\""],
            Allow,
        );
        let rows = [
            (Scalar::Operator, Read, true),
            (Scalar::Operator, Write, false),
            (Scalar::Acl, Read, true),
            (Scalar::Acl, Write, true),
            (Scalar::Keyring, Read, false),
            (Scalar::Mesh, Write, true),
            (Scalar::Peering, Read, true),
        ];
        for (scalar, access, allowed) in rows {
            assert_eq!(
                a.allows_scalar(scalar, access),
                allowed,
                "{scalar} {access}"
            );
        }
        let a = authz(&[r#"mesh = "write""#], DefaultDeny);
        assert!(a.allows_scalar(Scalar::Mesh, Write));
        assert!(!a.allows_scalar(Scalar::Peering, Read));
        assert!(!a.allows_scalar(Scalar::Operator, Read));
    }

    #[test]
    fn no_rules_is_the_default_and_management_is_everything() {
        for default in [Allow, DefaultDeny] {
            let a = Authorizer::new(&[], default);
            assert!(!a.is_management());
            assert_eq!(a.default_policy(), Some(default));
            for resource in Resource::ALL {
                for access in [Read, List, Write] {
                    assert_eq!(a.allows(resource, "x", access), default == Allow);
                }
                // Nobody is "allowed deny".
                assert!(!a.allows(resource, "x", Deny));
            }
            for scalar in Scalar::ALL {
                assert_eq!(a.allows_scalar(scalar, Write), default == Allow);
            }
            assert_eq!(a.key_write_prefix(""), default == Allow);
        }
        let m = Authorizer::management();
        assert!(m.is_management());
        assert_eq!(m.default_policy(), None);
        assert!(m.allows(Resource::Key, "any", Write));
        assert!(m.allows_scalar(Scalar::Acl, Write));
        assert!(m.key_write_prefix(""));
        assert_eq!(format!("{m:?}"), "Authorizer(management)");
        let a = authz(
            &["service \"s\" { policy = \"read\" }\nacl = \"read\""],
            DefaultDeny,
        );
        assert_eq!(format!("{a:?}"), "Authorizer(default deny, 2 rules)");
    }

    #[test]
    fn identities_grant_what_consul_grants() {
        let web = Rules::service_identity("web");
        let n1 = Rules::node_identity("n1");
        let a = Authorizer::new(&[&web, &n1], DefaultDeny);
        check(
            &a,
            Resource::Service,
            &[
                ("web", Write, true),
                ("web-sidecar-proxy", Write, true),
                ("web2", Write, false),
                ("db", Read, true),
            ],
        );
        check(
            &a,
            Resource::Node,
            &[
                ("n1", Write, true),
                ("n2", Read, true),
                ("n2", Write, false),
            ],
        );
        check(&a, Resource::Key, &[("k", Read, false)]);
    }

    /// Consul's "Parent" case (`acl_test.go`): two policies over default deny.
    #[test]
    fn key_write_prefix_consul_parent_case() {
        let a = authz(
            &[
                r#"
                key "foo/" { policy = "write" }
                key "bar/" { policy = "read" }
                key_prefix "foo/" { policy = "write" }
                key_prefix "bar/" { policy = "read" }
                "#,
                r#"
                key "foo/priv/" { policy = "read" }
                key "bar/" { policy = "deny" }
                key "zip/" { policy = "read" }
                key_prefix "foo/priv/" { policy = "read" }
                key_prefix "bar/" { policy = "deny" }
                key_prefix "zip/" { policy = "read" }
                "#,
            ],
            DefaultDeny,
        );
        let rows = [
            ("other", false, false, false),
            ("foo/test", true, true, true),
            ("foo/priv/test", true, false, false),
            ("bar/any", false, false, false),
            ("zip/test", true, false, false),
        ];
        for (key, read, write, write_prefix) in rows {
            assert_eq!(a.allows(Resource::Key, key, Read), read, "read {key}");
            assert_eq!(a.allows(Resource::Key, key, Write), write, "write {key}");
            assert_eq!(a.key_write_prefix(key), write_prefix, "write prefix {key}");
        }
    }

    /// Consul's "ComplexDefaultAllow" key rows (`acl_test.go`).
    #[test]
    fn key_write_prefix_consul_complex_default_allow_case() {
        let a = authz(
            &[r#"
            key "foo/" { policy = "write" }
            key "foo/priv/" { policy = "deny" }
            key "bar/" { policy = "deny" }
            key "zip/" { policy = "read" }
            key "zap/" { policy = "list" }
            key_prefix "foo/" { policy = "write" }
            key_prefix "foo/priv/" { policy = "deny" }
            key_prefix "bar/" { policy = "deny" }
            key_prefix "zip/" { policy = "read" }
            key_prefix "zap/" { policy = "list" }
            "#],
            Allow,
        );
        // key, read, write, write prefix, list
        let rows = [
            ("other", true, true, true, true),
            ("foo/test", true, true, true, true),
            ("foo/priv/test", false, false, false, false),
            ("bar/any", false, false, false, false),
            ("zip/test", true, false, false, false),
            // foo/ itself may be written, but not recursively: foo/priv/ is under it.
            ("foo/", true, true, false, true),
            // Nothing applies to "" but rules under it deny: no recursive delete of all.
            ("", true, true, false, true),
            ("zap/test", true, false, false, true),
        ];
        for (key, read, write, write_prefix, list) in rows {
            assert_eq!(a.allows(Resource::Key, key, Read), read, "read {key:?}");
            assert_eq!(a.allows(Resource::Key, key, Write), write, "write {key:?}");
            assert_eq!(
                a.key_write_prefix(key),
                write_prefix,
                "write prefix {key:?}"
            );
            assert_eq!(a.allows(Resource::Key, key, List), list, "list {key:?}");
        }
    }

    #[test]
    fn key_write_prefix_edges() {
        // An exact rule at the prefix itself that is weaker than write blocks it.
        let a = authz(
            &["key_prefix \"\" { policy = \"write\" }\nkey \"a\" { policy = \"read\" }"],
            DefaultDeny,
        );
        assert!(!a.key_write_prefix("a"));
        assert!(!a.key_write_prefix(""));
        assert!(a.key_write_prefix("ab"));
        assert!(a.key_write_prefix("b"));
        // Only rules under the prefix count, not rules beside it.
        let a = authz(
            &["key_prefix \"app/\" { policy = \"write\" }\nkey_prefix \"apps\" { policy = \"deny\" }"],
            DefaultDeny,
        );
        assert!(a.key_write_prefix("app/"));
        assert!(a.key_write_prefix("app/x/"));
        assert!(!a.key_write_prefix("app"));
        assert!(!a.key_write_prefix("other/"));
        // With no applicable prefix rule, write rules under it defer to the default.
        let a = authz(&[r#"key_prefix "app/x" { policy = "write" }"#], DefaultDeny);
        assert!(!a.key_write_prefix("app/"));
        let a = authz(&[r#"key_prefix "app/x" { policy = "write" }"#], Allow);
        assert!(a.key_write_prefix("app/"));
        // A deny prefix rule above wins over a write one below.
        let a = authz(
            &["key_prefix \"a\" { policy = \"deny\" }\nkey_prefix \"ab\" { policy = \"write\" }"],
            Allow,
        );
        assert!(!a.key_write_prefix("a"));
        assert!(a.key_write_prefix("ab"));
    }

    #[test]
    fn many_rules_and_long_names_stay_correct() {
        let mut rules = Rules::default();
        for i in 0..1000 {
            rules.add(
                Resource::Service,
                Match::Prefix,
                &format!("svc-{i}-"),
                Write,
            );
            rules.add(Resource::Service, Match::Exact, &format!("svc-{i}-x"), Deny);
        }
        let a = Authorizer::new(&[&rules], DefaultDeny);
        assert!(a.allows(Resource::Service, "svc-999-abc", Write));
        assert!(!a.allows(Resource::Service, "svc-999-x", Read));
        assert!(a.allows(Resource::Service, "svc-999-xy", Write));
        assert!(!a.allows(Resource::Service, "svc-1000-a", Read));
        let long = "svc-5-".to_string() + &"z".repeat(100_000);
        assert!(a.allows(Resource::Service, &long, Write));
        // A clone shares the compiled rules.
        let b = a.clone();
        assert!(b.allows(Resource::Service, "svc-1-", Write));
    }
}
