//! DNS queries for tests: through hickory's client (a real resolver client,
//! over UDP and TCP), and raw datagrams for what a client library would never
//! send. Test code: panics are its failures.

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// How long any one query may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `name` (made absolute) as a DNS name.
pub fn name(name: &str) -> Name {
    let mut n = Name::from_str(name).unwrap();
    n.set_fqdn(true);
    n
}

/// Asks `server` for `qname`/`rtype` over UDP with hickory's client.
pub async fn udp(server: SocketAddr, qname: &str, rtype: RecordType) -> Message {
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(TIMEOUT))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    let bg = tokio::spawn(bg);
    let resp = client.query(name(qname), DNSClass::IN, rtype).await;
    bg.abort();
    resp.unwrap_or_else(|e| panic!("UDP query {qname} {rtype}: {e}"))
        .into_message()
}

/// Asks `server` for `qname`/`rtype` over TCP with hickory's client.
pub async fn tcp(server: SocketAddr, qname: &str, rtype: RecordType) -> Message {
    let (stream, sender) =
        TcpClientStream::new(server, None, Some(TIMEOUT), TokioRuntimeProvider::default());
    let stream = stream
        .await
        .unwrap_or_else(|e| panic!("TCP connect {server}: {e}"));
    let (mut client, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, sender, TIMEOUT);
    let bg = tokio::spawn(bg);
    let resp = client.query(name(qname), DNSClass::IN, rtype).await;
    bg.abort();
    resp.unwrap_or_else(|e| panic!("TCP query {qname} {rtype}: {e}"))
        .into_message()
}

/// A query message's bytes, with an EDNS0 OPT record offering `edns`
/// bytes when given.
pub fn query_bytes(qname: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.op_code = OpCode::Query;
    m.metadata.message_type = MessageType::Query;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Sends `bytes` to `server` in one datagram and returns the reply, or
/// `None` if none came within a second.
pub async fn raw_udp(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket.send(bytes).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Sends `bytes` to `server` over a fresh TCP connection (behind their
/// length) and returns the reply, or `None` if the server closed the
/// connection or sent nothing within [`TIMEOUT`].
pub async fn raw_tcp(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    stream.write_all(&out).await.ok()?;
    let read = async {
        let len = stream.read_u16().await.ok()?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(TIMEOUT, read).await.ok().flatten()
}
