//! The one way the processes turn a host name into addresses: a pure-Rust stub resolver
//! (hickory) that reads `/etc/resolv.conf` and `/etc/hosts` itself.
//!
//! Why not the C library: the binaries are static glibc, and a static glibc cannot load the
//! NSS modules its `getaddrinfo` needs, so in the lab's `FROM scratch` images every name
//! (`dc1-server1:8300`) failed to resolve and every address had to be a fixed IP. hickory only
//! needs the two files, which Docker writes into every container (its embedded DNS server is
//! `127.0.0.11` there), so service names work in any image.
//!
//! Used by every dial of a `HOST:PORT`: the servers' Raft/RPC connections
//! (`registry-server/src/rpc/tcp.rs`), and every HTTP client made by
//! [`crate::tls::client_builder`] (the agent's server pool, the gateways' `--server` and
//! `--retry-join-wan`, the servers' forwarding to the leader and to the gateways), through
//! [`HttpResolver`].
//!
//! Choices:
//! - An IP literal never reaches the resolver: no DNS query, no file read, no new failure mode
//!   for the addresses that worked before.
//! - Nothing is cached: the files are read and a fresh resolver is made for each lookup. Lookups
//!   happen once per new connection (Raft keeps its connections, reqwest pools its own), and a
//!   cache would keep a container's old address for Docker's 600 s TTL after it restarted with a
//!   new one, which is exactly when the name matters.
//! - A name that does not resolve (yet) is an ordinary connection error: every caller already
//!   retries its dial (Raft's writer with backoff, the agent's pool on the next request, the
//!   gateways' gossip every round), so a container that starts before its peer's name exists
//!   just retries. [`resolve_with_retry`] is for the one-shot lookups at start.

use hickory_resolver::config::{ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Hosts, Resolver};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one query to a name server may take; Docker's embedded server answers in
/// microseconds, and a name that is slow to resolve is retried by the caller anyway.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts of [`resolve_with_retry`].
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Why a name gave no address. The texts name the host (never anything secret).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not `HOST:PORT` (or `[IPv6]:PORT`) with a port in 1-65535.
    #[error("{0:?} is not HOST:PORT")]
    BadAddress(String),
    /// The resolver found no address for the name (or failed to ask).
    #[error("cannot resolve {host:?}: {reason}")]
    NotFound {
        /// The name looked up.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

impl From<ResolveError> for std::io::Error {
    fn from(e: ResolveError) -> Self {
        let kind = match e {
            ResolveError::BadAddress(_) => std::io::ErrorKind::InvalidInput,
            ResolveError::NotFound { .. } => std::io::ErrorKind::NotFound,
        };
        std::io::Error::new(kind, e)
    }
}

/// Where the resolver reads its configuration: the system's files, or others in tests.
#[derive(Clone, Debug)]
pub struct NameSource {
    /// `resolv.conf`: the name servers, search domains and options.
    pub resolv_conf: PathBuf,
    /// `hosts`: static names, looked up before any name server.
    pub hosts: PathBuf,
}

impl Default for NameSource {
    fn default() -> Self {
        Self {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
        }
    }
}

impl NameSource {
    /// A resolver made from the files as they are now. A missing or unreadable
    /// `resolv.conf` leaves only the hosts file (a machine with no DNS still knows
    /// `localhost`); a missing hosts file leaves only DNS.
    fn resolver(&self) -> Result<Resolver<TokioRuntimeProvider>, String> {
        let parsed = std::fs::read(&self.resolv_conf)
            .ok()
            .and_then(|text| hickory_resolver::system_conf::parse_resolv_conf(text).ok());
        let (config, mut options) = parsed.unwrap_or_else(|| {
            (
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                Default::default(),
            )
        });
        options.timeout = QUERY_TIMEOUT;
        // Read below from `self.hosts`, not from the fixed system path.
        options.use_hosts_file = ResolveHosts::Never;
        options.cache_size = 0;
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        let mut resolver = builder.build().map_err(|e| e.to_string())?;
        let mut hosts = Hosts::default();
        if let Ok(file) = std::fs::File::open(&self.hosts) {
            // A line it cannot read leaves the lines before it; DNS still answers the rest.
            let _ = hosts.read_hosts_conf(file);
        }
        resolver.set_hosts(Arc::new(hosts));
        Ok(resolver)
    }

    /// The addresses of `host` (a name or an IP literal, IPv6 without brackets) with `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        #[cfg(test)]
        tests::LOOKUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let not_found = |reason: String| ResolveError::NotFound {
            host: host.to_string(),
            reason,
        };
        let answer = self
            .resolver()
            .map_err(not_found)?
            .lookup_ip(host)
            .await
            .map_err(|e| not_found(e.to_string()))?;
        let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(not_found("no address".into()));
        }
        Ok(addrs)
    }
}

/// Splits `HOST:PORT` (`[IPv6]:PORT` too) into host (without brackets) and port.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), ResolveError> {
    let bad = || ResolveError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    Ok((host, port))
}

/// The addresses of `HOST:PORT`, from the system's files (see the module docs).
pub async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ResolveError> {
    let (host, port) = split_host_port(addr)?;
    NameSource::default().lookup(host, port).await
}

/// [`resolve`], retried every half second for up to `limit` while the name does not resolve:
/// for the lookups a process makes once at start, when a peer's container may not exist yet.
pub async fn resolve_with_retry(
    addr: &str,
    limit: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    retry(limit, || resolve(addr)).await
}

