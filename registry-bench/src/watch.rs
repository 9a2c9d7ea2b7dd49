//! The fan-out measurement's watchers: one bare HTTP/1.1 exchange per blocking query on a
//! kept-alive TCP connection.
//!
//! Why not reqwest, as everywhere else in the bench: the bench shares the machine's two cores
//! with the servers it measures, and at 10,000 watchers a full client (header maps, pool
//! bookkeeping, a timer per request) spends about as much CPU receiving the answers as the
//! servers spend sending them, which then shows up as server latency. This client does one
//! write and reads until the body is complete; it still checks the status and
//! `X-Consul-Index` of every answer.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// A watcher's connection, kept between runs; `None` after an error or an abort mid-answer.
pub type Slot = Arc<Mutex<Option<TcpStream>>>;

/// What one blocking query returned.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// `X-Consul-Index`, 0 if absent.
    pub index: u64,
    /// The body (only kept for error texts).
    pub body: Vec<u8>,
}

/// `GET path` on `addr` (`host:port`) over the connection in `slot`, opening one if needed.
/// The connection goes back into the slot only after a complete answer, so an aborted or
/// failed exchange never leaves half a response for the next run to misread.
///
/// Like any HTTP client with a pool, it retries once on a new connection when a kept-alive one
/// turns out to be closed (the server may close idle connections) before any byte of the answer.
pub async fn get(slot: &Slot, addr: &str, path: &str) -> Result<Answer, String> {
    get_from(slot, None, addr, path, None).await
}

/// [`get`], with a new connection's local end bound to `source` (port chosen by the kernel).
/// Loopback has a whole /8 of addresses, and each source address has its own ~28,000 ephemeral
/// ports: 100,000 watchers of 3 servers need more ports than one source address has.
/// `sent` counts requests written, so a caller can wait until every watcher has asked.
pub async fn get_from(
    slot: &Slot,
    source: Option<std::net::IpAddr>,
    addr: &str,
    path: &str,
    sent: Option<&std::sync::atomic::AtomicUsize>,
) -> Result<Answer, String> {
    let mut guard = slot.lock().await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    if let Some(mut stream) = guard.take() {
        match exchange(&mut stream, &request, sent).await {
            Ok(answer) => {
                *guard = Some(stream);
                return Ok(answer);
            }
            Err(Failure::Stale(_)) => {}
            Err(Failure::Broken(e)) => return Err(e),
        }
    }
    let mut stream = connect(source, addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let answer = exchange(&mut stream, &request, sent)
        .await
        .map_err(|f| match f {
            Failure::Stale(e) | Failure::Broken(e) => e,
        })?;
    *guard = Some(stream);
    Ok(answer)
}

async fn connect(source: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let to: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    bind_address_no_port(&socket)?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// `IP_BIND_ADDRESS_NO_PORT`: the port of a socket bound to `(address, 0)` is chosen at
/// `connect`, from the whole 4-tuple, instead of at `bind`, where the kernel looks for a port
/// no other socket of that address holds. With tens of thousands of sockets on one address
/// that search made each `bind` scan them all: opening 18,000 watchers kept the bench's two
/// threads in the kernel for tens of seconds, and the spread's writes waited behind it.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Awaits one watcher's exchange `answer` for at most `limit`: `Ok` for a 200 with an
/// index past `min` (the change it waited for), else what it came to instead.
pub async fn changed(
    answer: impl std::future::Future<Output = Result<Answer, String>>,
    limit: std::time::Duration,
    min: u64,
) -> Result<(), String> {
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(a)) if a.status == 200 && a.index > min => Ok(()),
        Ok(Ok(a)) if a.status != 200 => Err(format!(
            "{}: {}",
            a.status,
            String::from_utf8_lossy(&a.body).trim()
        )),
        Ok(Ok(a)) => Err(format!("returned without a change (index {})", a.index)),
        Ok(Err(e)) => Err(format!("transport: {e}")),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

/// Why an exchange failed.
enum Failure {
    /// Before any byte of the answer arrived: a closed kept-alive connection looks like this.
    Stale(String),
    /// Mid-answer or malformed.
    Broken(String),
}

async fn exchange(
    stream: &mut TcpStream,
    request: &str,
    sent: Option<&std::sync::atomic::AtomicUsize>,
) -> Result<Answer, Failure> {
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Err(Failure::Stale(format!("write: {e}")));
    }
    if let Some(sent) = sent {
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let mut buf = Vec::with_capacity(2048);
    if let Err(e) = read_more(stream, &mut buf).await {
        return Err(Failure::Stale(e));
    }
    read_response(stream, buf).await.map_err(Failure::Broken)
}

/// Reads one response with a `Content-Length` body (what the registry sends for JSON), of
/// which `buf` holds the first bytes.
async fn read_response(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Answer, String> {
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 << 10 {
            return Err("response head over 64 KiB".into());
        }
        read_more(stream, &mut buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let (mut length, mut index) = (None, 0);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("x-consul-index") {
            index = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unexpected Transfer-Encoding: {value}"));
        }
    }
    let length = length.ok_or("no Content-Length")?;
    while buf.len() < head_end + length {
        read_more(stream, &mut buf).await?;
    }
    if buf.len() > head_end + length {
        return Err("bytes past the end of the response".into());
    }
    Ok(Answer {
        status,
        index,
        body: buf.split_off(head_end),
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) => Err("connection closed mid-response".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_one_answer_and_keeps_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for i in 0..2 {
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /x"));
                let body = format!("[{i}]");
                // The head and the body in separate writes, as a slow server might send them.
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nX-Consul-Index: 7")
                    .await
                    .unwrap();
                s.write_all(b"\r\n\r\n").await.unwrap();
                s.write_all(body.as_bytes()).await.unwrap();
            }
        });
        let slot = Slot::default();
        for i in 0..2 {
            let a = get(&slot, &addr, "/x").await.unwrap();
            assert_eq!((a.status, a.index), (200, 7));
            assert_eq!(a.body, format!("[{i}]").into_bytes());
        }
        assert!(slot.lock().await.is_some());
        // The server is gone: an error, and the slot is left empty.
        assert!(get(&slot, &addr, "/x").await.is_err());
        assert!(slot.lock().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_kept_alive_connection_is_replaced_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            // The first connection answers once and is then closed, as an idle one would be;
            // the second answers again.
            for i in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Consul-Index: {i}\r\n\r\n{i}"
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let slot = Slot::default();
        assert_eq!(get(&slot, &addr, "/x").await.unwrap().index, 0);
        // The server has closed the first connection by now (its task moved on to accept).
        let second = get(&slot, &addr, "/x").await.unwrap();
        assert_eq!((second.index, second.body), (1, b"1".to_vec()));
    }
}
