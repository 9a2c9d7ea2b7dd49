//! The shared key (`--encrypt`, Consul's gossip `encrypt`): one secret per federation that
//! authenticates everything the registry's processes say to each other.
//!
//! Consul encrypts gossip with this key (AES-GCM in memberlist); here it *authenticates*:
//! confidentiality comes with TLS (a later issue). Two uses, one rule each:
//!
//! - **HTTP between processes** (agent -> server on the RPC port, agent heartbeats, server ->
//!   gateway, gateway -> gateway, gateway -> server): each request carries
//!   [`SIGNATURE_HEADER`] = `v1 <unix-ms> <nonce> <mac>`, an HMAC-SHA256 over the method, the
//!   path and query, the time, the nonce and the SHA-256 of the body. A receiver with the key
//!   accepts a request only with a valid MAC made within [`MAX_CLOCK_SKEW`] of its own clock.
//! - **Server RPC connections**: a handshake in which each side proves it holds the key by a MAC
//!   over both sides' fresh nonces ([`SharedKey::handshake_mac`]), so neither a recorded nor a
//!   forged handshake is accepted.
//!
//! What this does not give: secrecy (anyone on the path reads the traffic) and protection from a
//! replay of a captured request within the skew window. Both need TLS.
//!
//! The key never reaches a log: [`SharedKey`]'s `Debug` prints no key material.

use base64::Engine as _;
use ring::hmac;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-registry-signature";
/// How far a signed request's time may be from the receiver's clock. Servers, agents and
/// gateways must keep their clocks within this of each other (NTP does far better).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Key lengths accepted, in bytes: Consul's (AES-128, -192, -256); `keygen` makes 32.
const KEY_LENGTHS: [usize; 3] = [16, 24, 32];
/// Length of the random nonces, in bytes.
pub const NONCE_LEN: usize = 16;
/// Signature scheme version, the first word of the header.
const VERSION: &str = "v1";

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not base64.
    #[error("the encryption key is not valid base64")]
    NotBase64,
    /// Base64 of the wrong number of bytes.
    #[error("the encryption key must be 16, 24 or 32 bytes (base64-encoded); this one is {0}")]
    BadLength(usize),
}

/// Why a signed request was refused. The texts go back to the caller, so they name what is
/// wrong but never the expected MAC.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No signature header.
    #[error("missing {SIGNATURE_HEADER} header: this endpoint needs the cluster's shared key (--encrypt)")]
    Missing,
    /// A header that does not parse.
    #[error("malformed {SIGNATURE_HEADER} header")]
    Malformed,
    /// Signed too long ago or in the future.
    #[error("request signature is outside the allowed clock skew; check the clocks")]
    Expired,
    /// The MAC does not match: a different key, or a changed request.
    #[error("invalid request signature: wrong shared key (--encrypt)")]
    BadMac,
}

/// The shared key, ready to sign and verify.
#[derive(Clone)]
pub struct SharedKey {
    /// HMAC-SHA256 key.
    key: hmac::Key,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

/// Fresh random bytes from the operating system.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    // The system RNG failing is not something a server can run without.
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .unwrap_or_else(|_| panic!("the operating system's random number generator failed"));
    out
}

/// The key's text from `--encrypt`, or read from `--encrypt-file` (a file such as
/// `registry-server init` writes; clap keeps the two flags exclusive). Errors name the file,
/// never its contents.
pub fn key_text(
    encrypt: Option<String>,
    encrypt_file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    match (encrypt, encrypt_file) {
        (Some(text), _) => Ok(Some(text)),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("--encrypt-file {}: {e}", path.display())),
        (None, None) => Ok(None),
    }
}

/// A new key, base64-encoded: 32 random bytes (what `keygen` prints).
pub fn generate_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(random::<32>())
}

