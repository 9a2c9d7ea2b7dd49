//! The DNS interface of a server (issue 13): every Consul name form answered
//! from the same catalog as HTTP, health filtering, NXDOMAIN vs NOERROR,
//! another datacenter through the gateways, truncation over UDP with the
//! whole answer over TCP at 1,000 instances, recursors, and malformed input
//! answered with an error code while the server goes on. Queries go through
//! hickory's client (a real resolver client) or, for what no client would
//! send, raw datagrams.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use registry_api::{AgentService, HealthCheck, RegisterRequest, RegistryClient};
use registry_dns::DnsConfig;
use registry_server::{ServerConfig, ServerHandle};
use registry_testkit::cluster::{fast_tuning, wait_until};
use registry_testkit::dns::{query_bytes, raw_tcp, raw_udp, tcp, udp};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// A single server of `dc` (its own leader, no embedded agent: the catalog
/// holds only what the test writes) with DNS on a free port, `alt.test` as
/// its alt domain and `tweak` applied.
async fn server(dc: &str, tweak: impl FnOnce(&mut DnsConfig)) -> ServerHandle {
    let mut cfg = ServerConfig::new(format!("{dc}-s1"));
    cfg.datacenter = dc.into();
    cfg.dev = true;
    cfg.agent = false;
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.rpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.tuning = fast_tuning();
    let mut dns = DnsConfig::new("127.0.0.1:0".parse().unwrap());
    dns.alt_domain = Some("alt.test".into());
    tweak(&mut dns);
    cfg.dns = Some(dns);
    let h = registry_server::start(cfg).await.unwrap();
    let c = RegistryClient::new(h.url());
    wait_until(Duration::from_secs(10), "the server to lead", || async {
        c.status_leader().await.is_ok_and(|l| !l.is_empty())
    })
    .await;
    h
}

fn dns(h: &ServerHandle) -> SocketAddr {
    h.dns_addr().expect("DNS runs")
}

