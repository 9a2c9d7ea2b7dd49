//! One request to a server for many identical blocking queries.
//!
//! Every application on a host asks its own agent, and many ask the same question: a hundred
//! processes watching `web` each hold `GET /v1/health/service/web?index=N` open. Consul's agent
//! forwards each as a request of its own, so a server holds one blocking query (and one
//! connection) per watcher in the whole datacenter. This agent sends one: a blocking query
//! that is identical to one already on its way to a server (same path and query, same headers
//! that cross, so the same token) waits for that one's answer instead, and every caller gets
//! it. The servers then hold at most one query per distinct question per agent.
//!
//! What a caller that joined late gets: a blocking query answers when the index moves past
//! the one asked for (or when its wait ends), with the state the server reads at that moment,
//! which is after the joiner asked. But the server made the read's consistency check (the
//! default mode's wait for its applied index to reach the leader's commit) when the first
//! caller asked: a joiner that had just written through another server may be answered by a
//! follower that moved past its index without having applied that write yet. Such an answer
//! is stale by at most the replication lag, like `?stale`, and the joiner's next query (at
//! the new index) sees its write. A `?consistent` query is never shared (its leader check
//! must come after the caller asked), nor is `index=0` or a non-blocking read: those answer
//! at once, and sharing them would only serve older data. An answer already seen by a caller
//! is not handed to one that comes after (one still on its way from the server can be).
//! A caller that joined late gets the flight's answer when its wait ends, possibly before
//! its own would have: an unchanged index, which every blocking-query client takes as "ask
//! again" (Consul's documentation tells clients that a blocking query may return with
//! nothing changed, and to compare the index).
//!
//! Owns: which forwarded requests share one upstream request, and the sharing. Must not touch:
//! what is forwarded (`forward.rs`), failover and signing (the pool's).

use crate::servers::{PoolResponse, ServerPool};
use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use registry_api::metrics::{Counter, Metrics};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a shared request ends with; the error is the pool's, as text (every caller gets it).
pub(super) type Answer = Result<PoolResponse, String>;
type Upstream = BoxFuture<'static, Answer>;

/// The blocking queries on their way to a server, by question.
pub(super) struct Coalescer {
    /// Question -> (flight number, the flight). Weak: a flight whose callers all left is
    /// cancelled (its request dropped), not kept alive by this map.
    flights: Mutex<Flights>,
    /// Blocking queries sent to a server.
    upstream: Arc<Counter>,
    /// Blocking queries answered by another caller's request.
    shared: Arc<Counter>,
}

#[derive(Default)]
struct Flights {
    next: u64,
    by_key: HashMap<Vec<u8>, (u64, WeakShared<Upstream>)>,
}

impl Coalescer {
    /// A coalescer counting into `metrics`.
    pub(super) fn new(metrics: &Metrics) -> Coalescer {
        Coalescer {
            flights: Mutex::new(Flights::default()),
            upstream: metrics.counter(
                "registry.agent.blocking.upstream",
                "Blocking queries this agent sent to a server",
            ),
            shared: metrics.counter(
                "registry.agent.blocking.shared",
                "Blocking queries answered by an identical one already sent to a server",
            ),
        }
    }

    /// `GET path_and_query` with `headers` through `servers`, sharing the request with every
    /// identical one in flight.
    pub(super) async fn get(
        &self,
        servers: &ServerPool,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Answer {
        let key = key(path_and_query, &headers);
        let (id, flight) = {
            let mut f = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            let joined = f.by_key.get(&key).and_then(|(id, weak)| {
                let flight = weak.upgrade()?;
                // Answered already (callers are still collecting it): this caller asked after
                // that answer, so it gets a request of its own.
                flight.peek().is_none().then_some((*id, flight))
            });
            match joined {
                Some(j) => {
                    self.shared.inc();
                    j
                }
                None => {
                    let (servers, pq) = (servers.clone(), path_and_query.to_string());
                    let flight = async move {
                        (servers.send(Method::GET, &pq, headers, Bytes::new()).await)
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared();
                    f.next += 1;
                    let id = f.next;
                    if let Some(weak) = flight.downgrade() {
                        f.by_key.insert(key.clone(), (id, weak));
                    }
                    self.upstream.inc();
                    (id, flight)
                }
            }
        };
        let mut waiter = Waiter {
            coalescer: self,
            key,
            id,
            flight: Some(flight),
        };
        match waiter.flight.as_mut() {
            Some(flight) => flight.await,
            None => Err("blocking query lost its request".to_string()),
        }
    }

    /// Distinct questions in flight (for tests).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }
}

/// Whether a forwarded request may share an identical one's answer: a `GET` blocking query
/// (`index` other than 0) that is not `?consistent`.
pub(super) fn shareable(method: &Method, query: Option<&str>) -> bool {
    let consistent = || {
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, _)| k == "consistent")
    };
    method == Method::GET && registry_api::limits::blocking_wait(query).is_some() && !consistent()
}