/// A fresh nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    random()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SharedKey {
    /// Reads a key as `--encrypt` takes it.
    pub fn from_base64(text: &str) -> Result<SharedKey, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        if !KEY_LENGTHS.contains(&bytes.len()) {
            return Err(KeyError::BadLength(bytes.len()));
        }
        Ok(SharedKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The value of [`SIGNATURE_HEADER`] for a forwarded data request, signed now
    /// ([`Purpose::Forward`]).
    pub fn sign_request(&self, method: &str, path_and_query: &str, body: &[u8]) -> String {
        self.sign_for(Purpose::Forward, method, path_and_query, body)
    }

    /// The value of [`SIGNATURE_HEADER`] for a request of `purpose`, signed now.
    pub fn sign_for(
        &self,
        purpose: Purpose,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> String {
        self.sign_at(purpose, method, path_and_query, body, SystemTime::now())
    }

    /// [`Self::sign_for`] at a given time (tests).
    pub fn sign_at(
        &self,
        purpose: Purpose,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        at: SystemTime,
    ) -> String {
        let ts = unix_ms(at).to_string();
        let nonce = hex(&nonce());
        let input = request_mac_input(purpose, method, path_and_query, body, &ts, &nonce);
        let tag = hmac::sign(&self.key, &input);
        let mac = base64::engine::general_purpose::STANDARD_NO_PAD.encode(tag.as_ref());
        format!("{VERSION} {ts} {nonce} {mac}")
    }

    /// Checks a forwarded data request's signature ([`Purpose::Forward`]).
    pub fn verify_request(
        &self,
        header: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_for(Purpose::Forward, header, method, path_and_query, body)
    }

    /// Checks a request's signature header against the purpose the receiver expects, its
    /// method, path and query, and body.
    pub fn verify_for(
        &self,
        purpose: Purpose,
        header: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_at(
            purpose,
            header,
            method,
            path_and_query,
            body,
            SystemTime::now(),
        )
    }

    /// [`Self::verify_for`] at a given time (tests).
    pub fn verify_at(
        &self,
        purpose: Purpose,
        header: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let sig = Signature::parse(header, now)?;
        let input = request_mac_input(purpose, method, path_and_query, body, sig.ts, sig.nonce);
        hmac::verify(&self.key, &input, &sig.mac).map_err(|_| AuthError::BadMac)
    }

    /// The [`SIGNATURE_HEADER`] of a server's answer to an agent's signed probe
    /// ([`PROBE_PATH`]): bound to the probe's own signature header (fresh time and nonce), so
    /// only a holder of the key can make it and no recorded answer fits another probe.
    pub fn sign_probe_reply(&self, request_signature: &str, body: &[u8]) -> String {
        self.sign_for(
            Purpose::ProbeReply,
            "GET",
            &probe_reply_scope(request_signature),
            body,
        )
    }

    /// Checks a probe's answer against the signature the probe was sent with
    /// ([`Self::sign_probe_reply`]).
    pub fn verify_probe_reply(
        &self,
        request_signature: &str,
        reply_signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        self.verify_for(
            Purpose::ProbeReply,
            reply_signature,
            "GET",
            &probe_reply_scope(request_signature),
            body,
        )
    }

    /// The MAC one side of an RPC handshake sends: over its role (`b"dialer"` or
    /// `b"listener"`), both nonces and the dialer's advertised address. Each side checks the
    /// other's with [`Self::verify_handshake_mac`].
    pub fn handshake_mac(
        &self,
        role: &[u8],
        dialer_nonce: &[u8],
        listener_nonce: &[u8],
        dialer_addr: &[u8],
    ) -> Vec<u8> {
        let input = handshake_mac_input(role, dialer_nonce, listener_nonce, dialer_addr);
        hmac::sign(&self.key, &input).as_ref().to_vec()
    }

    /// The key of one RPC connection, derived from the shared key and both sides' handshake
    /// nonces: each side makes its own copy (one seals, the other opens).
    pub fn session_key(
        &self,
        dialer_nonce: &[u8],
        listener_nonce: &[u8],
        dialer_addr: &[u8],
    ) -> SessionKey {
        let input = mac_input(&[
            b"registry rpc session",
            dialer_nonce,
            listener_nonce,
            dialer_addr,
        ]);
        let derived = hmac::sign(&self.key, &input);
        SessionKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            next_seq: 0,
        }
    }

    /// Checks a handshake MAC in constant time.
    pub fn verify_handshake_mac(
        &self,
        role: &[u8],
        dialer_nonce: &[u8],
        listener_nonce: &[u8],
        dialer_addr: &[u8],
        mac: &[u8],
    ) -> bool {
        let input = handshake_mac_input(role, dialer_nonce, listener_nonce, dialer_addr);
        hmac::verify(&self.key, &input, mac).is_ok()
    }
}

