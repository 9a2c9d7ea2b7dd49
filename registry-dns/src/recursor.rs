//! Forwarding names outside the domain to `--recursors`, as Consul's
//! `recursors` setting does: the query goes to each recursor in turn (over
//! the protocol it came in on) until one answers, each within
//! [`RECURSOR_TIMEOUT`]. The recursor's reply is passed back as it is, with
//! the client's message id. Upstream queries carry a fresh random id and go
//! out from a fresh socket, so a forged reply must guess both.
//!
//! Owns: talking to recursors. Must not touch: what is in the domain.

use hickory_server::net::xfer::Protocol;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one recursor has to answer.
pub const RECURSOR_TIMEOUT: Duration = Duration::from_secs(2);

/// The recursors, tried in order.
#[derive(Clone, Debug, Default)]
pub struct Recursors {
    /// Their addresses.
    addrs: Vec<SocketAddr>,
}

/// Why a `--recursors` entry was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid recursor {0:?}: expected an IP address, optionally with :port")]
pub struct RecursorError(pub String);

impl Recursors {
    /// Recursors from their spelling: `IP` (port 53) or `IP:port`
    /// (`[v6]:port` for IPv6).
    pub fn parse(list: &[String]) -> Result<Recursors, RecursorError> {
        let addrs = list
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| RecursorError(s.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Recursors { addrs })
    }

    /// Whether any recursor is configured.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The recursors' addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first recursor's reply to `query` (a whole DNS message), with the
    /// client's id, or `None` when none answered in time.
    pub async fn forward(&self, query: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let client_id = [query[0], query[1]];
        for addr in &self.addrs {
            let id: u16 = rand::random();
            let mut upstream = query.to_vec();
            upstream[..2].copy_from_slice(&id.to_be_bytes());
            let reply = match protocol {
                Protocol::Udp => {
                    tokio::time::timeout(RECURSOR_TIMEOUT, udp(*addr, &upstream)).await
                }
                _ => tokio::time::timeout(RECURSOR_TIMEOUT, tcp(*addr, &upstream)).await,
            };
            match reply {
                Ok(Ok(mut reply)) if reply.len() >= 12 && reply[..2] == id.to_be_bytes() => {
                    reply[..2].copy_from_slice(&client_id);
                    // RA: to the client, this server recursed.
                    reply[3] |= 0x80;
                    return Some(reply);
                }
                Ok(Ok(_)) => {
                    tracing::debug!(recursor = %addr, "recursor sent a reply that is not for our query")
                }
                Ok(Err(e)) => tracing::debug!(recursor = %addr, error = %e, "recursor failed"),
                Err(_) => tracing::debug!(recursor = %addr, "recursor timed out"),
            }
        }
        None
    }
}

/// One UDP exchange from a fresh socket connected to `addr` (so only its
/// datagrams are read).
async fn udp(addr: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A datagram that is not a reply to this query is skipped, not taken.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One TCP exchange (RFC 1035 §4.2.2: each message behind its 2-byte length).
async fn tcp(addr: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursors_are_ips_with_an_optional_port() {
        let r = Recursors::parse(&["8.8.8.8".into(), "127.0.0.1:5353".into(), "[::1]:53".into()])
            .unwrap();
        assert_eq!(
            r.addrs(),
            &[
                "8.8.8.8:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(Recursors::parse(&["dns.example.com".into()]).is_err());
        assert!(Recursors::parse(&[]).unwrap().is_empty());
    }
}
