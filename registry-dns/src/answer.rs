//! Building an answer's records (A, AAAA, CNAME, SRV with its target's address
//! in the additional section, PTR, SOA) and encoding the message within the
//! size the transport allows.
//!
//! Truncation (RFC 1035 §4.2.1, RFC 6891 §6.2.5, RFC 2181 §9): an answer is a
//! list of [`Unit`]s, each one instance's answer records with the additional
//! records that go with them. Over UDP the message must fit 512 bytes, or the
//! client's EDNS0 size (up to [`MAX_UDP_PAYLOAD`]); when every unit does not
//! fit, the largest prefix of whole units that does is sent with the TC bit,
//! so a client retries over TCP and gets them all (up to 64 KiB, a TCP
//! message's limit). Consul instead caps UDP answers at 3 records without TC
//! unless `enable_truncate` is set, and at thousands of instances may send no
//! answer at all; here the cut is always by size and always says so.
//!
//! Owns: records and encoding. Must not touch: which instances are answered
//! (`handler.rs`).

use crate::backend::Instance;
use crate::names::hex_label;
use hickory_proto::op::{emit_message_parts, Edns, Metadata, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_proto::ProtoError;
use std::collections::HashSet;
use std::net::IpAddr;

/// The largest UDP answer sent whatever the client offers: 4096 is what most
/// resolvers offer and what fits in a fragmented datagram without surprises.
pub const MAX_UDP_PAYLOAD: u16 = 4096;
/// The size of a UDP answer to a client without EDNS0 (RFC 1035 §4.2.1).
pub const PLAIN_UDP_PAYLOAD: u16 = 512;

/// One instance's share of an answer: its answer records and the additional
/// records that go with them. Kept or cut together.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    /// Answer-section records.
    pub answers: Vec<Record>,
    /// Additional-section records (an SRV target's address).
    pub additionals: Vec<Record>,
}

/// A response before encoding.
#[derive(Clone, Debug)]
pub struct Built {
    /// The header (response code, flags).
    pub metadata: Metadata,
    /// The answer, instance by instance.
    pub units: Vec<Unit>,
    /// The authority section (the SOA of a negative answer).
    pub authority: Vec<Record>,
    /// The OPT record to send (when the query had one).
    pub edns: Option<Edns>,
}

