//! gRPC checks: the standard `grpc.health.v1.Health/Check` call (grpc/grpc
//! `doc/health-checking.md`), over plaintext HTTP/2 or TLS (`GRPCUseTLS`), with Go gRPC's
//! error texts as Consul prints them.
//!
//! Owns: the call and its tiny protobuf codec. Must not touch: scheduling and thresholds
//! ([`super::runner`]) or certificate policy ([`super::tls`]).
//!
//! Why not `tonic-health`'s client: measured on this 2-core machine (a clean `cargo build` of
//! the agent's dependency set, with and without `tonic` 0.14 `codegen` + `channel` and
//! `tonic-health` 0.14), it adds 10 crates, among them a second major version of `syn` (3.x),
//! `prost-derive` and `async-trait` on one serial proc-macro chain: 3m07 -> 3m39 of CPU (+17%)
//! for a crate that is meant to stay light (DESIGN §2). `tonic-health` 0.14 also needs Rust
//! 1.88 where the workspace declares 1.85. And it would replace only the call and the codec
//! below (about 200 lines, unit-tested against an independent decoder): the dial and the TLS
//! with `TLSSkipVerify` stay ours either way, since tonic's `ClientTlsConfig` takes no custom
//! certificate verifier. Hyper's `h2` (already in the tree) carries the HTTP/2.

use super::tls::tls_client_config;
use super::{error_chain, AbortOnDrop};
use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Request, StatusCode};
use registry_api::types::{CRITICAL, PASSING};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest gRPC health response body read; the real message is a few bytes.
const GRPC_MAX_RESPONSE: usize = 64 * 1024;

/// The gRPC health service method (grpc/grpc `doc/health-checking.md`).
const GRPC_HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
const GRPC_SERVING: u64 = 1;

/// A gRPC check's prepared call.
pub(super) struct GrpcProbe {
    /// The target as configured, for output.
    target: String,
    /// `host:port` part of the target.
    server: String,
    /// Service part of the target; empty asks about the whole server.
    service: String,
    /// Sent as `grpc-timeout` so the server can give up when we do.
    timeout: Duration,
    /// TLS connector and server name when `GRPCUseTLS` is set.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl GrpcProbe {
    /// Splits the target as Consul's `NewGrpcHealthProbe` does: `server[/service]`.
    pub(super) fn new(
        target: &str,
        use_tls: bool,
        tls_skip_verify: bool,
        timeout: Duration,
    ) -> Result<GrpcProbe, String> {
        let (server, service) = target.split_once('/').unwrap_or((target, ""));
        let tls = if use_tls {
            let config = tls_client_config(tls_skip_verify, b"h2")?;
            let host = host_of(server);
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("invalid host {host:?}: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(GrpcProbe {
            target: target.to_owned(),
            server: server.to_owned(),
            service: service.to_owned(),
            timeout,
            tls,
        })
    }

    /// One check, with Consul's outputs.
    pub(super) async fn run(&self) -> (&'static str, String) {
        match self.call().await {
            Ok(GRPC_SERVING) => (PASSING, format!("gRPC check {}: success", self.target)),
            Ok(status) => (
                CRITICAL,
                format!(
                    "gRPC {} serving status: {}",
                    self.target,
                    serving_status_name(status)
                ),
            ),
            Err(e) => (CRITICAL, format!("gRPC check {}: {e}", self.target)),
        }
    }

    /// Output of a run that hit its timeout.
    pub(super) fn timeout_output(&self, timeout: Duration) -> String {
        format!("gRPC check {}: timed out after {timeout:?}", self.target)
    }

    /// Connects and makes the call; returns the serving status.
    async fn call(&self) -> Result<u64, String> {
        // Names through the pure-Rust resolver (the static binary's glibc cannot resolve).
        let tcp = registry_api::resolve::connect(&self.server, super::DIAL_BOUND)
            .await
            .map_err(|e| format!("dial tcp {}: {e}", self.server))?;
        match &self.tls {
            None => grpc_health_check(tcp, "http", &self.server, &self.service, self.timeout).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                grpc_health_check(tls, "https", &self.server, &self.service, self.timeout).await
            }
        }
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    server.rsplit_once(':').map_or(server, |(host, _)| host)
}

