//! The DNS listener: UDP and TCP on one port, each request handed to a
//! [`DnsHandler`]. Every input is bounded, so that a flood of queries costs
//! bounded work and cannot starve the process's HTTP API on the same runtime:
//!
//! - at most `max_in_flight` requests are being answered at once (UDP and TCP
//!   together); a UDP datagram that arrives past that is dropped at once (the
//!   client retries; answering it with an error would only feed the flood);
//! - a datagram is read into a 64 KiB buffer once and parsed once; a query
//!   longer than a DNS message can be is not read;
//! - at most `max_tcp_connections` TCP connections; each must send its next
//!   query within [`TCP_IDLE_TIMEOUT`] and take its answer within
//!   [`TCP_WRITE_TIMEOUT`], and answers one query at a time.
//!
//! hickory-server's own `Server` spawns a task for every datagram with no
//! bound and accepts TCP connections without a limit, which is why this
//! module runs the sockets itself; the request handling is hickory's
//! (`Request`, `RequestHandler`).
//!
//! Owns: sockets, bounds, shutdown. Must not touch: answers (`handler.rs`).

use crate::backend::DnsBackend;
use crate::handler::DnsHandler;
use hickory_server::net::xfer::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a TCP connection may sit without sending its next query.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP client has to take an answer (and to send the rest of a
/// query it started).
pub const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests answered at once, UDP and TCP together.
    pub max_in_flight: usize,
    /// TCP connections open at once.
    pub max_tcp_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 1024,
            max_tcp_connections: 256,
        }
    }
}

/// Binds UDP on `addr` and TCP on the same port (with port 0, the port UDP
/// got), then serves both until `shutdown`. Returns the bound address and the
/// two accept loops.
pub async fn serve<B: DnsBackend>(
    addr: SocketAddr,
    handler: Arc<DnsHandler<B>>,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let (udp, tcp) = bind_pair(addr).await?;
    let bound = udp.local_addr()?;
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let connections = Arc::new(Semaphore::new(limits.max_tcp_connections.max(1)));
    let tasks = vec![
        tokio::spawn(udp_loop(
            Arc::new(udp),
            handler.clone(),
            in_flight.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(tcp_loop(tcp, handler, in_flight, connections, shutdown)),
    ];
    Ok((bound, tasks))
}

/// UDP and TCP on one port. With port 0 the TCP port may be taken by
/// someone else: then both are tried again on another free port.
async fn bind_pair(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for DNS")))
}

async fn udp_loop<B: DnsBackend>(
    socket: Arc<UdpSocket>,
    handler: Arc<DnsHandler<B>>,
    in_flight: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65535];
    let mut dropped: u64 = 0;
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some
                    // systems; the socket itself is still good.
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        if src.port() == 0 {
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "DNS requests dropped: too many in flight");
            }
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        tokio::spawn(async move {
            if let Some(answer) = handler.answer_bytes(&query, src, Protocol::Udp).await {
                if let Err(e) = socket.send_to(&answer, src).await {
                    tracing::debug!(%src, error = %e, "DNS UDP send failed");
                }
            }
            drop(permit);
        });
    }
}

async fn tcp_loop<B: DnsBackend>(
    listener: TcpListener,
    handler: Arc<DnsHandler<B>>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, src) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    // Out of descriptors, most likely: give others a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%src, "DNS TCP connection refused: too many open");
            continue;
        };
        let (handler, in_flight, shutdown) = (handler.clone(), in_flight.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(stream, src, handler, in_flight) => {}
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Queries on one TCP connection, one at a time, until the client closes it,
/// idles past [`TCP_IDLE_TIMEOUT`] or breaks the framing.
async fn connection<B: DnsBackend>(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: Arc<DnsHandler<B>>,
    in_flight: Arc<Semaphore>,
) {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Ok(Ok(len)) if len >= 12 => usize::from(len),
            _ => return,
        };
        let mut query = vec![0u8; len];
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let answer = handler.answer_bytes(&query, src, Protocol::Tcp).await;
        drop(permit);
        let Some(answer) = answer else { continue };
        let Ok(alen) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&alen.to_be_bytes());
        out.extend_from_slice(&answer);
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