/// An instance `id` of `service` on `node` at `address`, with one service
/// check in `status`.
fn instance(
    node: &str,
    address: &str,
    service: &str,
    id: &str,
    tags: &[&str],
    service_address: &str,
    status: &str,
) -> RegisterRequest {
    RegisterRequest {
        node: node.into(),
        address: address.into(),
        service: Some(AgentService {
            id: id.into(),
            service: service.into(),
            port: 8080,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: service_address.into(),
            ..Default::default()
        }),
        checks: vec![HealthCheck {
            check_id: format!("{id}-check"),
            name: format!("{id} check"),
            status: status.into(),
            service_id: id.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn register(h: &ServerHandle, req: &RegisterRequest) {
    RegistryClient::new(h.url())
        .catalog_register(req, None)
        .await
        .unwrap();
}

/// The addresses in A/AAAA answers.
fn addresses(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// (port, target) of SRV answers.
fn srvs(m: &Message) -> BTreeSet<(u16, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect()
}

fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_form_is_answered_from_the_catalog() {
    let h = server("dc1", |_| {}).await;
    let d = dns(&h);
    register(
        &h,
        &instance("n1", "10.0.0.1", "web", "web-1", &["v1"], "", "passing"),
    )
    .await;
    register(
        &h,
        &instance(
            "n2",
            "10.0.0.2",
            "web",
            "web-2",
            &["v2"],
            "192.0.2.2",
            "passing",
        ),
    )
    .await;
    register(
        &h,
        &instance("n3", "2001:db8::3", "db", "db-1", &[], "", "passing"),
    )
    .await;

    // <service>.service[.<dc>].<domain>, in either domain, A.
    for name in [
        "web.service.consul",
        "web.service.dc1.consul",
        "web.service.alt.test",
        "WEB.Service.Consul",
    ] {
        let m = udp(d, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert_eq!(addresses(&m), set(&["10.0.0.1", "192.0.2.2"]), "{name}");
    }
    // <tag>.<service>.service.<domain>.
    let m = udp(d, "v1.web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    // A tag nobody carries: the name does not exist.
    let m = udp(d, "v9.web.service.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa(&m));
    // SRV, with the target's address in the additional section: the node's
    // name for an instance on its node's address, `.addr.` for its own.
    let m = udp(d, "web.service.consul", RecordType::SRV).await;
    assert_eq!(
        srvs(&m),
        [
            (8080, "n1.node.dc1.consul.".to_string()),
            (8080, "c0000202.addr.dc1.consul.".to_string())
        ]
        .into_iter()
        .collect()
    );
    let extra: BTreeSet<(String, String)> = m
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_string(), a.0.to_string())),
            _ => None,
        })
        .collect();
    assert!(
        extra.contains(&("n1.node.dc1.consul.".into(), "10.0.0.1".into())),
        "{extra:?}"
    );
    assert!(
        extra.contains(&("c0000202.addr.dc1.consul.".into(), "192.0.2.2".into())),
        "{extra:?}"
    );
    // RFC 2782: _<service>._<tag> and _<service>._tcp (no tag).
    let m = udp(d, "_web._v2.service.consul", RecordType::SRV).await;
    assert_eq!(srvs(&m).len(), 1);
    let m = udp(d, "_web._tcp.service.dc1.consul", RecordType::SRV).await;
    assert_eq!(srvs(&m).len(), 2);
    // Nodes, A and AAAA; the known node without records of the asked type.
    let m = udp(d, "n1.node.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    let m = udp(d, "n3.node.dc1.consul", RecordType::AAAA).await;
    assert_eq!(addresses(&m), set(&["2001:db8::3"]));
    let m = udp(d, "db.service.consul", RecordType::AAAA).await;
    assert_eq!(addresses(&m), set(&["2001:db8::3"]));
    for (name, rtype) in [
        ("n1.node.consul", RecordType::AAAA),
        ("web.service.consul", RecordType::TXT),
        ("db.service.consul", RecordType::A),
    ] {
        let m = udp(d, name, rtype).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {rtype}"
        );
        assert!(m.answers.is_empty(), "{name} {rtype}");
        assert!(has_soa(&m), "{name} {rtype}: NODATA carries the SOA");
    }
    // Unknown names: NXDOMAIN with the SOA.
    for name in [
        "nosuch.service.consul",
        "nosuch.node.consul",
        "web.consul",
        "web.service.dc1.dc2.consul",
    ] {
        let m = udp(d, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(has_soa(&m), "{name}");
    }
    // .addr. and PTR for a node's address.
    let m = udp(d, "0a000002.addr.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.2"]));
    let m = udp(d, "2.0.0.10.in-addr.arpa", RecordType::PTR).await;
    let ptrs: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ptrs, ["n2.node.dc1.consul."]);
    // The apex's SOA.
    let m = udp(d, "consul", RecordType::SOA).await;
    assert!(m.answers.iter().any(|r| matches!(r.data, RData::SOA(_))));
    // Outside the domain without recursors.
    let m = udp(d, "example.com", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // TCP answers the same.
    let m = tcp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1", "192.0.2.2"]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_instances_leave_the_answers_and_only_passing_drops_warning_ones() {
    let h = server("dc1", |_| {}).await;
    let strict = server("dc1", |c| c.only_passing = true).await;
    for s in [&h, &strict] {
        register(
            s,
            &instance("n1", "10.0.0.1", "api", "api-1", &[], "", "passing"),
        )
        .await;
        register(
            s,
            &instance("n2", "10.0.0.2", "api", "api-2", &[], "", "warning"),
        )
        .await;
        register(
            s,
            &instance("n3", "10.0.0.3", "api", "api-3", &[], "", "critical"),
        )
        .await;
    }
    let m = udp(dns(&h), "api.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1", "10.0.0.2"]));
    let m = udp(dns(&strict), "api.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    // An instance going critical leaves the answers at once.
    register(
        &h,
        &instance("n1", "10.0.0.1", "api", "api-1", &[], "", "critical"),
    )
    .await;
    let m = udp(dns(&h), "api.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.2"]));
    // None left to answer with: the name does not exist (as Consul answers).
    register(
        &h,
        &instance("n2", "10.0.0.2", "api", "api-2", &[], "", "critical"),
    )
    .await;
    let m = udp(dns(&h), "api.service.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa(&m));
    h.stop().await;
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_in_a_random_order() {
    let h = server("dc1", |_| {}).await;
    for i in 1..=8 {
        register(
            &h,
            &instance(
                &format!("n{i}"),
                &format!("10.0.1.{i}"),
                "web",
                &format!("web-{i}"),
                &[],
                "",
                "passing",
            ),
        )
        .await;
    }
    let mut orders = BTreeSet::new();
    for _ in 0..20 {
        let m = udp(dns(&h), "web.service.consul", RecordType::A).await;
        assert_eq!(m.answers.len(), 8);
        orders.insert(format!(
            "{:?}",
            m.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>()
        ));
    }
    // 20 draws of 8! orders: all equal would mean no shuffle.
    assert!(orders.len() > 1, "every answer came in the same order");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_datacenter_is_asked_through_the_gateways() {
    let dc1 = server("dc1", |_| {}).await;
    let dc2 = server("dc2", |_| {}).await;
    let gw_config = |dc: &str, servers: Vec<String>, join: Vec<String>| {
        let mut cfg = wan_gateway::GatewayConfig::new(dc);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.servers = servers;
        cfg.retry_join_wan = join;
        cfg.gossip_interval = Duration::from_millis(100);
        cfg.dead_after = Duration::from_secs(1);
        cfg
    };
    let gw1 = wan_gateway::start(gw_config("dc1", vec![dc1.url()], vec![]))
        .await
        .unwrap();
    let gw2 = wan_gateway::start(gw_config(
        "dc2",
        vec![dc2.url()],
        vec![gw1.addr.to_string()],
    ))
    .await
    .unwrap();
    dc1.set_wan_gateways(&[gw1.url()]);
    dc2.set_wan_gateways(&[gw2.url()]);
    register(
        &dc2,
        &instance(
            "far",
            "10.2.0.1",
            "demo",
            "demo-1",
            &["blue"],
            "",
            "passing",
        ),
    )
    .await;
    let d = dns(&dc1);
    let m = wait_until(
        Duration::from_secs(10),
        "dc2's instance through the gateways",
        || async {
            let m = udp(d, "demo.service.dc2.consul", RecordType::SRV).await;
            (m.metadata.response_code == ResponseCode::NoError).then_some(m)
        },
    )
    .await;
    assert_eq!(
        srvs(&m),
        [(8080, "far.node.dc2.consul.".to_string())]
            .into_iter()
            .collect()
    );
    assert!(m
        .additionals
        .iter()
        .any(|r| matches!(&r.data, RData::A(a) if a.0.to_string() == "10.2.0.1")));
    let m = udp(d, "blue.demo.service.dc2.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.2.0.1"]));
    let m = udp(d, "far.node.dc2.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.2.0.1"]));
    // Not in dc1 itself, and no such datacenter at all.
    let m = udp(d, "demo.service.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(d, "demo.service.dc9.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    dc1.stop().await;
    dc2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_are_cut_over_udp_and_whole_over_tcp() {
    let h = server("dc1", |_| {}).await;
    let c = RegistryClient::new(h.url());
    let regs: Vec<RegisterRequest> = (0..1000)
        .map(|i| {
            instance(
                &format!("node-{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                "big",
                &format!("big-{i}"),
                &[],
                "",
                "passing",
            )
        })
        .collect();
    // Written 50 at a time: one Raft entry each, many per fsync.
    for chunk in regs.chunks(50) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|r| {
                let (c, r) = (c.clone(), r.clone());
                tokio::spawn(async move { c.catalog_register(&r, None).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
    }
    let d = dns(&h);
    // Plain UDP: at most 512 bytes, whole records, TC set.
    let reply = raw_udp(d, &query_bytes("big.service.consul", RecordType::A, None))
        .await
        .unwrap();
    assert!(reply.len() <= 512, "{} bytes", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.len() >= 20, "{} answers", m.answers.len());
    // EDNS0 with 4096 bytes: more, still cut, still whole.
    let reply = raw_udp(
        d,
        &query_bytes("big.service.consul", RecordType::A, Some(4096)),
    )
    .await
    .unwrap();
    assert!(reply.len() <= 4096);
    let m4k = Message::from_vec(&reply).unwrap();
    assert!(m4k.metadata.truncation);
    assert!(m4k.answers.len() > 3 * m.answers.len());
    // SRV over UDP keeps each answer's address with it.
    let reply = raw_udp(
        d,
        &query_bytes("big.service.consul", RecordType::SRV, Some(1232)),
    )
    .await
    .unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.metadata.truncation && reply.len() <= 1232);
    assert_eq!(
        m.answers.len(),
        m.additionals
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .count()
    );
    // The same queries over TCP: every instance.
    let m = tcp(d, "big.service.consul", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(addresses(&m).len(), 1000);
    // Every SRV answer too; their targets' addresses as many as fit in the
    // rest of a TCP message (SRV targets are never compressed, RFC 2782).
    let m = tcp(d, "big.service.consul", RecordType::SRV).await;
    assert!(!m.metadata.truncation);
    assert_eq!(srvs(&m).len(), 1000);
    let extra = m
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(_)))
        .count();
    assert!(extra > 100, "{extra} additional addresses");
    h.stop().await;
}

/// A tiny authority for `example.test.` on hickory-server's own `Server`:
/// every name in it has the A record 203.0.113.7, anything else NXDOMAIN.
mod upstream {
    use hickory_proto::op::{Header, Metadata, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{LowerName, Name, RData, Record};
    use hickory_server::net::runtime::Time;
    use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
    use hickory_server::zone_handler::MessageResponseBuilder;
    use std::str::FromStr;

    pub struct Authority;

    #[async_trait::async_trait]
    impl RequestHandler for Authority {
        async fn handle_request<R: ResponseHandler, T: Time>(
            &self,
            request: &Request,
            mut response: R,
        ) -> ResponseInfo {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.authoritative = true;
            let zone = LowerName::from(Name::from_str("example.test.").unwrap());
            let mut answers = Vec::new();
            if let Some(q) = request.queries.queries().first() {
                if zone.zone_of(q.name()) {
                    answers.push(Record::from_rdata(
                        q.original().name().clone(),
                        60,
                        RData::A(A::new(203, 0, 113, 7)),
                    ));
                } else {
                    meta.response_code = ResponseCode::NXDomain;
                }
            }
            let builder = MessageResponseBuilder::from_message_request(request);
            let msg = builder.build(meta, answers.iter(), [], [], []);
            response.send_response(msg).await.unwrap_or_else(|_| {
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: Default::default(),
                })
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_domain_go_to_the_recursors() {
    // One port for UDP and TCP: the kernel's free UDP port may be taken for
    // TCP by another test's connection, so a few are tried.
    let mut pair = None;
    for _ in 0..50 {
        let udp_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = udp_sock.local_addr().unwrap();
        if let Ok(tcp_sock) = tokio::net::TcpListener::bind(up).await {
            pair = Some((udp_sock, up, tcp_sock));
            break;
        }
    }
    let (udp_sock, up, tcp_sock) = pair.expect("a port free for both UDP and TCP");
    let mut authority = hickory_server::Server::new(upstream::Authority);
    authority.register_socket(udp_sock);
    authority.register_listener(tcp_sock, Duration::from_secs(5), 64);
    // The first recursor answers nothing: the next one is asked.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let h = server("dc1", |c| {
        c.recursors = vec![silent_addr.to_string(), up.to_string()];
    })
    .await;
    let d = dns(&h);
    let m = udp(d, "www.example.test", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_available);
    assert_eq!(addresses(&m), set(&["203.0.113.7"]));
    let m = tcp(d, "api.example.test", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["203.0.113.7"]));
    let m = udp(d, "www.elsewhere.test", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Our own domain never leaves the server.
    let m = udp(d, "nosuch.service.consul", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    h.stop().await;
    let _ = authority.shutdown_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_error_code_and_the_server_goes_on() {
    let h = server("dc1", |_| {}).await;
    register(
        &h,
        &instance("n1", "10.0.0.1", "web", "web-1", &[], "", "passing"),
    )
    .await;
    let d = dns(&h);
    let rcode = |reply: Option<Vec<u8>>| -> ResponseCode {
        let reply = reply.expect("an answer");
        assert_eq!(&reply[..2], &4242u16.to_be_bytes(), "the query's id");
        Message::from_vec(&reply).unwrap().metadata.response_code
    };
    // Shorter than a header, and a response: nothing to answer.
    assert_eq!(raw_udp(d, &[1, 2, 3]).await, None);
    let mut response = query_bytes("web.service.consul", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(raw_udp(d, &response).await, None);
    // A header that announces a question that is not there.
    let good = query_bytes("web.service.consul", RecordType::A, None);
    assert_eq!(rcode(raw_udp(d, &good[..12]).await), ResponseCode::FormErr);
    // Garbage after a good header.
    let mut junk = good[..12].to_vec();
    junk.extend_from_slice(&[0xff; 40]);
    assert_eq!(rcode(raw_udp(d, &junk).await), ResponseCode::FormErr);
    // A name longer than DNS allows (labels of 63 bytes past 255 in all).
    let mut huge = good[..12].to_vec();
    for _ in 0..6 {
        huge.push(63);
        huge.extend_from_slice(&[b'a'; 63]);
    }
    huge.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(rcode(raw_udp(d, &huge).await), ResponseCode::FormErr);
    // An unknown class (CHAOS) and an unknown type.
    let mut chaos = good.clone();
    let n = chaos.len();
    chaos[n - 2..].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(rcode(raw_udp(d, &chaos).await), ResponseCode::NotImp);
    let mut unknown_type = good.clone();
    unknown_type[n - 4..n - 2].copy_from_slice(&65280u16.to_be_bytes());
    assert_eq!(rcode(raw_udp(d, &unknown_type).await), ResponseCode::NotImp);
    // Another opcode (STATUS), and two questions.
    let mut status = good.clone();
    status[2] = (status[2] & 0x87) | (2 << 3);
    assert_eq!(rcode(raw_udp(d, &status).await), ResponseCode::NotImp);
    let mut two = good.clone();
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    assert_eq!(rcode(raw_udp(d, &two).await), ResponseCode::FormErr);
    // Over TCP too, then a broken frame closes only that connection.
    assert_eq!(rcode(raw_tcp(d, &junk).await), ResponseCode::FormErr);
    assert_eq!(raw_tcp(d, &[0, 1]).await, None);
    // Through all of it the server kept answering, on both transports.
    let m = udp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    let m = tcp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_queries_does_not_starve_the_http_api() {
    let h = server("dc1", |_| {}).await;
    register(
        &h,
        &instance("n1", "10.0.0.1", "web", "web-1", &[], "", "passing"),
    )
    .await;
    let d = dns(&h);
    // Two threads send datagrams as fast as they can for 3 s (bounded in
    // time and count, to this server only).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let q = query_bytes("web.service.consul", RecordType::SRV, None);
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
                    let _ = s.send_to(&q, d);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let c = RegistryClient::new(h.url());
    let started = std::time::Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let t = std::time::Instant::now();
        let (nodes, _) = c.catalog_nodes(&Default::default()).await.unwrap();
        assert_eq!(nodes.len(), 1);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        worst < Duration::from_secs(1),
        "HTTP took {worst:?} under {sent} queries"
    );
    // And DNS still answers afterwards.
    let m = udp(d, "web.service.consul", RecordType::A).await;
    assert_eq!(addresses(&m), set(&["10.0.0.1"]));
    h.stop().await;
}

/// The built binary with its default flags but free ports: `--dev` answers
/// DNS, and `dig` (Debian's dnsutils, as any operator would use) reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_server_answers_dig() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "dig is missing on CI: scripts/install-deps.sh installs dnsutils"
        );
        eprintln!("SKIPPED: dig is not installed (apt-get install dnsutils)");
        return;
    }
    let free = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = std::net::TcpListener::bind(s.local_addr().unwrap());
        (s.local_addr().unwrap().port(), t.is_ok())
    };
    for _attempt in 0..3 {
        let (dns_port, tcp_free) = free();
        if !tcp_free {
            continue;
        }
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rpc = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_registry-server"))
            .args(["--dev", "--node", "digger"])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
            .args(["--dns-addr", &format!("127.0.0.1:{dns_port}")])
            .env_remove("REGISTRY_DNS_ADDR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let c = RegistryClient::new(format!("http://127.0.0.1:{http}"));
        let started = std::time::Instant::now();
        let mut up = false;
        while started.elapsed() < Duration::from_secs(20) {
            if c.status_leader().await.is_ok_and(|l| !l.is_empty()) {
                up = true;
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        c.catalog_register(
            &instance("digger", "127.0.0.1", "demo", "demo-1", &[], "", "passing"),
            None,
        )
        .await
        .unwrap();
        let dig = |args: &[&str]| {
            let out = std::process::Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &dns_port.to_string(),
                    "+time=2",
                    "+tries=2",
                ])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        // The embedded agent registers the server's own node and `consul`
        // service too; ours is on the node it names.
        let srv = dig(&["demo.service.consul", "SRV", "+short"]);
        let short = dig(&["demo.service.dc1.consul", "+short"]);
        let tcp = dig(&["+tcp", "digger.node.consul", "+short"]);
        let nx = dig(&["nosuch.service.consul"]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(srv.trim(), "1 1 8080 digger.node.dc1.consul.", "{srv}");
        assert_eq!(short.trim(), "127.0.0.1", "{short}");
        assert_eq!(tcp.trim(), "127.0.0.1", "{tcp}");
        assert!(nx.contains("status: NXDOMAIN"), "{nx}");
        return;
    }
    panic!("registry-server --dev did not come up with DNS");
}