/// Encodes `built` as the answer to `query` within `limit` bytes: every unit
/// if they fit, else the largest prefix of whole units that does, with TC set.
///
/// With `last_resort` (TCP: no larger transport to retry on), when every
/// answer record fits but not every additional one, the answers are all sent
/// and only additional records are left out, without TC (RFC 2181 §9: TC
/// means the answer section is incomplete). SRV targets are never compressed
/// (RFC 2782), so at about a thousand SRV answers their addresses no longer
/// fit in one 64 KiB message with them; a client then asks for the missing
/// addresses itself.
pub fn encode(
    built: &Built,
    query: Option<&Query>,
    limit: u16,
    last_resort: bool,
) -> Result<Vec<u8>, ProtoError> {
    let n = built.units.len();
    let full = encode_prefix(built, query, n)?;
    if fits(&full, limit) {
        return Ok(full);
    }
    if last_resort {
        let fits = |j: usize| -> Result<Option<Vec<u8>>, ProtoError> {
            let b = encode_answers_with_additionals(built, query, j)?;
            Ok(fits(&b, limit).then_some(b))
        };
        if let Some(answers_only) = fits(0)? {
            let (mut lo, mut hi) = (0usize, n - 1);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if fits(mid)?.is_some() {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            return Ok(match lo {
                0 => answers_only,
                j => encode_answers_with_additionals(built, query, j)?,
            });
        }
    }
    // The largest k whose encoding fits. Sizes grow with k (compression only
    // ever makes a later record smaller, never an earlier one), so start from
    // the estimate the full encoding gives (units are about the same size)
    // and step to the exact k: two or three encodings of at most `limit`
    // bytes, where a binary search would take log2(n).
    let base = encode_prefix(built, query, 0)?.len();
    let per_unit = (full.len().saturating_sub(base) / n).max(1);
    let mut k = (usize::from(limit).saturating_sub(base) / per_unit).min(n - 1);
    let mut last = encode_prefix(built, query, k)?;
    if fits(&last, limit) {
        while k + 1 < n {
            let next = encode_prefix(built, query, k + 1)?;
            if !fits(&next, limit) {
                break;
            }
            k += 1;
            last = next;
        }
    } else {
        while k > 0 {
            k -= 1;
            last = encode_prefix(built, query, k)?;
            if fits(&last, limit) {
                break;
            }
        }
    }
    // The same bytes with TC set (bit 1 of the third byte, RFC 1035 §4.1.1).
    if let Some(flags) = last.get_mut(2) {
        *flags |= 0x02;
    }
    Ok(last)
}

/// Whether an encoding fits `limit` whole: the encoder stops at 64 KiB by
/// itself and sets TC when records did not fit, so the flag counts too.
fn fits(bytes: &[u8], limit: u16) -> bool {
    const TC: u8 = 0x02;
    bytes.len() <= usize::from(limit) && bytes.get(2).is_some_and(|flags| flags & TC == 0)
}

/// Every answer record, with the additional records of the first `j` units.
fn encode_answers_with_additionals(
    built: &Built,
    query: Option<&Query>,
    j: usize,
) -> Result<Vec<u8>, ProtoError> {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    emit_message_parts(
        &built.metadata,
        &mut query.into_iter(),
        &mut built.units.iter().flat_map(|u| u.answers.iter()),
        &mut built.authority.iter(),
        &mut built.units[..j].iter().flat_map(|u| u.additionals.iter()),
        built.edns.as_ref(),
        None,
        &mut encoder,
    )?;
    Ok(bytes)
}

/// The encoding of the first `k` units.
fn encode_prefix(built: &Built, query: Option<&Query>, k: usize) -> Result<Vec<u8>, ProtoError> {
    let metadata = built.metadata;
    let units = &built.units[..k];
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    emit_message_parts(
        &metadata,
        &mut query.into_iter(),
        &mut units.iter().flat_map(|u| u.answers.iter()),
        &mut built.authority.iter(),
        &mut units.iter().flat_map(|u| u.additionals.iter()),
        built.edns.as_ref(),
        None,
        &mut encoder,
    )?;
    Ok(bytes)
}

/// The records one lookup answers with, for one query type.
pub struct Records<'a> {
    /// The name asked for (the owner of every answer record).
    pub qname: &'a Name,
    /// The TTL of service and node records (`--dns-ttl`).
    pub ttl: u32,
    /// The datacenter the answer is from (in SRV target names).
    pub dc: &'a str,
    /// The domain the query was in (SRV targets stay in it).
    pub domain: &'a Name,
}

/// Which address records a query type asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A.
    V4,
    /// AAAA.
    V6,
    /// ANY: both.
    Both,
}

impl Want {
    fn takes(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Want::Both, _) | (Want::V4, IpAddr::V4(_)) | (Want::V6, IpAddr::V6(_))
        )
    }
}