/// The question a request asks: its path and query and the headers that cross to the server
/// (the token among them), so that callers with different tokens never share an answer.
fn key(path_and_query: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    // By name only, and stable: a header sent twice keeps its order, which is part of it.
    pairs.sort_by_key(|(name, _)| *name);
    let mut key = path_and_query.as_bytes().to_vec();
    for (name, value) in pairs {
        key.push(b'\n');
        key.extend_from_slice(name.as_bytes());
        key.push(b':');
        key.extend_from_slice(value);
    }
    key
}

/// One caller of a flight. On drop (answered, or the caller went away) it lets go of the
/// flight first, then removes the flight from the map if it is answered or nobody waits on
/// it any more, so that the map never holds more than the questions being asked.
struct Waiter<'a> {
    coalescer: &'a Coalescer,
    key: Vec<u8>,
    id: u64,
    flight: Option<Shared<Upstream>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        drop(self.flight.take());
        let mut f = (self.coalescer.flights)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let done = match f.by_key.get(&self.key) {
            Some((id, weak)) if *id == self.id => {
                weak.upgrade().is_none_or(|flight| flight.peek().is_some())
            }
            _ => false,
        };
        if done {
            f.by_key.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_blocking_gets_that_are_not_consistent_are_shared() {
        let get = Method::GET;
        assert!(shareable(&get, Some("index=5")));
        assert!(shareable(&get, Some("passing&index=5&wait=10s")));
        assert!(!shareable(&get, Some("index=0")));
        assert!(!shareable(&get, Some("index=x")));
        assert!(!shareable(&get, None));
        assert!(!shareable(&get, Some("passing")));
        assert!(!shareable(&get, Some("index=5&consistent")));
        assert!(!shareable(&Method::PUT, Some("index=5")));
    }

    #[test]
    fn the_token_is_part_of_the_question() {
        let mut a = HeaderMap::new();
        a.insert("x-consul-token", HeaderValue::from_static("one"));
        let mut b = HeaderMap::new();
        b.insert("x-consul-token", HeaderValue::from_static("two"));
        let pq = "/v1/health/service/web?index=5";
        assert_ne!(key(pq, &a), key(pq, &b));
        assert_eq!(key(pq, &a), key(pq, &a.clone()));
        assert_ne!(key(pq, &a), key("/v1/health/service/web?index=6", &a));
    }

    #[tokio::test]
    async fn callers_that_leave_cancel_the_request_and_leave_nothing_behind() {
        // A server that accepts and never answers: the flight stays in the air.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let pool = ServerPool::new(vec![format!("http://{addr}")]).unwrap();
        let c = Arc::new(Coalescer::new(&Metrics::new()));
        let pq = "/v1/health/service/web?index=5";
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let (c, pool) = (c.clone(), pool.clone());
                tokio::spawn(async move { c.get(&pool, pq, HeaderMap::new()).await })
            })
            .collect();
        registry_testkit::wait_until(
            std::time::Duration::from_secs(10),
            "three callers on one flight",
            || async { (c.upstream.get() == 1 && c.shared.get() == 2).then_some(()) },
        )
        .await;
        assert_eq!(c.in_flight(), 1);
        let mut callers = callers.into_iter();
        for t in callers.by_ref().take(2) {
            t.abort();
            let _ = t.await;
        }
        // One caller still waits: the flight stays, and a fourth joins it.
        assert_eq!(c.in_flight(), 1);
        let fourth = tokio::spawn({
            let (c, pool) = (c.clone(), pool.clone());
            async move { c.get(&pool, pq, HeaderMap::new()).await }
        });
        registry_testkit::wait_until(
            std::time::Duration::from_secs(10),
            "a fourth caller joined",
            || async { (c.shared.get() == 3).then_some(()) },
        )
        .await;
        assert_eq!(c.upstream.get(), 1);
        // Everyone leaves: the flight is gone from the map, and the next caller sends anew.
        for t in callers.chain([fourth]) {
            t.abort();
            let _ = t.await;
        }
        assert_eq!(c.in_flight(), 0);
        held.abort();
    }
}
