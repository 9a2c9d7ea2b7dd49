//! Unit tests of the catalog state machine: commands fed to `apply`, rows and
//! queries checked, no I/O.

use super::*;
use registry_api::Weights;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A register of `node` with an address; add to it with [`Build`].
fn req(node: &str) -> RegisterRequest {
    let address = format!("10.0.0.{}", node.len());
    let node = node.to_string();
    RegisterRequest {
        node,
        address,
        ..Default::default()
    }
}

/// Short builders, so each test reads as a list of commands.
trait Build {
    fn svc(self, name: &str, id: &str, tags: &[&str]) -> Self;
    /// A check; `sid` empty means node-level.
    fn chk(self, id: &str, sid: &str, status: &str) -> Self;
    fn skip(self) -> Self;
}

impl Build for RegisterRequest {
    fn svc(mut self, name: &str, id: &str, tags: &[&str]) -> Self {
        let (service, id, tags) = (name.into(), id.into(), strings(tags));
        let svc = AgentService {
            service,
            id,
            tags,
            port: 8080,
            ..Default::default()
        };
        self.service = Some(svc);
        self
    }
    fn chk(mut self, id: &str, sid: &str, status: &str) -> Self {
        let (check_id, service_id) = (id.into(), sid.into());
        let status = status.into();
        let c = HealthCheck {
            check_id,
            service_id,
            status,
            ..Default::default()
        };
        self.checks.push(c);
        self
    }
    fn skip(mut self) -> Self {
        self.skip_node_update = true;
        self
    }
}

/// Validate then apply, as the server does; the command must succeed.
fn reg(s: &mut CatalogState, index: u64, mut r: RegisterRequest) -> Vec<RowChange> {
    CatalogState::validate_register(&mut r).unwrap();
    let (result, rows) = s.apply(index, &Command::Register(r));
    result.unwrap();
    rows
}

fn dereq(node: &str, sid: &str, cid: &str) -> DeregisterRequest {
    let (node, service_id, check_id) = (node.into(), sid.into(), cid.into());
    DeregisterRequest {
        node,
        service_id,
        check_id,
        ..Default::default()
    }
}

fn dereg(s: &mut CatalogState, index: u64, r: DeregisterRequest) -> Vec<RowChange> {
    let (result, rows) = s.apply(index, &Command::Deregister(r));
    result.unwrap();
    rows
}

fn index(s: &CatalogState, service: &str) -> u64 {
    s.service_nodes(service, &[]).1
}

/// n1: web1 (tags v1, primary) with a passing check, node check serfHealth passing.
/// n2: web2 (tag v2) with a passing check; db with a warning check.
fn sample() -> CatalogState {
    let mut s = CatalogState::new("dc1");
    let n1 = req("n1").svc("web", "web1", &["v1", "primary"]);
    let n1 = n1.chk("serfHealth", "", PASSING);
    reg(&mut s, 1, n1.chk("web1-alive", "web1", PASSING));
    let web2 = req("n2").svc("web", "web2", &["v2"]);
    reg(&mut s, 2, web2.chk("web2-alive", "web2", PASSING));
    let db = req("n2").svc("db", "db", &[]);
    reg(&mut s, 3, db.chk("db-alive", "db", WARNING));
    s
}

#[test]
fn register_normalizes_and_reads_back() {
    let mut s = CatalogState::new("dc1");
    let mut r = req("n1").svc("web", "", &["b", "a"]);
    r = r.chk("mem", "", PASSING);
    let (name, service_id) = ("alive".into(), "web".into());
    r.check = Some(HealthCheck {
        name,
        service_id,
        ..Default::default()
    });
    assert!(!reg(&mut s, 7, r).is_empty());
    let n = &s.nodes().0[0];
    assert_eq!(n.datacenter, "dc1");
    assert_eq!((n.create_index, n.modify_index), (7, 7));
    assert_eq!(s.services().0["web"], strings(&["a", "b"]));
    let list = s.node_service_list("n1").0.unwrap().services;
    assert_eq!(list[0].id, "web");
    assert_eq!(list[0].tags, strings(&["b", "a"]), "order kept");
    let by_id = s.node_services("n1").0.unwrap().services;
    assert!(by_id.contains_key("web"));
    assert!(s.node_services("nope").0.is_none());
    let checks = s.node_checks("n1").0;
    let ids: Vec<&str> = checks.iter().map(|c| c.check_id.as_str()).collect();
    assert_eq!(ids, ["alive", "mem"]);
    let alive = &checks[0];
    assert_eq!(
        (alive.status.as_str(), alive.node.as_str()),
        (CRITICAL, "n1")
    );
    assert_eq!(alive.service_name, "web");
    assert_eq!(alive.service_tags, strings(&["b", "a"]));
    assert!(checks[1].service_name.is_empty() && checks[1].service_tags.is_empty());
    assert_eq!(s.service_checks("web").0.len(), 1);
    assert_eq!(s.last_index(), 7);
}

