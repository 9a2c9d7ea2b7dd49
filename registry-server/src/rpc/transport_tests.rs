//! Tests of both transports (TCP and in-memory) against the one [`Transport`] contract.

use super::mem::{MemNetwork, MemTransport};
use super::tcp::{TcpTransport, HANDSHAKE_TIMEOUT, MAX_FRAME, PREAMBLE_MAGIC};
use super::transport::{lock, Deliver, Transport};
use super::RpcMessage;
use crate::rpc::{Hello, PeerInfo};
use raft::eraftpb::Message;
use registry_api::auth::{self, SharedKey, NONCE_LEN};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records what a node receives.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(String, RpcMessage)>>>);

impl Inbox {
    fn deliver(&self) -> Deliver {
        let inbox = self.clone();
        Arc::new(move |from, msg| lock(&inbox.0).push((from, msg)))
    }
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
    fn has(&self, from: &str, msg: &RpcMessage) -> bool {
        lock(&self.0).iter().any(|(f, m)| f == from && m == msg)
    }
    fn take(&self) -> Vec<(String, RpcMessage)> {
        std::mem::take(&mut *lock(&self.0))
    }
}

fn raft(term: u64) -> RpcMessage {
    let mut m = Message::default();
    m.set_from(1);
    m.set_to(2);
    m.set_term(term);
    RpcMessage::Raft(m)
}

fn hello(node: &str) -> RpcMessage {
    RpcMessage::Hello(Hello {
        from: PeerInfo {
            id: 7,
            node: node.into(),
            rpc_addr: format!("{node}:8300"),
            http_addr: format!("{node}:8500"),
            datacenter: "dc1".into(),
        },
        in_cluster: false,
        known: vec![],
        leader: 0,
        reply: false,
    })
}

/// Polls `cond` every 10 ms for up to 5 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn tcp_node(
    listen: &str,
    advertise: &str,
    inbox: &Inbox,
    shutdown: &CancellationToken,
) -> (Arc<TcpTransport>, String, JoinHandle<()>) {
    keyed_node(listen, advertise, None, inbox, shutdown).await
}