impl Records<'_> {
    /// An address record for `ip` owned by `owner`.
    fn address(&self, owner: &Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner.clone(), self.ttl, data)
    }

    /// A, AAAA (or both) for each instance, in the given order. An address
    /// that is a host name is answered with a CNAME, but only when no
    /// instance has an IP of the wanted family: one owner cannot hold a
    /// CNAME beside other records (RFC 1034 §3.6.2).
    pub fn service_addresses(&self, instances: &[&Instance], want: Want) -> Vec<Unit> {
        let mut seen = HashSet::new();
        let units: Vec<Unit> = instances
            .iter()
            .filter_map(|i| i.address().parse::<IpAddr>().ok())
            .filter(|ip| want.takes(*ip) && seen.insert(*ip))
            .map(|ip| Unit {
                answers: vec![self.address(self.qname, ip)],
                additionals: Vec::new(),
            })
            .collect();
        if !units.is_empty() {
            return units;
        }
        instances
            .iter()
            .find_map(|i| self.cname(i.address()))
            .into_iter()
            .collect()
    }

    /// A CNAME from the query name to `host`, if `host` is a host name.
    fn cname(&self, host: &str) -> Option<Unit> {
        if host.parse::<IpAddr>().is_ok() {
            return None;
        }
        let target = fqdn(host)?;
        Some(Unit {
            answers: vec![Record::from_rdata(
                self.qname.clone(),
                self.ttl,
                RData::CNAME(CNAME(target)),
            )],
            additionals: Vec::new(),
        })
    }

    /// One SRV per instance (priority 1, the weight of its health), with its
    /// target's address in the additional section, once per target. The
    /// target is `<node>.node.<dc>.<domain>` when the instance uses its
    /// node's address, `<hex>.addr.<dc>.<domain>` when it has its own IP, and
    /// the host name itself when its address is one (as Consul names them).
    pub fn service_srv(&self, instances: &[(&Instance, u16)]) -> Vec<Unit> {
        let mut targets_seen = HashSet::new();
        instances
            .iter()
            .filter_map(|(i, weight)| {
                let address = i.address();
                let ip = address.parse::<IpAddr>().ok();
                let target = match ip {
                    Some(ip)
                        if !i.service_address.is_empty() && i.service_address != i.node_address =>
                    {
                        self.in_domain(&format!("{}.addr.{}", hex_label(ip), self.dc))
                    }
                    Some(ip) => self
                        .in_domain(&format!("{}.node.{}", i.node, self.dc))
                        .or_else(|| self.in_domain(&format!("{}.addr.{}", hex_label(ip), self.dc))),
                    None => fqdn(address),
                }?;
                let srv = SRV::new(1, *weight, i.port, target.clone());
                let mut unit = Unit {
                    answers: vec![Record::from_rdata(
                        self.qname.clone(),
                        self.ttl,
                        RData::SRV(srv),
                    )],
                    additionals: Vec::new(),
                };
                if let Some(ip) = ip {
                    if targets_seen.insert(target.clone()) {
                        unit.additionals.push(self.address(&target, ip));
                    }
                }
                Some(unit)
            })
            .collect()
    }

    /// A node's address record (or a CNAME to its host name).
    pub fn node(&self, address: &str, want: Want) -> Vec<Unit> {
        match address.parse::<IpAddr>() {
            Ok(ip) if want.takes(ip) => vec![Unit {
                answers: vec![self.address(self.qname, ip)],
                additionals: Vec::new(),
            }],
            Ok(_) => Vec::new(),
            Err(_) => self.cname(address).into_iter().collect(),
        }
    }

    /// An address record for an `.addr.` name.
    pub fn addr(&self, ip: IpAddr, want: Want) -> Vec<Unit> {
        if !want.takes(ip) {
            return Vec::new();
        }
        vec![Unit {
            answers: vec![self.address(self.qname, ip)],
            additionals: Vec::new(),
        }]
    }

    /// A PTR from the query name to `<node>.node.<dc>.<domain>`.
    pub fn ptr(&self, node: &str) -> Vec<Unit> {
        self.in_domain(&format!("{node}.node.{}", self.dc))
            .map(|target| Unit {
                answers: vec![Record::from_rdata(
                    self.qname.clone(),
                    self.ttl,
                    RData::PTR(PTR(target)),
                )],
                additionals: Vec::new(),
            })
            .into_iter()
            .collect()
    }

    /// `prefix` under the query's domain, if it makes a valid name.
    fn in_domain(&self, prefix: &str) -> Option<Name> {
        Name::from_ascii(prefix)
            .ok()?
            .append_domain(self.domain)
            .ok()
    }
}