#[test]
fn validate_rejects_bad_requests() {
    let long = "x".repeat(MAX_ID_LEN + 1);
    let mut other_node = req("n").chk("c", "", PASSING);
    other_node.checks[0].node = "m".into();
    let mut no_address = req("n");
    no_address.address.clear();
    let cases = [
        (req(""), "Must provide node"),
        (
            no_address.clone(),
            "Must provide address if SkipNodeUpdate is not set",
        ),
        (req("n").svc("", "id", &[]), "Must provide service name"),
        (
            req("n").chk("", "", PASSING),
            "Must provide check ID or name",
        ),
        (
            req("n").chk("c", "", "sick"),
            "Invalid check status: \"sick\"",
        ),
        (other_node, "Check node \"m\" does not match node \"n\""),
        (
            req("a\0b"),
            "Node name \"a\\0b\" contains an invalid character",
        ),
        (
            req("n").svc("web", &long, &[]),
            "Service ID is longer than 512 bytes",
        ),
    ];
    for (mut r, want) in cases {
        assert_eq!(
            CatalogState::validate_register(&mut r),
            Err(want.to_string())
        );
    }
    assert_eq!(
        CatalogState::validate_register(&mut no_address.skip()),
        Ok(())
    );

    let both = dereq("n", "s", "c");
    let want = Err("Cannot specify both ServiceID and CheckID".to_string());
    assert_eq!(CatalogState::validate_deregister(&both), want);
    let want = Err("Must provide node".to_string());
    assert_eq!(CatalogState::validate_deregister(&dereq("", "", "")), want);
    // apply validates again, so an unvalidated command cannot slip through.
    let mut s = sample();
    let before = s.clone();
    let (result, rows) = s.apply(9, &Command::Deregister(both));
    assert!(result.is_err() && rows.is_empty());
    assert_eq!(s, before);
}

#[test]
fn identical_reregister_changes_nothing() {
    let mut s = sample();
    let before = s.clone();
    let mut r = req("n1").svc("web", "web1", &["v1", "primary"]);
    r = r.chk("serfHealth", "", PASSING);
    r = r.chk("web1-alive", "web1", PASSING);
    // The datacenter spelled out normalizes to the same node.
    r.datacenter = "dc1".into();
    assert!(reg(&mut s, 6, r).is_empty());
    assert_eq!(s, before);
    assert_eq!((s.last_index(), index(&s, "web")), (3, 2));
    assert_eq!((s.nodes().1, s.node_checks("n1").1), (2, 3));
}

#[test]
fn service_change_bumps_only_its_own_index() {
    let mut s = sample();
    assert_eq!((index(&s, "web"), index(&s, "db")), (2, 3));
    reg(&mut s, 10, req("n2").svc("db", "db", &["new"]));
    assert_eq!(index(&s, "db"), 10);
    assert_eq!(index(&s, "web"), 2, "web is on n2 too, but did not change");
    assert_eq!((s.services().1, s.nodes().1), (10, 2));
    let db = &s.service_nodes("db", &[]).0[0];
    assert_eq!((db.create_index, db.modify_index), (3, 10));
    // The db check's copy of the tags follows, which bumps the checks table.
    let (checks, idx) = s.service_checks("db");
    assert_eq!(checks[0].service_tags, strings(&["new"]));
    assert_eq!((checks[0].modify_index, idx), (10, 10));
    assert_eq!(s.node_checks("n2").1, 10);
}

