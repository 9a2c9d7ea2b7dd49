//! One DNS request in, one response out: [`DnsHandler`], over any
//! [`DnsBackend`]. It is a hickory-server [`RequestHandler`] (so it also runs
//! under hickory's own `Server`), and [`DnsHandler::answer_bytes`] is the
//! same path for this crate's listener, from raw bytes to raw bytes.
//!
//! What it answers (Consul's DNS behaviour where the issue is silent):
//! - names in the domain: services (instances that are not critical; with
//!   `only_passing`, not warning either), nodes, `.addr.`, the apex's SOA;
//!   `NXDOMAIN` with the SOA for a name that does not exist (a service with no
//!   instance to answer with, an unknown node or datacenter), `NOERROR` with
//!   the SOA for a name that exists without records of the asked type;
//! - PTR for node addresses (`in-addr.arpa`, `ip6.arpa`), else recursors;
//! - anything else to the recursors, or `REFUSED` without any;
//! - a query it cannot parse: `FORMERR` (when the header can be read, else
//!   nothing); an opcode other than QUERY, a class other than IN, or a type
//!   it does not know: `NOTIMP`; several questions: `FORMERR`; EDNS above
//!   version 0: `BADVERS`; a backend that fails or takes longer than
//!   [`BACKEND_TIMEOUT`]: `SERVFAIL`.
//!
//! Owns: the filtering of instances by health (the one place), shuffling,
//! the choice of response code, and the cache of encoded UDP answers to
//! service lookups ([`AnswerCache`]). Must not touch: sockets (`listener.rs`).

use crate::answer::{self, Built, Records, Unit, Want, MAX_UDP_PAYLOAD};
use crate::backend::{BackendError, DnsBackend, Health, Instance};
use crate::names::{reverse_ip, Domains, Lookup};
use crate::recursor::Recursors;
use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a backend may take before the answer is SERVFAIL: resolvers
/// retry after a second or two anyway.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// What the handler needs to know besides the backend.
#[derive(Clone, Debug)]
pub struct HandlerConfig {
    /// The domain and alt domain.
    pub domains: Domains,
    /// This node's datacenter (a query naming it is a local query).
    pub datacenter: String,
    /// TTL of service and node records, in seconds.
    pub ttl: u32,
    /// Leave out instances with a warning check too.
    pub only_passing: bool,
    /// Where names outside the domain go.
    pub recursors: Recursors,
}

/// Shuffled answers kept per question and catalog state (see [`AnswerCache`]).
const SHUFFLES: usize = 8;
/// Questions kept in the [`AnswerCache`] before it starts over (each holds at
/// most [`SHUFFLES`] UDP answers of at most 4 KiB: 8 MiB in all).
const CACHED_QUESTIONS: usize = 256;

/// Encoded UDP answers to service lookups, by question (its exact bytes, the
/// flags copied into the answer, EDNS and the size limit). An entry is valid
/// while the backend answers with the very same instance list (`Arc`
/// identity: the server's backend hands out one per applied index), and
/// holds up to [`SHUFFLES`] answers, each in an order shuffled when it was
/// made: the first [`SHUFFLES`] queries after a change get fresh shuffles,
/// later ones a random one of them. A popular name then costs a lookup and
/// an id patch instead of building and encoding hundreds of records.
type AnswerCache = std::sync::Mutex<HashMap<Vec<u8>, CachedAnswer>>;

/// One question's cached answers.
struct CachedAnswer {
    /// The instance list they were made from (kept so its address stays unique).
    instances: Arc<[Instance]>,
    /// The encoded answers, each in its own order.
    shuffles: Vec<Vec<u8>>,
}

/// A request handler over `B`.
pub struct DnsHandler<B> {
    /// The catalog.
    backend: Arc<B>,
    /// Settings.
    config: HandlerConfig,
    /// Encoded answers of popular service names.
    answers: AnswerCache,
}

/// What a request gets.
enum Reply {
    /// An answer of ours.
    Built(Box<Built>),
    /// A recursor's reply, sent on as it came.
    Forwarded(Vec<u8>),
    /// An answer of ours, already encoded.
    Encoded(Vec<u8>),
}

