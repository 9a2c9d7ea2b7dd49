//! Limits every process applies the same way: body sizes, blocking-query waits and the time
//! limit of each hop a forwarded request takes. One copy, used by the server, the agent and the
//! gateway; the tests at the bottom pin the rules once.
//!
//! A forwarded request nests: agent -> server -> gateway (hop 0) -> gateway (hop 1) -> server.
//! Each outer hop waits longer than the hop inside it, so the inner one always gives up first
//! and answers with its clear error instead of the outer one timing out blind.

use std::time::Duration;

/// Largest request body accepted anywhere (Consul's KV value limit, 512 KiB; catalog bodies are
/// far smaller). Larger bodies get `413` and nothing is stored.
pub const MAX_BODY: usize = 512 * 1024;
/// Blocking queries: Consul's default `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Blocking queries: Consul's largest `wait`; longer ones are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// The header that counts the gateway hops a request has taken.
pub const HOPS_HEADER: &str = "x-registry-hops";
/// A request that arrives at a gateway having taken this many hops is refused as a loop: the
/// normal path takes at most two (local gateway, remote gateway).
pub const MAX_HOPS: u32 = 3;

/// Where a forwarded request is on its way; each place has its own time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// An agent forwarding to a server (the outermost hop).
    Agent,
    /// A server forwarding `?dc=` to its gateway.
    Server,
    /// A gateway forwarding a request that has already taken `hops_taken` gateway hops.
    Gateway {
        /// Gateway hops before this one.
        hops_taken: u32,
    },
}

/// Extra time per gateway hop that may still follow.
const HOP_SLACK: Duration = Duration::from_secs(2);

impl Hop {
    /// (limit for an ordinary request, slack on top of a blocking query's wait + jitter).
    fn budgets(self) -> (Duration, Duration) {
        match self {
            Hop::Agent => (Duration::from_secs(30), Duration::from_secs(20)),
            Hop::Server => (Duration::from_secs(25), Duration::from_secs(15)),
            Hop::Gateway { hops_taken } => {
                let slack = HOP_SLACK * MAX_HOPS.saturating_sub(hops_taken);
                (
                    Duration::from_secs(15) + slack,
                    Duration::from_secs(5) + slack,
                )
            }
        }
    }
}

/// The wait of a blocking query with query string `query` (capped at [`MAX_WAIT`]), or `None`
/// when it is not one. As in Consul, a query blocks only with `?index=` above 0; `?index=0`
/// (what clients send before they know an index) answers at once.
pub fn blocking_wait(query: Option<&str>) -> Option<Duration> {
    let mut blocking = false;
    let mut wait = DEFAULT_WAIT;
    for (k, v) in form_urlencoded::parse(query?.as_bytes()) {
        match k.as_ref() {
            "index" => blocking = v.parse::<u64>().is_ok_and(|i| i > 0),
            "wait" => {
                if let Ok(w) = crate::duration::parse(&v) {
                    wait = w;
                }
            }
            _ => {}
        }
    }
    blocking.then(|| wait.min(MAX_WAIT))
}

/// The time limit of one hop of a forwarded request with query string `query`: a blocking query
/// may take its whole wait plus Consul's jitter of up to wait/16, plus the hop's slack;
/// anything else gets the hop's ordinary limit.
pub fn forward_timeout(query: Option<&str>, hop: Hop) -> Duration {
    let (ordinary, slack) = hop.budgets();
    match blocking_wait(query) {
        Some(wait) => wait + wait / 16 + slack,
        None => ordinary,
    }
}

/// The query string of a `path?query`, if any.
pub fn query_of(path_and_query: &str) -> Option<&str> {
    path_and_query.split_once('?').map(|(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_index_above_zero_blocks() {
        assert_eq!(blocking_wait(None), None);
        assert_eq!(blocking_wait(Some("recurse")), None);
        assert_eq!(blocking_wait(Some("index=0&wait=10s")), None);
        assert_eq!(blocking_wait(Some("index=&wait=10s")), None);
        assert_eq!(blocking_wait(Some("index=x")), None);
        assert_eq!(
            blocking_wait(Some("index=5&wait=10s")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(blocking_wait(Some("index=5")), Some(DEFAULT_WAIT));
        assert_eq!(blocking_wait(Some("index=5&wait=1h")), Some(MAX_WAIT));
    }

    #[test]
    fn every_outer_hop_waits_longer_than_the_one_inside_it() {
        let path = [
            Hop::Agent,
            Hop::Server,
            Hop::Gateway { hops_taken: 0 },
            Hop::Gateway { hops_taken: 1 },
            Hop::Gateway { hops_taken: 2 },
        ];
        for query in [
            None,
            Some("index=0"),
            Some("index=7&wait=30s"),
            Some("index=7"),
        ] {
            for pair in path.windows(2) {
                assert!(
                    forward_timeout(query, pair[0]) > forward_timeout(query, pair[1]),
                    "{query:?}: {:?} must outwait {:?}",
                    pair[0],
                    pair[1]
                );
            }
        }
        assert_eq!(forward_timeout(None, Hop::Agent), Duration::from_secs(30));
        assert_eq!(
            forward_timeout(Some("index=7&wait=32s"), Hop::Agent),
            Duration::from_secs(32 + 2 + 20)
        );
        assert_eq!(
            forward_timeout(Some("index=0&wait=32s"), Hop::Server),
            Duration::from_secs(25)
        );
    }
}