#[test]
fn node_level_changes_bump_services_on_that_node() {
    let mut s = sample();
    reg(&mut s, 20, req("n1").skip().chk("serfHealth", "", ""));
    let (_, web) = s.health_service("web", &[], false);
    assert_eq!(web, 20, "web1 depends on n1's node checks");
    assert_eq!(s.service_checks("db").1, 3, "db is not on n1");
    assert_eq!(s.checks_in_state("any").unwrap().1, 20);
    assert_eq!(s.nodes().1, 2);
    // A node field change bumps the services on it (they embed node fields).
    let mut r = req("n2");
    r.address = "192.168.1.2".into();
    reg(&mut s, 21, r);
    assert_eq!(
        (index(&s, "db"), index(&s, "web"), s.nodes().1),
        (21, 21, 21)
    );
    let db = &s.service_nodes("db", &[]).0[0];
    assert_eq!((db.address.as_str(), db.modify_index), ("192.168.1.2", 3));
    assert_eq!(s.nodes().0[1].create_index, 2);
}

#[test]
fn rejected_register_changes_nothing() {
    let mut s = sample();
    let before = (s.clone(), s.rows());
    // Would create node n9 and a service, then fails on the orphan check.
    let mut r = req("n9")
        .svc("api", "api", &[])
        .chk("x", "missing", PASSING);
    CatalogState::validate_register(&mut r).unwrap();
    let (result, rows) = s.apply(30, &Command::Register(r));
    assert_eq!(result, Err("Missing service registration".to_string()));
    assert!(rows.is_empty());
    assert_eq!((s.clone(), s.rows()), before);
    assert!(s.node_services("n9").0.is_none());
    // A check may reference a service registered earlier on the same node.
    reg(&mut s, 31, req("n2").chk("db-2", "db", PASSING));
    assert_eq!(s.service_checks("db").0.len(), 2);
}

#[test]
fn deregister_each_shape() {
    let mut s = sample();
    dereg(&mut s, 40, dereq("n2", "db", ""));
    assert!(!s.services().0.contains_key("db"));
    assert!(s.service_checks("db").0.is_empty());
    assert_eq!(s.node_checks("n2").0.len(), 1);
    assert_eq!(index(&s, "db"), 40, "a deleted service keeps its index");
    assert_eq!(index(&s, "web"), 2);
    dereg(&mut s, 41, dereq("n1", "", "serfHealth"));
    assert_eq!((s.node_checks("n1").0.len(), index(&s, "web")), (1, 41));
    dereg(&mut s, 42, dereq("n2", "", ""));
    assert_eq!(s.nodes().0.len(), 1);
    assert_eq!(s.service_nodes("web", &[]).0.len(), 1);
    assert!(s.node_checks("n2").0.is_empty());
    assert_eq!(
        (s.nodes().1, s.services().1, s.node_checks("n1").1),
        (42, 42, 42)
    );
    // Missing targets: Ok, nothing written, nothing bumped.
    let before = s.clone();
    assert!(dereg(&mut s, 43, dereq("n2", "", "")).is_empty());
    assert!(dereg(&mut s, 44, dereq("n1", "nope", "")).is_empty());
    assert!(dereg(&mut s, 45, dereq("n1", "", "nope")).is_empty());
    assert_eq!(s, before);
}

#[test]
fn passing_filter_counts_node_level_checks() {
    let mut s = sample();
    let all = s.health_service("web", &[], true).0;
    assert_eq!((all.len(), all[0].checks.len()), (2, 2));
    assert_eq!(all[0].node.datacenter, "dc1");
    let db = s.health_service("db", &[], true).0;
    assert!(db.is_empty(), "warning is not passing");
    assert_eq!(s.health_service("db", &[], false).0.len(), 1);
    reg(&mut s, 50, req("n1").skip().chk("serfHealth", "", CRITICAL));
    let passing = s.health_service("web", &[], true).0;
    assert_eq!(passing.len(), 1);
    assert_eq!(passing[0].service.id, "web2");
    assert_eq!(s.health_service("web", &[], false).0.len(), 2);
}