impl<B: DnsBackend> DnsHandler<B> {
    /// A handler answering from `backend`.
    pub fn new(backend: Arc<B>, config: HandlerConfig) -> Self {
        DnsHandler {
            backend,
            config,
            answers: Default::default(),
        }
    }

    /// The response to the DNS message `raw` that came from `src` over
    /// `protocol`, or `None` when nothing should be sent (not a query, or not
    /// even a header).
    pub async fn answer_bytes(
        &self,
        raw: &[u8],
        src: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        let request = match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%src, error = %e, "malformed DNS message");
                return form_error(raw);
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let limit = match protocol {
            Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
            _ => u16::MAX,
        };
        let udp_limit = (protocol == Protocol::Udp).then_some(limit);
        match self.reply(&request, udp_limit).await {
            Reply::Forwarded(bytes) | Reply::Encoded(bytes) => Some(bytes),
            Reply::Built(built) => {
                let query = request.queries.queries().first().map(|q| q.original());
                match answer::encode(&built, query, limit, protocol != Protocol::Udp) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not encode a DNS answer");
                        let mut m = built.metadata;
                        m.response_code = ResponseCode::ServFail;
                        header_only(m)
                    }
                }
            }
        }
    }

    /// The reply to a parsed query; with `udp_limit`, service answers come
    /// encoded within it, through the [`AnswerCache`].
    async fn reply(&self, request: &Request, udp_limit: Option<u16>) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.config.recursors.is_empty();
        // An OPT record answers one: our size (RFC 6891 §6.2.3), version 0.
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            e.set_version(0);
            e
        });
        let mut built = Built {
            metadata,
            units: Vec::new(),
            authority: Vec::new(),
            edns,
        };
        let code = |mut b: Built, rcode: ResponseCode| {
            b.metadata.response_code = rcode;
            Reply::Built(Box::new(b))
        };
        if request.metadata.op_code != OpCode::Query {
            return code(built, ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return code(built, ResponseCode::BADVERS);
        }
        let [query] = request.queries.queries() else {
            return code(built, ResponseCode::FormErr);
        };
        let qtype = query.query_type();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return code(built, ResponseCode::NotImp);
        }
        if matches!(
            qtype,
            RecordType::Unknown(_)
                | RecordType::OPT
                | RecordType::AXFR
                | RecordType::IXFR
                | RecordType::ZERO
        ) {
            return code(built, ResponseCode::NotImp);
        }
        let qname: Name = query.original().name().clone();
        let Some((lookup, domain)) = self.config.domains.parse(query.name()) else {
            if qtype == RecordType::PTR {
                if let Some(ip) = reverse_ip(query.name()) {
                    match self.timed(self.backend.node_by_address(ip)).await {
                        Ok(Some(node)) => {
                            built.metadata.authoritative = true;
                            built.units = self
                                .records(&qname, None, &self.config.domains.primary)
                                .ptr(&node);
                            return Reply::Built(Box::new(built));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "PTR lookup failed");
                            return code(built, ResponseCode::ServFail);
                        }
                    }
                }
            }
            return self.recurse(request, built).await;
        };
        let domain = domain.clone();
        built.metadata.authoritative = true;
        let want = match qtype {
            RecordType::A => Some(Want::V4),
            RecordType::AAAA => Some(Want::V6),
            RecordType::ANY => Some(Want::Both),
            _ => None,
        };
        let result: Result<Option<Vec<Unit>>, BackendError> = match lookup {
            Lookup::Apex => Ok(Some(
                if qtype == RecordType::SOA || qtype == RecordType::ANY {
                    vec![Unit {
                        answers: vec![self.soa(&domain)],
                        additionals: Vec::new(),
                    }]
                } else {
                    Vec::new()
                },
            )),
            Lookup::Invalid => Ok(None),
            Lookup::Addr(ip) => Ok(Some(match want {
                Some(w) => self.records(&qname, None, &domain).addr(ip, w),
                None => Vec::new(),
            })),
            Lookup::Node { dc, node } => {
                let dc = self.remote(dc);
                match self.timed(self.backend.node(dc.as_deref(), &node)).await {
                    Ok(Some(n)) => Ok(Some(match want {
                        Some(w) => self
                            .records(&qname, dc.as_deref(), &domain)
                            .node(&n.address, w),
                        None => Vec::new(),
                    })),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Lookup::Service { dc, service, tag } => {
                let dc = self.remote(dc);
                match self
                    .timed(
                        self.backend
                            .service_instances(dc.as_deref(), &service, tag.as_deref()),
                    )
                    .await
                {
                    Ok(all) => {
                        let key = udp_limit.map(|limit| cache_key(request, limit));
                        if let Some(hit) = key.as_ref().and_then(|k| self.cached(k, &all)) {
                            let mut bytes = hit;
                            bytes[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
                            return Reply::Encoded(bytes);
                        }
                        let mut live = self.answerable(&all);
                        if live.is_empty() {
                            Ok(None)
                        } else {
                            live.shuffle(&mut rand::rng());
                            let r = self.records(&qname, dc.as_deref(), &domain);
                            let units = match (qtype, want) {
                                (RecordType::SRV, _) => r.service_srv(&live),
                                (_, Some(w)) => {
                                    let only: Vec<&Instance> =
                                        live.iter().map(|(i, _)| *i).collect();
                                    r.service_addresses(&only, w)
                                }
                                _ => Vec::new(),
                            };
                            if let (Some(key), Some(limit), false) =
                                (key, udp_limit, units.is_empty())
                            {
                                built.units = units;
                                let query = request.queries.queries().first().map(|q| q.original());
                                if let Ok(bytes) = answer::encode(&built, query, limit, false) {
                                    self.remember(key, &all, &bytes);
                                    return Reply::Encoded(bytes);
                                }
                                return Reply::Built(Box::new(built));
                            }
                            Ok(Some(units))
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(Some(units)) if !units.is_empty() => {
                built.units = units;
                Reply::Built(Box::new(built))
            }
            // The name exists, without records of this type.
            Ok(Some(_)) => {
                built.authority.push(self.soa(&domain));
                Reply::Built(Box::new(built))
            }
            Ok(None) | Err(BackendError::UnknownDatacenter(_)) => {
                built.authority.push(self.soa(&domain));
                code(built, ResponseCode::NXDomain)
            }
            Err(BackendError::Unavailable(e)) => {
                tracing::debug!(name = %qname, error = %e, "DNS lookup failed");
                code(built, ResponseCode::ServFail)
            }
        }
    }

    /// A cached answer for `key` made from `instances`, once [`SHUFFLES`]
    /// of them were made.
    fn cached(&self, key: &[u8], instances: &Arc<[Instance]>) -> Option<Vec<u8>> {
        let cache = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        if !Arc::ptr_eq(&entry.instances, instances) || entry.shuffles.len() < SHUFFLES {
            return None;
        }
        let pick = rand::random_range(0..entry.shuffles.len());
        Some(entry.shuffles[pick].clone())
    }

    /// Keeps `bytes` among the shuffles of `key` for `instances`.
    fn remember(&self, key: Vec<u8>, instances: &Arc<[Instance]>, bytes: &[u8]) {
        let mut cache = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_QUESTIONS && !cache.contains_key(&key) {
            cache.clear();
        }
        let entry = cache.entry(key).or_insert_with(|| CachedAnswer {
            instances: instances.clone(),
            shuffles: Vec::new(),
        });
        if !Arc::ptr_eq(&entry.instances, instances) {
            entry.instances = instances.clone();
            entry.shuffles.clear();
        }
        if entry.shuffles.len() < SHUFFLES {
            entry.shuffles.push(bytes.to_vec());
        }
    }

    /// The instances to answer with and their SRV weights: never critical
    /// ones, and warning ones only without `only_passing` (Consul's
    /// `dns_config.only_passing`).
    fn answerable<'a>(&self, all: &'a [Instance]) -> Vec<(&'a Instance, u16)> {
        all.iter()
            .filter_map(|i| match i.health {
                Health::Passing => Some((i, i.weight_passing)),
                Health::Warning if !self.config.only_passing => Some((i, i.weight_warning)),
                _ => None,
            })
            .collect()
    }

    /// `dc`, unless it names this node's own datacenter.
    fn remote(&self, dc: Option<String>) -> Option<String> {
        dc.filter(|d| !d.eq_ignore_ascii_case(&self.config.datacenter))
    }

    fn records<'a>(
        &'a self,
        qname: &'a Name,
        dc: Option<&'a str>,
        domain: &'a Name,
    ) -> Records<'a> {
        Records {
            qname,
            ttl: self.config.ttl,
            dc: dc.unwrap_or(&self.config.datacenter),
            domain,
        }
    }

    fn soa(&self, domain: &Name) -> Record {
        // Consul's serial is the time of the answer: nothing transfers the zone.
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        answer::soa(domain, serial)
    }

    /// A backend call within [`BACKEND_TIMEOUT`].
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(BACKEND_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Unavailable(
                    "the catalog did not answer in time".into(),
                ))
            })
    }

    /// A name outside the domain: the recursors' answer, SERVFAIL when none
    /// answers, REFUSED when there are none.
    async fn recurse(&self, request: &Request, mut built: Built) -> Reply {
        if self.config.recursors.is_empty() {
            built.metadata.response_code = ResponseCode::Refused;
            return Reply::Built(Box::new(built));
        }
        match self
            .config
            .recursors
            .forward(request.as_slice(), request.protocol())
            .await
        {
            Some(bytes) => Reply::Forwarded(bytes),
            None => {
                built.metadata.response_code = ResponseCode::ServFail;
                Reply::Built(Box::new(built))
            }
        }
    }
}