/// `grpc.health.v1.Health/Check` over HTTP/2 on `io`; returns the serving status.
///
/// The wire format is the gRPC HTTP/2 protocol (grpc/grpc `doc/PROTOCOL-HTTP2.md`): a POST
/// with `content-type: application/grpc` and `te: trailers`, a body of length-prefixed
/// messages, and the call's status in the `grpc-status` trailer (or in the headers of a
/// trailers-only response).
async fn grpc_health_check<T>(
    io: T,
    scheme: &str,
    authority: &str,
    service: &str,
    timeout: Duration,
) -> Result<u64, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| error_chain(&e))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "gRPC health check connection ended with an error");
        }
    }));
    let mut client = client.ready().await.map_err(|e| error_chain(&e))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{scheme}://{authority}{GRPC_HEALTH_CHECK_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(
            "grpc-timeout",
            format!("{}m", timeout.as_millis().min(99_999_999)),
        )
        .body(())
        .map_err(|e| format!("building request: {e}"))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| error_chain(&e))?;
    send.send_data(encode_health_check_request(service)?, true)
        .map_err(|e| error_chain(&e))?;
    let response = response.await.map_err(|e| error_chain(&e))?;
    if response.status() != StatusCode::OK {
        return Err(format!("unexpected HTTP status {}", response.status()));
    }
    // A trailers-only response carries the status in its headers.
    if let Some(code) = grpc_status(response.headers())? {
        if code != 0 {
            return Err(rpc_error(code, response.headers()));
        }
    }
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
        if message.len() > GRPC_MAX_RESPONSE {
            return Err(format!("response larger than {GRPC_MAX_RESPONSE} bytes"));
        }
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| error_chain(&e))?
        .unwrap_or_default();
    match grpc_status(&trailers)? {
        Some(0) => {}
        Some(code) => return Err(rpc_error(code, &trailers)),
        None if message.is_empty() => return Err("response without grpc-status".to_owned()),
        None => {}
    }
    decode_health_check_response(&message)
}

/// The `grpc-status` of a header block, if present.
fn grpc_status(headers: &HeaderMap) -> Result<Option<u32>, String> {
    headers
        .get("grpc-status")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| format!("invalid grpc-status {v:?}"))
        })
        .transpose()
}

/// Go gRPC's error text: `rpc error: code = Name desc = message`.
fn rpc_error(code: u32, headers: &HeaderMap) -> String {
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    format!(
        "rpc error: code = {} desc = {message}",
        grpc_code_name(code)
    )
}

/// gRPC status code names as Go's `codes.Code` prints them.
fn grpc_code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("Code({code})"), |name| (*name).to_owned())
}

/// `HealthCheckResponse.ServingStatus` names.
fn serving_status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => other.to_string(),
    }
}

/// `HealthCheckRequest { string service = 1; }` in a gRPC frame: compressed flag 0, 4-byte
/// big-endian length, then the protobuf message (an empty service is omitted, as proto3 does).
fn encode_health_check_request(service: &str) -> Result<Bytes, String> {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let length = u32::try_from(message.len()).map_err(|_| "service name too long".to_owned())?;
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.put_slice(&message);
    Ok(frame.freeze())
}

/// Reads the serving status from a gRPC frame holding a `HealthCheckResponse`.
fn decode_health_check_response(body: &[u8]) -> Result<u64, String> {
    let (&compressed, rest) = body
        .split_first()
        .ok_or_else(|| "empty gRPC response".to_owned())?;
    if compressed != 0 {
        return Err("compressed gRPC response not supported".to_owned());
    }
    let length_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "truncated gRPC frame header".to_owned())?;
    let length = usize::try_from(u32::from_be_bytes(length_bytes))
        .map_err(|_| "gRPC frame too large".to_owned())?;
    let message = rest
        .get(4..4 + length)
        .ok_or_else(|| "truncated gRPC message".to_owned())?;
    serving_status_field(message)
}

/// Field 1 (`status`, varint) of a `HealthCheckResponse`; unknown fields are skipped and an
/// absent status is proto3's default, 0 (UNKNOWN).
fn serving_status_field(mut message: &[u8]) -> Result<u64, String> {
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let value = read_varint(&mut message)?;
                if field == 1 {
                    status = value;
                }
            }
            1 => skip(&mut message, 8)?,
            2 => {
                let length = usize::try_from(read_varint(&mut message)?)
                    .map_err(|_| "protobuf length too large".to_owned())?;
                skip(&mut message, length)?;
            }
            5 => skip(&mut message, 4)?,
            wire_type => return Err(format!("unsupported protobuf wire type {wire_type}")),
        }
    }
    Ok(status)
}

/// Appends a protobuf base-128 varint.
fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Reads a protobuf base-128 varint (at most 10 bytes).
fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| "truncated protobuf varint".to_owned())?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("protobuf varint too long".to_owned())
}