#[test]
fn tag_filter_requires_every_tag() {
    let s = sample();
    let ids = |tags: &[&str]| -> Vec<String> {
        let list = s.service_nodes("web", &strings(tags)).0;
        list.into_iter().map(|c| c.service_id).collect()
    };
    assert_eq!(ids(&[]), strings(&["web1", "web2"]));
    assert_eq!(ids(&["v1"]), strings(&["web1"]));
    assert_eq!(ids(&["PRIMARY", "v1"]), strings(&["web1"]), "as Consul");
    assert!(ids(&["v1", "v2"]).is_empty());
    let v2 = s.health_service("web", &strings(&["v2"]), false).0;
    assert_eq!(v2[0].service.id, "web2");
    let flat = &s.service_nodes("web", &strings(&["v1"])).0[0];
    assert_eq!(
        (flat.node.as_str(), flat.datacenter.as_str()),
        ("n1", "dc1")
    );
    assert_eq!(flat.service_port, 8080);
}

#[test]
fn checks_in_state_filters_by_status() {
    let s = sample();
    let ids = |state: &str| -> Vec<String> {
        let checks = s.checks_in_state(state).unwrap().0;
        checks.into_iter().map(|c| c.check_id).collect()
    };
    assert_eq!(ids("any").len(), 4);
    assert_eq!(ids(WARNING), strings(&["db-alive"]));
    let passing = strings(&["serfHealth", "web1-alive", "web2-alive"]);
    assert_eq!(ids(PASSING), passing);
    assert!(ids(CRITICAL).is_empty());
    let bad = s.checks_in_state("bogus");
    assert_eq!(bad, Err("Bad check state".to_string()));
}

#[test]
fn rows_round_trip_and_match_the_row_changes() {
    let mut s = sample();
    let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = s.rows().into_iter().collect();
    let mut store = |rows: Vec<RowChange>| {
        for row in rows {
            match row.value {
                Some(v) => stored.insert(row.key, v),
                None => stored.remove(&row.key),
            };
        }
    };
    store(reg(&mut s, 4, req("n1").svc("web", "web1", &["v3"])));
    store(dereg(&mut s, 5, dereq("n2", "", "")));
    let api = req("n3").svc("api", "api", &[]);
    store(reg(&mut s, 6, api.chk("a", "api", PASSING)));
    let image: Vec<_> = stored.into_iter().collect();
    assert_eq!(image, s.rows(), "RowChanges rebuild the image");
    let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
    assert_eq!(back, s);
    assert_eq!((index(&back, "db"), back.last_index()), (5, 6));
    let web = back.health_service("web", &[], true);
    assert_eq!(web, s.health_service("web", &[], true));
    assert_eq!(back.services(), s.services());
    // The metrics' count of names: a name whose last instance went (db) is not one.
    assert_eq!((s.sizes().1, back.sizes().1), (s.services().0.len(), 2));
}