/// The address a node registers itself with (`--advertise`): an IP literal as is; a name
/// (the container's own hostname, say) resolved once at start, IPv4 first, retried for up to
/// `limit` while it does not resolve. The catalog and DNS answers need an address, as Consul's
/// `advertise_addr` is one.
pub async fn advertise_ip(host: &str, limit: Duration) -> Result<IpAddr, ResolveError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let source = NameSource::default();
    let addrs = retry(limit, || source.lookup(host, 1)).await?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| ResolveError::NotFound {
            host: host.to_string(),
            reason: "no address".into(),
        })
}

/// Calls `attempt` until it succeeds or `limit` has passed (then its last error). A bad
/// address is not retried: it will not get better.
async fn retry<F, Fut>(limit: Duration, mut attempt: F) -> Result<Vec<SocketAddr>, ResolveError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<SocketAddr>, ResolveError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match attempt().await {
            Ok(addrs) => return Ok(addrs),
            Err(e @ ResolveError::BadAddress(_)) => return Err(e),
            Err(e) if tokio::time::Instant::now() + RETRY_PAUSE > deadline => return Err(e),
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// Opens a TCP connection to `HOST:PORT`: resolves it, then tries each address in turn within
/// `timeout` each; the last error if none connects.
pub async fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for to in resolve(addr).await? {
        match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect to {to} timed out"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

/// reqwest's resolver, set by [`crate::tls::client_builder`] on every HTTP client. reqwest asks
/// only for names (hyper connects to IP literals directly) and fills in the URL's port.
#[derive(Clone, Debug, Default)]
pub struct HttpResolver;

impl reqwest::dns::Resolve for HttpResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = NameSource::default().lookup(&host, 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Lookups that went to the resolver (not the IP fast path), for the tests below.
    pub(super) static LOOKUPS: AtomicU64 = AtomicU64::new(0);

    /// A resolv.conf with no name server and a hosts file the test writes.
    fn source(dir: &tempfile::TempDir, hosts: &str) -> NameSource {
        let s = NameSource {
            resolv_conf: dir.path().join("resolv.conf"),
            hosts: dir.path().join("hosts"),
        };
        std::fs::write(&s.resolv_conf, "options ndots:0\n").unwrap();
        std::fs::write(&s.hosts, hosts).unwrap();
        s
    }

    #[test]
    fn host_and_port_are_split() {
        assert_eq!(
            split_host_port("dc1-server1:8300").unwrap(),
            ("dc1-server1", 8300)
        );
        assert_eq!(
            split_host_port("10.0.0.1:8300").unwrap(),
            ("10.0.0.1", 8300)
        );
        assert_eq!(split_host_port("[::1]:8300").unwrap(), ("::1", 8300));
        for bad in [
            "dc1-server1",
            "host:0",
            "host:x",
            ":8300",
            "::1:8300",
            "[::1:8300",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn ip_literals_never_reach_the_resolver() {
        let dir = tempfile::tempdir().unwrap();
        // No hosts file and no name server: only the fast path can answer.
        let s = NameSource {
            resolv_conf: dir.path().join("missing"),
            hosts: dir.path().join("missing"),
        };
        assert!(s.lookup("dc1-server1", 8300).await.is_err());
        assert_eq!(
            s.lookup("10.1.2.3", 8300).await.unwrap(),
            vec!["10.1.2.3:8300".parse().unwrap()]
        );
        assert_eq!(
            s.lookup("::1", 8300).await.unwrap(),
            vec!["[::1]:8300".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_name_resolves_through_the_hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(&dir, "127.0.0.1 localhost\n10.81.1.7 dc1-server1\n");
        assert_eq!(
            s.lookup("dc1-server1", 8300).await.unwrap(),
            vec!["10.81.1.7:8300".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_system_files() {
        let addrs = resolve("localhost:8500").await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8500),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn an_unknown_name_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(&dir, "127.0.0.1 localhost\n");
        let e = s.lookup("not-there", 8300).await.unwrap_err();
        assert!(matches!(e, ResolveError::NotFound { .. }), "{e}");
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }

    /// A peer whose name appears only after the first attempts (a container that starts
    /// later): the retry finds it once it is there.
    #[tokio::test]
    async fn a_name_that_appears_later_is_found_by_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(&dir, "127.0.0.1 localhost\n");
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let found = retry(Duration::from_secs(10), || {
            // The name is added after the second failed attempt.
            if attempts.fetch_add(1, Ordering::SeqCst) == 2 {
                std::fs::write(&s.hosts, "127.0.0.1 localhost\n10.9.8.7 late-peer\n").unwrap();
            }
            let s = s.clone();
            async move { s.lookup("late-peer", 8300).await }
        })
        .await
        .unwrap();
        assert_eq!(found, vec!["10.9.8.7:8300".parse().unwrap()]);
        assert!(attempts.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn a_name_that_never_appears_gives_the_error_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(&dir, "127.0.0.1 localhost\n");
        let e = retry(Duration::from_millis(1200), || {
            let s = s.clone();
            async move { s.lookup("never-there", 8300).await }
        })
        .await
        .unwrap_err();
        assert!(matches!(e, ResolveError::NotFound { .. }));
        // A bad address is refused at once, not retried.
        let start = std::time::Instant::now();
        assert!(resolve_with_retry("no-port", Duration::from_secs(30))
            .await
            .is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn connect_and_http_clients_dial_names_through_this_resolver() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let before = LOOKUPS.load(Ordering::Relaxed);
        let stream = connect(&format!("localhost:{port}"), Duration::from_secs(2)).await;
        assert!(stream.is_ok(), "{stream:?}");
        let client = crate::tls::client_builder(None).build().unwrap();
        let body = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        // Both the dial and the HTTP client went through the resolver.
        assert!(LOOKUPS.load(Ordering::Relaxed) >= before + 2);
    }
}