/// The domain's SOA record, as Consul makes it (`ns.<domain>`,
/// `hostmaster.<domain>`, refresh 3600, retry 600, expire 86400, minimum and
/// TTL 0 so that negative answers are not cached).
pub fn soa(domain: &Name, serial: u32) -> Record {
    let under = |label: &str| {
        Name::from_ascii(label)
            .ok()
            .and_then(|n| n.append_domain(domain).ok())
            .unwrap_or_else(|| domain.clone())
    };
    let soa = SOA::new(
        under("ns"),
        under("hostmaster"),
        serial,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(domain.clone(), 0, RData::SOA(soa))
}

/// `host` as a fully qualified name, if it is a valid one.
fn fqdn(host: &str) -> Option<Name> {
    let mut name = Name::from_ascii(host.trim_end_matches('.')).ok()?;
    name.set_fqdn(true);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::RecordType;
    use std::str::FromStr;

    fn instance(i: usize) -> Instance {
        Instance {
            node: format!("node-{i}"),
            node_address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            service_address: String::new(),
            port: 8080,
            weight_passing: 1,
            weight_warning: 1,
            health: Health::Passing,
        }
    }

    fn built(units: Vec<Unit>) -> Built {
        let mut metadata = Metadata::new(7, MessageType::Response, OpCode::Query);
        metadata.authoritative = true;
        Built {
            metadata,
            units,
            authority: Vec::new(),
            edns: None,
        }
    }

    fn records<'a>(qname: &'a Name, domain: &'a Name) -> Records<'a> {
        Records {
            qname,
            ttl: 0,
            dc: "dc1",
            domain,
        }
    }

    #[test]
    fn a_udp_answer_is_cut_to_whole_records_with_tc() {
        let qname = Name::from_str("web.service.consul.").unwrap();
        let domain = Name::from_str("consul.").unwrap();
        let all: Vec<Instance> = (0..1000).map(instance).collect();
        let refs: Vec<&Instance> = all.iter().collect();
        let units = records(&qname, &domain).service_addresses(&refs, Want::V4);
        assert_eq!(units.len(), 1000);
        let query = Query::query(qname.clone(), RecordType::A);
        let b = built(units);
        let udp = encode(&b, Some(&query), PLAIN_UDP_PAYLOAD, false).unwrap();
        assert!(udp.len() <= 512, "{} bytes", udp.len());
        let m = Message::from_vec(&udp).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.len() > 10, "{} answers", m.answers.len());
        // Nothing more would have fitted: one more record goes past 512.
        let one_more = encode_prefix(&b, Some(&query), m.answers.len() + 1).unwrap();
        assert!(one_more.len() > 512);
        // The TCP limit holds all of them, without TC.
        let tcp = encode(&b, Some(&query), u16::MAX, true).unwrap();
        let m = Message::from_vec(&tcp).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1000);
    }

    #[test]
    fn srv_units_keep_their_additional_records() {
        let qname = Name::from_str("web.service.consul.").unwrap();
        let domain = Name::from_str("consul.").unwrap();
        let mut all: Vec<Instance> = (0..100).map(instance).collect();
        all[1].service_address = "192.0.2.9".into();
        all[2].service_address = "db.example.com".into();
        let with_weights: Vec<(&Instance, u16)> = all.iter().map(|i| (i, 1)).collect();
        let units = records(&qname, &domain).service_srv(&with_weights);
        let query = Query::query(qname.clone(), RecordType::SRV);
        let udp = encode(&built(units.clone()), Some(&query), 1232, false).unwrap();
        let m = Message::from_vec(&udp).unwrap();
        assert!(m.metadata.truncation);
        assert!(udp.len() <= 1232);
        // Every SRV target with an IP has its address among the additionals.
        for srv in m.answers.iter().filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s),
            _ => None,
        }) {
            let target = &srv.target;
            if target.to_string() == "db.example.com." {
                continue;
            }
            assert!(
                m.additionals.iter().any(|a| a.name == *target),
                "no address for {target}"
            );
        }
        let targets: Vec<String> = units
            .iter()
            .take(3)
            .map(|u| match &u.answers[0].data {
                RData::SRV(s) => s.target.to_string(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            targets,
            [
                "node-0.node.dc1.consul.",
                "c0000209.addr.dc1.consul.",
                "db.example.com."
            ]
        );
    }

    #[test]
    fn soa_names_the_domain() {
        let domain = Name::from_str("consul.").unwrap();
        let r = soa(&domain, 5);
        match &r.data {
            RData::SOA(s) => {
                assert_eq!(s.mname.to_string(), "ns.consul.");
                assert_eq!(s.rname.to_string(), "hostmaster.consul.");
            }
            other => panic!("{other:?}"),
        }
    }
}