#[test]
fn rows_in_the_earlier_full_form_load_as_the_shorter_rows_do() {
    // The rows a server wrote before `row_forms.rs`: every field, and a check's
    // service name and tags (taken from a snapshot of that build).
    let full: [(&[u8], &[u8]); 7] = [
        (
            b"c/b-node-7\0b-svc-7:alive",
            br#"{"Node":"b-node-7","CheckID":"b-svc-7:alive","Name":"alive","Status":"passing","Notes":"","Output":"","ServiceID":"b-svc-7","ServiceName":"b-svc-7","ServiceTags":["bench","v1"],"Type":"","CreateIndex":4,"ModifyIndex":4}"#,
        ),
        (b"i/checks", b"4"),
        (b"i/nodes", b"4"),
        (b"i/service/b-svc-7", b"4"),
        (b"i/services", b"4"),
        (
            b"n/b-node-7",
            br#"{"ID":"","Node":"b-node-7","Address":"10.0.0.7","Datacenter":"dc1","TaggedAddresses":{},"Meta":{},"CreateIndex":4,"ModifyIndex":4}"#,
        ),
        (
            b"s/b-node-7\0b-svc-7",
            br#"{"Kind":"","ID":"b-svc-7","Service":"b-svc-7","Tags":["bench","v1"],"Address":"","Meta":{},"Port":8080,"TaggedAddresses":{},"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"CreateIndex":4,"ModifyIndex":4}"#,
        ),
    ];
    let full: Vec<_> = full.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    let old = CatalogState::from_rows("dc1", full.clone()).unwrap();
    let mut fresh = CatalogState::new("dc1");
    let r = req("b-node-7").svc("b-svc-7", "b-svc-7", &["bench", "v1"]);
    let mut r = r.chk("b-svc-7:alive", "b-svc-7", PASSING);
    (r.address, r.checks[0].name) = ("10.0.0.7".into(), "alive".into());
    reg(&mut fresh, 4, r);
    assert_eq!(old, fresh, "the same state from either form");
    let health = |s: &CatalogState| s.health_service("b-svc-7", &[], false);
    assert_eq!(health(&old), health(&fresh));
    assert_eq!(health(&old).0[0].checks[0].service_tags, ["bench", "v1"]);
    // The shorter form is what is written now, and it is shorter.
    let size = |rows: &[(Vec<u8>, Vec<u8>)]| rows.iter().map(|(_, v)| v.len()).sum::<usize>();
    assert!(
        size(&old.rows()) < size(&full) * 6 / 10,
        "{}",
        size(&old.rows())
    );
}

#[test]
fn serf_passing_nodes_follow_every_kind_of_write() {
    let mut s = sample();
    let serf = |s: &CatalogState| s.serf_passing_nodes();
    assert_eq!(serf(&s), ["n1"]);
    reg(&mut s, 4, req("n2").skip().chk("serfHealth", "", PASSING));
    assert_eq!(serf(&s), ["n1", "n2"]);
    assert_eq!(s.check_status("n2", "serfHealth"), Some(PASSING));
    reg(&mut s, 5, req("n1").skip().chk("serfHealth", "", CRITICAL));
    assert_eq!(serf(&s), ["n2"]);
    // Passing again, then its node goes: the check goes with it.
    reg(&mut s, 6, req("n1").skip().chk("serfHealth", "", PASSING));
    dereg(&mut s, 7, dereq("n1", "", ""));
    assert_eq!(serf(&s), ["n2"]);
    assert!(!s.has_node("n1") && s.has_node("n2"));
    dereg(&mut s, 8, dereq("n2", "", "serfHealth"));
    assert!(serf(&s).is_empty());
    assert_eq!(s.check_status("n2", "serfHealth"), None);
    // A check that is not serfHealth never counts, whatever its status.
    reg(&mut s, 9, req("n2").skip().chk("other", "", PASSING));
    assert!(serf(&s).is_empty());
    // Rebuilt from rows (a restart or a snapshot), the set is the same.
    reg(&mut s, 10, req("n3").chk("serfHealth", "", PASSING));
    let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
    assert_eq!((serf(&back), &back), (serf(&s), &s));
}