/// A signature header, parsed and within the clock skew (its MAC not checked yet).
struct Signature<'a> {
    /// Milliseconds since the epoch, as sent.
    ts: &'a str,
    /// Hex nonce, as sent.
    nonce: &'a str,
    /// The MAC.
    mac: Vec<u8>,
}

impl<'a> Signature<'a> {
    /// Parses an untrusted header: everything but the MAC can be judged without the body.
    fn parse(header: Option<&'a str>, now: SystemTime) -> Result<Signature<'a>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        if header.len() > 256 {
            return Err(AuthError::Malformed);
        }
        let mut words = header.split(' ');
        let (Some(VERSION), Some(ts), Some(nonce), Some(mac), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        let at: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
        if nonce.len() != 2 * NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed);
        }
        let mac = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(mac)
            .map_err(|_| AuthError::Malformed)?;
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        if unix_ms(now).abs_diff(at) > skew {
            return Err(AuthError::Expired);
        }
        Ok(Signature { ts, nonce, mac })
    }
}

/// What a signed request is for. The purpose is part of what the MAC covers and each receiver
/// checks the one its route expects, so a signature made for one job never passes for another:
/// a client request that a server or agent forwards (signed [`Purpose::Forward`]) can never pass
/// as a gateway exchange or an agent heartbeat, whatever path the client chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A data request forwarded on a client's behalf (agent -> server, server -> gateway,
    /// gateway -> gateway -> server).
    Forward,
    /// An agent's own liveness heartbeat.
    Heartbeat,
    /// A gateway's membership exchange (and its member listing).
    Exchange,
    /// A gateway's answer to an exchange, bound to the request it answers.
    ExchangeReply,
    /// A server's answer to an agent's probe ([`SharedKey::sign_probe_reply`]), bound to the
    /// request it answers: what proves to a joining agent that the server holds the key.
    ProbeReply,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Forward => b"forward",
            Purpose::Heartbeat => b"heartbeat",
            Purpose::Exchange => b"exchange",
            Purpose::ExchangeReply => b"exchange-reply",
            Purpose::ProbeReply => b"probe-reply",
        }
    }
}

/// One direction of one RPC connection after its handshake: every frame carries a MAC over its
/// sequence number and its bytes, under a key only the two ends know. Nothing can be injected
/// into, changed in, dropped from, replayed within or relayed between connections without
/// breaking the next check.
pub struct SessionKey {
    /// HMAC-SHA256 key derived for this connection.
    key: hmac::Key,
    /// Sequence number of the next frame.
    next_seq: u64,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// Length of the MAC appended to each frame.
    pub const TAG_LEN: usize = 32;

    /// The MAC of the next frame sent (then counts it).
    pub fn seal(&mut self, frame: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.next_seq.to_be_bytes());
        ctx.update(frame);
        self.next_seq += 1;
        ctx.sign()
    }

    /// Whether `tag` is the MAC of the next frame received (then counts it), in constant time.
    pub fn open(&mut self, frame: &[u8], tag: &[u8]) -> bool {
        let mut input = Vec::with_capacity(8 + frame.len());
        input.extend_from_slice(&self.next_seq.to_be_bytes());
        input.extend_from_slice(frame);
        self.next_seq += 1;
        hmac::verify(&self.key, &input, tag).is_ok()
    }
}

/// What an agent asks a server before it joins it (`PUT /v1/agent/join`): with a key, a
/// server signs its answer on this path ([`SharedKey::sign_probe_reply`]).
pub const PROBE_PATH: &str = "/v1/status/leader";