/// Skips `n` bytes of a protobuf message.
fn skip(buf: &mut &[u8], n: usize) -> Result<(), String> {
    *buf = buf
        .get(n..)
        .ok_or_else(|| "truncated protobuf field".to_owned())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_support::*;
    use crate::checks::CheckKind;
    use http::header::HeaderValue;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// Decodes `HealthCheckRequest.service` from a gRPC frame, independently of the client's
    /// encoder; `None` when the frame is malformed.
    fn decode_service(frame: &[u8]) -> Option<String> {
        let (&flag, rest) = frame.split_first()?;
        let declared = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let message = rest.get(4..)?;
        if flag != 0 || usize::try_from(declared).ok()? != message.len() {
            return None;
        }
        if message.is_empty() {
            return Some(String::new());
        }
        let (&tag, mut rest) = message.split_first()?;
        if tag != 0x0a {
            return None;
        }
        let mut length = 0usize;
        let mut shift = 0;
        loop {
            let (&byte, tail) = rest.split_first()?;
            rest = tail;
            length |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if rest.len() != length {
            return None;
        }
        String::from_utf8(rest.to_vec()).ok()
    }

    /// A gRPC health service: `""` and `up*` are SERVING, `down` NOT_SERVING, `unimplemented`
    /// fails the call, and a malformed request gets INVALID_ARGUMENT.
    async fn answer_health_check(
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let (head, mut body) = request.into_parts();
        let mut frame = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            frame.extend_from_slice(&chunk);
        }
        let well_formed = head.method == Method::POST
            && head.uri.path() == GRPC_HEALTH_CHECK_PATH
            && head
                .headers
                .get("content-type")
                .is_some_and(|v| v == "application/grpc")
            && head.headers.get("te").is_some_and(|v| v == "trailers");
        let service = if well_formed {
            decode_service(&frame)
        } else {
            None
        };
        let reply: Result<u8, (u32, &str)> = match service.as_deref() {
            Some(s) if s.is_empty() || s.starts_with("up") => Ok(1),
            Some("down") => Ok(2),
            Some("unimplemented") => Err((12, "no health service")),
            _ => Err((3, "malformed health check request")),
        };
        match reply {
            Ok(status) => {
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("response head");
                let Ok(mut stream) = respond.send_response(response, false) else {
                    return;
                };
                let _ = stream.send_data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]), false);
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = stream.send_trailers(trailers);
            }
            Err((code, message)) => {
                // Trailers-only response: the status rides in the headers.
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code.to_string())
                    .header("grpc-message", message)
                    .body(())
                    .expect("response head");
                let _ = respond.send_response(response, true);
            }
        }
    }

    async fn serve_h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) {
        let Ok(mut connection) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((request, respond))) = connection.accept().await {
            tokio::spawn(answer_health_check(request, respond));
        }
    }

    async fn serve_grpc(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_h2(socket).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                serve_h2(stream).await;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn grpc_kind(target: String) -> CheckKind {
        CheckKind::Grpc {
            target,
            use_tls: false,
            tls_skip_verify: false,
        }
    }

    #[tokio::test]
    async fn grpc_check_reports_serving_status() {
        let addr = serve_grpc(None).await;
        let long_service = format!("up{}", "x".repeat(200)); // a two-byte length varint
        let first = first_updates(
            vec![
                ("server", grpc_kind(addr.to_string())),
                ("long", grpc_kind(format!("{addr}/{long_service}"))),
                ("down", grpc_kind(format!("{addr}/down"))),
                ("unimplemented", grpc_kind(format!("{addr}/unimplemented"))),
            ],
            CRITICAL,
        )
        .await;
        assert_eq!(first["server"].status, PASSING);
        assert_eq!(
            first["server"].output,
            format!("gRPC check {addr}: success")
        );
        assert_eq!(first["long"].status, PASSING, "{}", first["long"].output);
        assert_eq!(first["down"].status, CRITICAL);
        assert_eq!(
            first["down"].output,
            format!("gRPC {addr}/down serving status: NOT_SERVING")
        );
        assert_eq!(first["unimplemented"].status, CRITICAL);
        assert_eq!(
            first["unimplemented"].output,
            format!("gRPC check {addr}/unimplemented: rpc error: code = Unimplemented desc = no health service")
        );
    }

    #[tokio::test]
    async fn grpc_check_with_tls() {
        let addr = serve_grpc(Some(self_signed_acceptor(b"h2"))).await;
        let tls = |skip| CheckKind::Grpc {
            target: addr.to_string(),
            use_tls: true,
            tls_skip_verify: skip,
        };
        let first =
            first_updates(vec![("skip", tls(true)), ("verify", tls(false))], CRITICAL).await;
        assert_eq!(first["skip"].status, PASSING, "{}", first["skip"].output);
        assert_eq!(first["skip"].output, format!("gRPC check {addr}: success"));
        assert_eq!(first["verify"].status, CRITICAL);
        assert!(
            first["verify"].output.contains("TLS handshake"),
            "{}",
            first["verify"].output
        );
    }

    #[test]
    fn grpc_messages_encode_and_decode() {
        assert_eq!(
            encode_health_check_request("").expect("encode").as_ref(),
            [0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode_health_check_request("svc").expect("encode").as_ref(),
            [0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        let long = "x".repeat(300);
        assert_eq!(
            decode_service(&encode_health_check_request(&long).expect("encode")),
            Some(long)
        );

        // status = SERVING, after an unknown string field 2 = "ab".
        assert_eq!(
            decode_health_check_response(&[0, 0, 0, 0, 6, 0x12, 2, b'a', b'b', 0x08, 1]),
            Ok(1)
        );
        // An empty message is proto3's default status, UNKNOWN.
        assert_eq!(decode_health_check_response(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(decode_health_check_response(&[0, 0, 0, 0, 3, 0x08, 1]).is_err());
        assert!(decode_health_check_response(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
        assert!(decode_health_check_response(&[0, 0, 0, 0, 1, 0x08]).is_err());
        assert!(decode_health_check_response(&[]).is_err());
        assert_eq!(grpc_code_name(5), "NotFound");
        assert_eq!(grpc_code_name(99), "Code(99)");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("example.com:50051"), "example.com");
        assert_eq!(host_of("[::1]:50051"), "::1");
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
    }
}