#[test]
fn from_rows_rejects_undecodable_rows() {
    let good = sample().rows();
    let bad: [(&[u8], &[u8]); 7] = [
        (b"x/n1", b"{}"),
        (b"n/n1", b"not json"),
        (b"n/n1", br#"{"Node":"other"}"#),
        (b"i/nodes", b"twelve"),
        (b"i/whatever", b"1"),
        (b"s/n1", b"{}"),
        (b"s/ghost\0web", br#"{"ID":"web","Service":"web"}"#),
    ];
    for (key, value) in bad {
        let mut rows = good.clone();
        rows.push((key.to_vec(), value.to_vec()));
        let loaded = CatalogState::from_rows("dc1", rows);
        assert!(loaded.is_err(), "accepted {key:?}");
    }
    assert!(CatalogState::from_rows("dc1", good).is_ok());
}

#[test]
fn replicas_fed_the_same_log_agree() {
    let log = [
        Command::Register(req("b").svc("web", "w", &["x"]).chk("c1", "w", "")),
        Command::Register(req("a").svc("web", "w", &["y"])),
        Command::Deregister(dereq("b", "", "c1")),
        Command::Register(req("a").svc("api", "w", &["z"])),
        Command::Register(req("a").chk("c2", "w", PASSING)),
    ];
    let mut replicas = [CatalogState::new("dc1"), CatalogState::new("dc1")];
    for replica in &mut replicas {
        for (i, cmd) in log.iter().enumerate() {
            // Through JSON, as the Raft log stores it.
            let json = serde_json::to_vec(cmd).unwrap();
            let cmd: Command = serde_json::from_slice(&json).unwrap();
            assert_eq!(replica.apply(i as u64 + 1, &cmd).0, Ok(()));
        }
    }
    assert_eq!(replicas[0].rows(), replicas[1].rows());
    // Instance "w" on node a was renamed web -> api at 4: web lost an
    // instance, so its index moved too; the later check names the new service.
    let r = &replicas[0];
    assert_eq!((index(r, "web"), index(r, "api")), (4, 5));
    assert_eq!(r.service_checks("api").0[0].service_name, "api");
    assert_eq!(r.service_nodes("web", &[]).0.len(), 1);
}

/// The Raft log carries a register without its defaults and without its
/// checks' service name and tags (`Command::log_form`): applied from there, it
/// writes what the request itself would have, on a replica of any build.
#[test]
fn a_register_read_from_the_log_applies_as_the_request_did() {
    // Checks that name their instance's service and tags wrongly: applying
    // derives both from the instance, with or without them.
    let misnamed = |mut r: RegisterRequest| {
        for c in &mut r.checks {
            c.service_name = "old".into();
            c.service_tags = strings(&["old"]);
        }
        CatalogState::validate_register(&mut r).unwrap();
        r
    };
    let new = misnamed(
        req("n3")
            .svc("web", "web3", &["v3"])
            .chk("web3-alive", "web3", PASSING),
    );
    let more = misnamed(req("n3").skip().chk("web3-ttl", "web3", WARNING));
    let (mut direct, mut logged) = (sample(), sample());
    for (i, cmd) in [Command::Register(new), Command::RegisterIfNodeExists(more)]
        .iter()
        .enumerate()
    {
        let json = serde_json::to_vec(&cmd.log_form()).unwrap();
        let back: Command = serde_json::from_slice(&json).unwrap();
        assert_ne!(&back, cmd, "the check's derived fields are left out");
        let at = 10 + i as u64;
        let (a, b) = (direct.apply(at, cmd), logged.apply(at, &back));
        assert_eq!(a.0, Ok(()));
        assert_eq!(a, b, "the same outcome and rows");
    }
    assert_eq!(direct.rows(), logged.rows());
    for name in ["web", "old"] {
        assert_eq!(index(&direct, name), index(&logged, name));
    }
    let checks = logged.service_checks("web").0;
    let on_n3: Vec<_> = checks.iter().filter(|c| c.node == "n3").collect();
    assert_eq!(on_n3.len(), 2);
    for c in on_n3 {
        assert_eq!(
            (c.service_name.as_str(), &c.service_tags),
            ("web", &strings(&["v3"]))
        );
    }
}

#[test]
fn command_json_is_tagged_by_op() {
    let cmd = Command::Deregister(dereq("n", "", ""));
    let json = serde_json::to_value(&cmd).unwrap();
    assert_eq!(json["Op"], "Deregister");
    assert_eq!(json["Node"], "n");
    assert_eq!(serde_json::from_value::<Command>(json).unwrap(), cmd);
}

#[test]
fn skip_node_update_keeps_an_existing_node() {
    let mut s = sample();
    let mut r = req("n1").skip();
    r.address = "1.1.1.1".into();
    assert!(reg(&mut s, 60, r).is_empty());
    assert_eq!(s.nodes().0[0].address, "10.0.0.2");
    // A node that does not exist yet is still created, as in Consul.
    let mut r = req("n7").skip();
    r.address.clear();
    reg(&mut s, 61, r);
    assert_eq!(s.nodes().0.len(), 3);
}

#[test]
fn register_if_node_exists_never_recreates_a_deregistered_node() {
    let mut s = sample();
    let critical = |node: &str| {
        let mut r = req(node).skip().chk(SERF_HEALTH_ID, "", CRITICAL);
        r.address.clear();
        Command::RegisterIfNodeExists(r)
    };
    // On an existing node it is a register.
    let (result, rows) = s.apply(70, &critical("n1"));
    result.unwrap();
    assert!(!rows.is_empty());
    assert_eq!(s.check_status("n1", SERF_HEALTH_ID), Some(CRITICAL));
    // Deregistered before the entry applies: nothing comes back.
    dereg(&mut s, 71, dereq("n1", "", ""));
    let (result, rows) = s.apply(72, &critical("n1"));
    result.unwrap();
    assert!(rows.is_empty());
    assert!(!s.has_node("n1"));
    // Still validated when the node is missing.
    let bad = Command::RegisterIfNodeExists(req("n1").chk("c", "", "bogus"));
    assert!(s.apply(73, &bad).0.is_err());
    // It round-trips through the log's encoding.
    let cmd = critical("n2");
    let bytes = serde_json::to_vec(&cmd).unwrap();
    assert!(bytes.starts_with(br#"{"Op":"RegisterIfNodeExists""#));
    assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), cmd);
}

/// `Kind`, `TaggedAddresses`, `Weights`, `Proxy` and `Connect` are stored, survive the
/// row image, and a re-register with the same values writes nothing; a row written
/// before these fields existed loads with their defaults.
#[test]
fn service_extras_are_stored_and_old_rows_load_with_defaults() {
    let mut s = sample();
    let mut r = req("n3");
    let mut svc = AgentService {
        service: "gw".into(),
        id: "gw1".into(),
        kind: "mesh-gateway".into(),
        weights: Weights {
            passing: 10,
            warning: 2,
        },
        proxy: Some(serde_json::json!({"Config": {"a": 1}})),
        connect: Some(serde_json::json!({"Native": true})),
        ..Default::default()
    };
    svc.tagged_addresses.insert(
        "wan".into(),
        registry_api::ServiceAddress {
            address: "198.51.100.1".into(),
            port: 443,
        },
    );
    r.service = Some(svc.clone());
    reg(&mut s, 4, r.clone());
    let (list, _) = s.service_nodes("gw", &[]);
    assert_eq!(list[0].service_kind, "mesh-gateway");
    assert_eq!(list[0].service_tagged_addresses, svc.tagged_addresses);
    assert_eq!(list[0].service_weights, svc.weights);
    assert_eq!(list[0].service_proxy, svc.proxy);
    assert_eq!(list[0].service_connect, svc.connect);
    assert!(reg(&mut s, 5, r).is_empty(), "an equal re-register writes");
    let back = CatalogState::from_rows("dc1", s.rows()).unwrap();
    assert_eq!(back, s);

    let mut rows = sample().rows();
    rows.retain(|(k, _)| !k.starts_with(b"s/n1\0"));
    rows.push((
        b"s/n1\0web1".to_vec(),
        br#"{"ID":"web1","Service":"web","Tags":["v1"],"Address":"","Meta":{},"Port":80,
            "EnableTagOverride":false,"CreateIndex":1,"ModifyIndex":1}"#
            .to_vec(),
    ));
    let old = CatalogState::from_rows("dc1", rows).unwrap();
    let (list, _) = old.service_nodes("web", &["v1".to_string()]);
    assert_eq!(list[0].service_weights, Weights::default());
    assert!(list[0].service_tagged_addresses.is_empty());
    assert_eq!(
        (list[0].service_kind.as_str(), &list[0].service_proxy),
        ("", &None)
    );
    // Nothing set: no per-instance allocation for the extras.
    assert!(old.services.iter().all(|(_, _, s)| s.extra.is_none()));
}

#[test]
fn indexes_are_never_zero_and_fall_back_to_the_services_table() {
    let empty = CatalogState::new("dc1");
    assert_eq!((index(&empty, "x"), empty.nodes().1), (1, 1));
    assert_eq!(empty.last_index(), 0);
    let never = sample().health_service("never", &[], false);
    assert_eq!(never, (Vec::new(), 3));
}