/// What a probe answer's MAC covers in place of a path: the probe's own signature.
fn probe_reply_scope(request_signature: &str) -> String {
    format!("{PROBE_PATH} reply-to {request_signature}")
}

/// What a request's MAC covers.
fn request_mac_input(
    purpose: Purpose,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    ts: &str,
    nonce: &str,
) -> Vec<u8> {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    mac_input(&[
        b"registry request",
        VERSION.as_bytes(),
        purpose.label(),
        method.as_bytes(),
        path_and_query.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        body_hash.as_ref(),
    ])
}

/// What a handshake MAC covers.
fn handshake_mac_input(
    role: &[u8],
    dialer_nonce: &[u8],
    listener_nonce: &[u8],
    dialer_addr: &[u8],
) -> Vec<u8> {
    mac_input(&[
        b"registry rpc handshake",
        role,
        dialer_nonce,
        listener_nonce,
        dialer_addr,
    ])
}

/// The parts of a MAC's input, each prefixed by its length so that no two different part
/// lists give the same bytes.
fn mac_input(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path and query of `url` exactly as the HTTP client sends them (dot segments resolved,
/// what needs it percent-encoded, no fragment): what a request's signature must cover, so that
/// the receiver, which sees the same bytes, computes the same MAC.
pub fn wire_path_and_query(url: &reqwest::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Signs an outgoing forwarded request ([`Purpose::Forward`]) when a key is configured: adds
/// [`SIGNATURE_HEADER`].
pub fn sign_into(
    key: Option<&SharedKey>,
    headers: &mut reqwest::header::HeaderMap,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) {
    sign_into_for(key, Purpose::Forward, headers, method, path_and_query, body)
}

/// [`sign_into`] for another purpose.
pub fn sign_into_for(
    key: Option<&SharedKey>,
    purpose: Purpose,
    headers: &mut reqwest::header::HeaderMap,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) {
    if let Some(key) = key {
        let value = key.sign_for(purpose, method, path_and_query, body);
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            headers.insert(
                reqwest::header::HeaderName::from_static(SIGNATURE_HEADER),
                v,
            );
        }
    }
}

/// Largest body a signed request may carry (the server's and gateway's own limit is 512 KiB;
/// this only bounds what is buffered to check the MAC).
#[cfg(feature = "serve")]
pub const MAX_SIGNED_BODY: usize = 1024 * 1024;

/// At most one warning per [`RateLimitedLog`] interval; the rest of the time, `allow` is false.
#[cfg(feature = "serve")]
pub struct RateLimitedLog {
    /// When the last allowed line was logged, in ms since the process's first call.
    last_ms: std::sync::atomic::AtomicU64,
    /// The interval in ms.
    every_ms: u64,
}

#[cfg(feature = "serve")]
impl RateLimitedLog {
    /// A limiter allowing one line per `every_ms` milliseconds.
    pub const fn new(every_ms: u64) -> Self {
        RateLimitedLog {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            every_ms,
        }
    }

    /// Whether a line may be logged now (and, if so, counts it).
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        // +1 so that the first call (at 0 ms) is allowed.
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= self.every_ms)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Refused requests: one warning per 10 s.
#[cfg(feature = "serve")]
static REFUSAL_LOG: RateLimitedLog = RateLimitedLog::new(10_000);

/// What [`require_signature`] checks requests against: the key and the purpose the routes it
/// guards expect.
#[cfg(feature = "serve")]
#[derive(Clone, Debug)]
pub struct Verifier {
    /// The shared key.
    pub key: std::sync::Arc<SharedKey>,
    /// The purpose the guarded routes expect.
    pub purpose: Purpose,
}

#[cfg(feature = "serve")]
impl Verifier {
    /// A verifier of `purpose` with `key`.
    pub fn new(key: std::sync::Arc<SharedKey>, purpose: Purpose) -> Verifier {
        Verifier { key, purpose }
    }
}

/// Axum middleware: refuses, with `403` and a plain-text reason, every request without a valid
/// signature of the verifier's purpose. The header (presence, form, clock skew) and the
/// announced `Content-Length` are judged before any of the body is read, so a stranger cannot
/// make the server buffer anything; then the body is buffered (up to [`MAX_SIGNED_BODY`], else
/// `413`) to check the MAC, and handed on unchanged. Use with
/// `middleware::from_fn_with_state(Verifier, require_signature)`.
#[cfg(feature = "serve")]
pub async fn require_signature(
    axum::extract::State(verifier): axum::extract::State<Verifier>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let refuse = |path: &str, e: AuthError| {
        // A misconfigured peer (wrong or no key) must be visible to the operator, but a flood
        // of unsigned requests must not become a flood of log lines.
        if REFUSAL_LOG.allow() {
            tracing::warn!(path, error = %e,
                "refused a request without a valid signature (more are logged at debug for a while)");
        } else {
            tracing::debug!(path, error = %e, "refused an unauthenticated request");
        }
        (axum::http::StatusCode::FORBIDDEN, e.to_string()).into_response()
    };
    let (parts, body) = req.into_parts();
    let header = parts
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = Signature::parse(header, SystemTime::now()) {
        return refuse(parts.uri.path(), e);
    }
    let too_large = || {
        (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large or unreadable (limit {MAX_SIGNED_BODY} bytes)"),
        )
            .into_response()
    };
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_SIGNED_BODY as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, MAX_SIGNED_BODY).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    if let Err(e) =
        verifier
            .key
            .verify_for(verifier.purpose, header, parts.method.as_str(), pq, &bytes)
    {
        return refuse(parts.uri.path(), e);
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SharedKey {
        SharedKey::from_base64(&generate_key()).unwrap()
    }

    #[test]
    fn keys_are_32_random_bytes_and_bad_keys_are_refused() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&a)
                .unwrap()
                .len(),
            32
        );
        assert!(SharedKey::from_base64(&a).is_ok());
        // Consul's 16-byte keys work too.
        assert!(SharedKey::from_base64("AAAAAAAAAAAAAAAAAAAAAA==").is_ok());
        assert_eq!(
            SharedKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            SharedKey::from_base64("AAAA").unwrap_err(),
            KeyError::BadLength(3)
        );
        assert_eq!(format!("{:?}", key()), "SharedKey(<redacted>)");
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let k = key();
        let sig = k.sign_request("PUT", "/v1/internal/heartbeat?x=1", b"{}");
        assert_eq!(
            k.verify_request(Some(&sig), "PUT", "/v1/internal/heartbeat?x=1", b"{}"),
            Ok(())
        );
        for (m, p, b) in [
            ("GET", "/v1/internal/heartbeat?x=1", &b"{}"[..]),
            ("PUT", "/v1/internal/heartbeat?x=2", b"{}"),
            ("PUT", "/v1/internal/heartbeat?x=1", b"{ }"),
        ] {
            assert_eq!(
                k.verify_request(Some(&sig), m, p, b),
                Err(AuthError::BadMac)
            );
        }
        assert_eq!(
            key().verify_request(Some(&sig), "PUT", "/v1/internal/heartbeat?x=1", b"{}"),
            Err(AuthError::BadMac),
            "another key"
        );
        assert_eq!(
            k.verify_request(None, "PUT", "/", b""),
            Err(AuthError::Missing)
        );
        for bad in [
            "",
            "v1",
            "v2 1 00 AA",
            "v1 x 00 AA",
            "v1 1 zz AA",
            "v1 1 00 AA extra",
        ] {
            assert_eq!(
                k.verify_request(Some(bad), "PUT", "/", b""),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_probe_reply_is_bound_to_its_probe_and_the_key() {
        let k = key();
        let probe = k.sign_request("GET", PROBE_PATH, b"");
        let reply = k.sign_probe_reply(&probe, b"\"10.0.0.1:8300\"");
        assert_eq!(
            k.verify_probe_reply(&probe, Some(&reply), b"\"10.0.0.1:8300\""),
            Ok(())
        );
        let other_probe = k.sign_request("GET", PROBE_PATH, b"");
        assert_eq!(
            k.verify_probe_reply(&other_probe, Some(&reply), b"\"10.0.0.1:8300\""),
            Err(AuthError::BadMac),
            "a reply recorded for another probe"
        );
        assert_eq!(
            k.verify_probe_reply(&probe, Some(&reply), b"\"\""),
            Err(AuthError::BadMac),
            "a changed body"
        );
        assert_eq!(
            key().verify_probe_reply(&probe, Some(&reply), b"\"10.0.0.1:8300\""),
            Err(AuthError::BadMac),
            "another key"
        );
        assert_eq!(
            k.verify_probe_reply(&probe, None, b""),
            Err(AuthError::Missing),
            "an unsigned answer"
        );
    }

    #[test]
    fn a_signature_for_one_purpose_never_passes_for_another() {
        let k = key();
        let all = [
            Purpose::Forward,
            Purpose::Heartbeat,
            Purpose::Exchange,
            Purpose::ExchangeReply,
            Purpose::ProbeReply,
        ];
        for made in all {
            let sig = k.sign_for(made, "PUT", "/v1/internal/heartbeat", b"{}");
            for checked in all {
                let verdict =
                    k.verify_for(checked, Some(&sig), "PUT", "/v1/internal/heartbeat", b"{}");
                if made == checked {
                    assert_eq!(verdict, Ok(()));
                } else {
                    assert_eq!(
                        verdict,
                        Err(AuthError::BadMac),
                        "{made:?} passed as {checked:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn signatures_expire_outside_the_clock_skew() {
        let k = key();
        let now = SystemTime::now();
        let old = k.sign_at(Purpose::Forward, "GET", "/", b"", now - MAX_CLOCK_SKEW * 2);
        assert_eq!(
            k.verify_at(Purpose::Forward, Some(&old), "GET", "/", b"", now),
            Err(AuthError::Expired)
        );
        let future = k.sign_at(Purpose::Forward, "GET", "/", b"", now + MAX_CLOCK_SKEW * 2);
        assert_eq!(
            k.verify_at(Purpose::Forward, Some(&future), "GET", "/", b"", now),
            Err(AuthError::Expired)
        );
        let slightly_off = k.sign_at(Purpose::Forward, "GET", "/", b"", now + MAX_CLOCK_SKEW / 2);
        assert_eq!(
            k.verify_at(Purpose::Forward, Some(&slightly_off), "GET", "/", b"", now),
            Ok(())
        );
    }

    #[test]
    fn session_frames_verify_in_order_only() {
        let k = key();
        let (d, l) = (nonce(), nonce());
        let mut sender = k.session_key(&d, &l, b"s1:8300");
        let mut receiver = k.session_key(&d, &l, b"s1:8300");
        let t0 = sender.seal(b"frame 0");
        let t1 = sender.seal(b"frame 1");
        assert!(receiver.open(b"frame 0", t0.as_ref()));
        // Replayed, reordered or changed frames fail.
        assert!(!receiver.open(b"frame 0", t0.as_ref()));
        let mut fresh = k.session_key(&d, &l, b"s1:8300");
        assert!(!fresh.open(b"frame 1", t1.as_ref()), "out of order");
        let mut other = k.session_key(&nonce(), &l, b"s1:8300");
        assert!(!other.open(b"frame 0", t0.as_ref()), "another connection");
    }

    #[test]
    fn handshake_macs_bind_role_nonces_and_address() {
        let k = key();
        let (d, l) = (nonce(), nonce());
        let mac = k.handshake_mac(b"dialer", &d, &l, b"s1:8300");
        assert!(k.verify_handshake_mac(b"dialer", &d, &l, b"s1:8300", &mac));
        assert!(!k.verify_handshake_mac(b"listener", &d, &l, b"s1:8300", &mac));
        assert!(!k.verify_handshake_mac(b"dialer", &l, &d, b"s1:8300", &mac));
        assert!(!k.verify_handshake_mac(b"dialer", &d, &l, b"s2:8300", &mac));
        assert!(!key().verify_handshake_mac(b"dialer", &d, &l, b"s1:8300", &mac));
    }
}