/// What an encoded answer depends on besides the catalog: the question as
/// sent (case included), the flags copied from the query (RD, CD), whether
/// it had EDNS, and the size limit.
fn cache_key(request: &Request, limit: u16) -> Vec<u8> {
    let mut key = request.queries.as_bytes().to_vec();
    key.push(
        u8::from(request.metadata.recursion_desired)
            | u8::from(request.metadata.checking_disabled) << 1
            | u8::from(request.edns.is_some()) << 2,
    );
    key.extend_from_slice(&limit.to_be_bytes());
    key
}

/// FORMERR for a message whose header can be read (RFC 1035 §4.1.1), and
/// nothing for one whose cannot, or that is itself a response (answering
/// those could start a loop between two servers).
fn form_error(raw: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    header_only(metadata)
}

/// A message with a header and nothing else.
fn header_only(metadata: Metadata) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    Header {
        metadata,
        counts: Default::default(),
    }
    .emit(&mut encoder)
    .ok()?;
    Some(bytes)
}

#[async_trait::async_trait]
impl<B: DnsBackend> RequestHandler for DnsHandler<B> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request, None).await;
        // hickory's transports truncate to the client's size themselves.
        let (metadata, answers, authority, additionals, edns) = match reply {
            Reply::Built(b) => {
                let answers: Vec<Record> = b
                    .units
                    .iter()
                    .flat_map(|u| u.answers.iter().cloned())
                    .collect();
                let additionals: Vec<Record> = b
                    .units
                    .iter()
                    .flat_map(|u| u.additionals.iter().cloned())
                    .collect();
                (b.metadata, answers, b.authority, additionals, b.edns)
            }
            Reply::Forwarded(bytes) | Reply::Encoded(bytes) => match Message::from_vec(&bytes) {
                Ok(m) => (m.metadata, m.answers, m.authorities, m.additionals, m.edns),
                Err(_) => {
                    let mut m = Metadata::response_from_request(&request.metadata);
                    m.response_code = ResponseCode::ServFail;
                    (m, Vec::new(), Vec::new(), Vec::new(), None)
                }
            },
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            answers.iter(),
            authority.iter(),
            [],
            additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "could not send a DNS response");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: Default::default(),
                })
            }
        }
    }
}