async fn keyed_node(
    listen: &str,
    advertise: &str,
    key: Option<&SharedKey>,
    inbox: &Inbox,
    shutdown: &CancellationToken,
) -> (Arc<TcpTransport>, String, JoinHandle<()>) {
    let (transport, bound, accept) = TcpTransport::bind(
        listen.parse().unwrap(),
        advertise.to_owned(),
        key.cloned(),
        None,
        inbox.deliver(),
        Handle::current(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (transport, bound.to_string(), accept)
}

/// Cancels and checks that every task of the transports really ends.
async fn stop(shutdown: CancellationToken, accept_loops: Vec<JoinHandle<()>>) {
    shutdown.cancel();
    for accept in accept_loops {
        let joined = tokio::time::timeout(Duration::from_secs(5), accept).await;
        assert!(matches!(joined, Ok(Ok(()))), "transport did not stop");
    }
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_exchanges_messages_both_ways_in_order() {
    let shutdown = CancellationToken::new();
    let (a_inbox, b_inbox) = (Inbox::default(), Inbox::default());
    let (a, a_addr, a_loop) = tcp_node("127.0.0.1:0", "node-a:8300", &a_inbox, &shutdown).await;
    let (b, b_addr, b_loop) = tcp_node("127.0.0.1:0", "node-b:8300", &b_inbox, &shutdown).await;
    a.send(&b_addr, raft(3));
    a.send(&b_addr, hello("a"));
    b.send(&a_addr, hello("b"));
    b.send(&a_addr, raft(4));
    assert!(eventually(|| b_inbox.len() == 2 && a_inbox.len() == 2).await);
    let from_a = vec![
        ("node-a:8300".to_owned(), raft(3)),
        ("node-a:8300".to_owned(), hello("a")),
    ];
    let from_b = vec![
        ("node-b:8300".to_owned(), hello("b")),
        ("node-b:8300".to_owned(), raft(4)),
    ];
    assert_eq!(b_inbox.take(), from_a);
    assert_eq!(a_inbox.take(), from_b);
    stop(shutdown, vec![a_loop, b_loop]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_survives_garbage() {
    let shutdown = CancellationToken::new();
    let inbox = Inbox::default();
    let (_t, addr, accept) = tcp_node("127.0.0.1:0", "victim", &inbox, &shutdown).await;
    let garbage: [Vec<u8>; 3] = [
        [frame(b"evil"), frame(&[9, 9, 9])].concat(), // unknown tag
        [frame(b"evil"), u32::MAX.to_be_bytes().to_vec()].concat(), // oversized
        frame(&[0xff, 0xfe]),                         // preamble not UTF-8
    ];
    for bytes in garbage {
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        // The server must hang up on us.
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut [0u8; 1])).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection not closed: {read:?}"
        );
    }
    let (sender, _, sender_loop) =
        tcp_node("127.0.0.1:0", "honest", &Inbox::default(), &shutdown).await;
    sender.send(&addr, raft(1));
    assert!(eventually(|| inbox.has("honest", &raft(1))).await);
    assert_eq!(
        inbox.len(),
        1,
        "nothing from the garbage connections is delivered"
    );
    stop(shutdown, vec![accept, sender_loop]).await;
}

fn new_key() -> SharedKey {
    SharedKey::from_base64(&auth::generate_key()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_key_deliver_and_receive() {
    let shutdown = CancellationToken::new();
    let key = new_key();
    let (inbox, intruder_inbox) = (Inbox::default(), Inbox::default());
    let (v, victim, v_loop) =
        keyed_node("127.0.0.1:0", "victim", Some(&key), &inbox, &shutdown).await;
    let (friend, friend_addr, f_loop) = keyed_node(
        "127.0.0.1:0",
        "friend",
        Some(&key),
        &Inbox::default(),
        &shutdown,
    )
    .await;
    let (other_key, _, o_loop) = keyed_node(
        "127.0.0.1:0",
        "other-key",
        Some(&new_key()),
        &intruder_inbox,
        &shutdown,
    )
    .await;
    let (no_key, no_key_addr, n_loop) =
        keyed_node("127.0.0.1:0", "no-key", None, &intruder_inbox, &shutdown).await;
    // A forged heartbeat with a high term would depose the leader if it were stepped.
    other_key.send(&victim, raft(99));
    no_key.send(&victim, raft(98));
    friend.send(&victim, raft(1));
    assert!(eventually(|| inbox.has("friend", &raft(1))).await);
    // The keyed node does not talk to a listener that cannot prove the key either.
    friend.send(&no_key_addr, raft(2));
    // Both intruders have tried (and been refused) at least twice by now.
    assert!(
        eventually(|| {
            other_key.send(&victim, raft(99));
            no_key.send(&victim, raft(98));
            v.refused_handshakes() >= 4
        })
        .await,
        "the intruders' handshakes were not refused"
    );
    friend.send(&victim, raft(3));
    assert!(eventually(|| inbox.has("friend", &raft(3))).await);
    assert_eq!(
        inbox.take(),
        vec![
            ("friend".to_owned(), raft(1)),
            ("friend".to_owned(), raft(3))
        ]
    );
    assert_eq!(intruder_inbox.len(), 0, "a keyless listener got a message");
    let _ = friend_addr;
    stop(shutdown, vec![v_loop, f_loop, o_loop, n_loop]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_stalling_in_the_handshake_is_cut_off() {
    let shutdown = CancellationToken::new();
    let key = new_key();
    let (_t, addr, accept) = keyed_node(
        "127.0.0.1:0",
        "victim",
        Some(&key),
        &Inbox::default(),
        &shutdown,
    )
    .await;
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    // A valid-looking preamble, then silence instead of the proof.
    let mut preamble = PREAMBLE_MAGIC.to_vec();
    preamble.extend_from_slice(&[7u8; NONCE_LEN]);
    preamble.extend_from_slice(b"stranger");
    raw.write_all(&frame(&preamble)).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the listener's challenge
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a stalled handshake was not cut");
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    stop(shutdown, vec![accept]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_frame_cap_arrive_in_chunks() {
    let shutdown = CancellationToken::new();
    let key = new_key();
    let inbox = Inbox::default();
    let (_b, b_addr, b_loop) = keyed_node("127.0.0.1:0", "b", Some(&key), &inbox, &shutdown).await;
    let (a, _, a_loop) =
        keyed_node("127.0.0.1:0", "a", Some(&key), &Inbox::default(), &shutdown).await;
    // A snapshot twice the frame cap, then an ordinary message on the same connection.
    let mut big = Message::default();
    big.set_to(2);
    big.mut_snapshot()
        .set_data(vec![0x5a; 2 * MAX_FRAME + 123].into());
    let big = RpcMessage::Raft(big);
    a.send(&b_addr, big.clone());
    a.send(&b_addr, raft(5));
    assert!(eventually(|| inbox.len() == 2).await, "not delivered");
    assert_eq!(
        inbox.take(),
        vec![("a".to_owned(), big), ("a".to_owned(), raft(5))]
    );
    stop(shutdown, vec![a_loop, b_loop]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_send_to_dead_address_then_peer_comes_up() {
    let shutdown = CancellationToken::new();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = reserved.local_addr().unwrap().to_string();
    drop(reserved);
    let (a, _, a_loop) = tcp_node("127.0.0.1:0", "node-a", &Inbox::default(), &shutdown).await;
    let started = Instant::now();
    for term in 0..10_000 {
        a.send(&dead, raft(term)); // more than the queue holds
    }
    assert!(started.elapsed() < Duration::from_secs(1), "send blocked");

    let b_inbox = Inbox::default();
    let (_b, b_addr, b_loop) = tcp_node(&dead, "node-b", &b_inbox, &shutdown).await;
    assert_eq!(b_addr, dead);
    let probe = raft(1_000_000);
    assert!(
        eventually(|| {
            a.send(&dead, probe.clone());
            b_inbox.has("node-a", &probe)
        })
        .await
    );
    stop(shutdown, vec![a_loop, b_loop]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_from_plain_thread_works_for_both_transports() {
    let shutdown = CancellationToken::new();
    let (b_inbox, m_inbox) = (Inbox::default(), Inbox::default());
    let (a, _, a_loop) = tcp_node("127.0.0.1:0", "node-a", &Inbox::default(), &shutdown).await;
    let (_b, b_addr, b_loop) = tcp_node("127.0.0.1:0", "node-b", &b_inbox, &shutdown).await;
    let net = MemNetwork::new(Handle::current());
    let (x, _y) = (
        net.register("x", m_inbox.deliver()),
        net.register("y", m_inbox.deliver()),
    );
    // A delayed message needs the stored runtime handle too.
    net.set_delay("x", "y", Duration::from_millis(20));
    let raft_thread = std::thread::spawn(move || {
        let outside = Handle::try_current().is_err();
        a.send(&b_addr, raft(7));
        x.send("y", raft(8));
        outside
    });
    assert!(raft_thread.join().unwrap(), "must run outside the runtime");
    assert!(eventually(|| b_inbox.has("node-a", &raft(7)) && m_inbox.has("x", &raft(8))).await);
    stop(shutdown, vec![a_loop, b_loop]).await;
}

/// Three nodes "a", "b", "c" on a fresh network.
fn mem_cluster() -> (MemNetwork, Vec<Arc<MemTransport>>, Vec<Inbox>) {
    let net = MemNetwork::new(Handle::current());
    let inboxes = vec![Inbox::default(), Inbox::default(), Inbox::default()];
    let nodes = ["a", "b", "c"]
        .iter()
        .zip(&inboxes)
        .map(|(addr, inbox)| net.register(addr, inbox.deliver()))
        .collect();
    (net, nodes, inboxes)
}

#[tokio::test]
async fn mem_delivers_and_cuts_block_both_or_one_way() {
    let (net, n, inbox) = mem_cluster();
    n[0].send("b", raft(1));
    assert_eq!(inbox[1].take(), vec![("a".to_owned(), raft(1))]);
    net.cut("a", "b");
    n[0].send("b", raft(2));
    n[1].send("a", raft(2));
    n[0].send("c", raft(2));
    assert_eq!((inbox[0].len(), inbox[1].len(), inbox[2].len()), (0, 0, 1));
    assert_eq!(net.stats(), (2, 2));

    net.cut_one_way("c", "a");
    n[2].send("a", raft(3));
    n[0].send("c", raft(4));
    assert!(inbox[0].take().is_empty(), "c -> a is cut");
    assert!(inbox[2].has("a", &raft(4)), "a -> c still works");
}

#[tokio::test]
async fn mem_isolate_then_heal() {
    let (net, n, inbox) = mem_cluster();
    net.isolate("a");
    let d = net.register("d", Inbox::default().deliver()); // a future node is cut off too
    for (to, from) in [("b", &n[0]), ("a", &n[1]), ("a", &n[2]), ("a", &d)] {
        from.send(to, raft(1));
    }
    assert_eq!((inbox[0].len(), inbox[1].len()), (0, 0));
    n[1].send("c", raft(1));
    assert_eq!(inbox[2].len(), 1, "the others still talk");

    net.cut("b", "c");
    net.heal("a");
    n[0].send("b", raft(2));
    n[1].send("a", raft(2));
    n[1].send("c", raft(2));
    assert!(inbox[1].has("a", &raft(2)) && inbox[0].has("b", &raft(2)));
    assert!(
        !inbox[2].has("b", &raft(2)),
        "heal(a) leaves other faults alone"
    );
    net.heal_all();
    n[1].send("c", raft(3));
    assert!(inbox[2].has("b", &raft(3)));
}

#[tokio::test]
async fn mem_drop_rate() {
    let (net, n, inbox) = mem_cluster();
    net.set_drop_rate("*", "b", 1.0);
    for term in 0..50 {
        n[0].send("b", raft(term));
    }
    assert_eq!((inbox[1].len(), net.stats()), (0, (0, 50)));
    net.set_drop_rate("*", "b", 0.5);
    for term in 0..1000 {
        n[0].send("b", raft(term));
    }
    let got = inbox[1].take().len();
    assert!((300..700).contains(&got), "p = 0.5 delivered {got} of 1000");
    net.heal_all();
    n[0].send("b", raft(1));
    assert_eq!(inbox[1].len(), 1);
}

#[tokio::test]
async fn mem_delay_delays() {
    let (net, n, inbox) = mem_cluster();
    let delay = Duration::from_millis(300);
    net.set_delay("a", "*", delay);
    let sent = Instant::now();
    n[0].send("b", raft(1));
    n[1].send("a", raft(1));
    assert_eq!(inbox[1].len(), 0, "delayed message arrived at once");
    assert_eq!(inbox[0].len(), 1, "the other direction is not delayed");
    assert!(eventually(|| inbox[1].has("a", &raft(1))).await);
    assert!(sent.elapsed() >= delay - Duration::from_millis(10));
}

#[tokio::test]
async fn mem_unregister_and_restart() {
    let (net, n, inbox) = mem_cluster();
    net.unregister("b");
    n[0].send("b", raft(1));
    n[1].send("a", raft(1)); // the killed node's leftover sends vanish
    assert_eq!((inbox[0].len(), inbox[1].len()), (0, 0));
    let restarted = Inbox::default();
    let b2 = net.register("b", restarted.deliver());
    n[0].send("b", raft(2));
    b2.send("a", raft(2));
    n[1].send("a", raft(3)); // the old incarnation stays dead
    assert_eq!(restarted.take(), vec![("a".to_owned(), raft(2))]);
    assert_eq!(inbox[0].take(), vec![("b".to_owned(), raft(2))]);
    assert_eq!(net.stats(), (2, 3));
}

/// Reads one `[len][bytes]` frame from a raw test connection.
async fn read_raw_frame(raw: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut buf).await.unwrap();
    buf
}

/// Review finding: the handshake alone authenticated a connection, so anyone
/// who could write into it afterwards (or relay a handshake) could inject
/// frames. Every frame now carries a MAC under a per-connection key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_without_its_mac_is_refused_after_a_good_handshake() {
    let shutdown = CancellationToken::new();
    let key = new_key();
    let inbox = Inbox::default();
    let (_v, addr, accept) =
        keyed_node("127.0.0.1:0", "victim", Some(&key), &inbox, &shutdown).await;
    for tamper in [false, true] {
        // A dialer that holds the key, written by hand.
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        let dialer_nonce = auth::nonce();
        let me = b"hand";
        let mut preamble = PREAMBLE_MAGIC.to_vec();
        preamble.extend_from_slice(&dialer_nonce);
        preamble.extend_from_slice(me);
        raw.write_all(&frame(&preamble)).await.unwrap();
        let answer = read_raw_frame(&mut raw).await;
        let listener_nonce = &answer[..NONCE_LEN];
        let proof = key.handshake_mac(b"dialer", &dialer_nonce, listener_nonce, me);
        raw.write_all(&frame(&proof)).await.unwrap();
        let mut session = key.session_key(&dialer_nonce, listener_nonce, me);
        let mut body = super::encode(&raft(if tamper { 66 } else { 7 }));
        let tag = session.seal(&body);
        body.extend_from_slice(tag.as_ref());
        if tamper {
            // The message changed after it was sealed (an injected or altered frame).
            body[1] ^= 0xff;
        }
        raw.write_all(&frame(&body)).await.unwrap();
        if tamper {
            let closed =
                tokio::time::timeout(Duration::from_secs(5), raw.read(&mut [0u8; 1])).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "not closed: {closed:?}"
            );
        } else {
            assert!(
                eventually(|| inbox.has("hand", &raft(7))).await,
                "sealed frame not delivered"
            );
        }
    }
    assert_eq!(inbox.take(), vec![("hand".to_owned(), raft(7))]);
    stop(shutdown, vec![accept]).await;
}
