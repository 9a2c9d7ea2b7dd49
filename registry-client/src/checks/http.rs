//! HTTP(S) checks: one request per run on a fresh connection, redirects followed as Go's
//! client does, and Consul's mapping (2xx passing, 429 warning, anything else critical) with
//! the start of the body as output.
//!
//! Owns: building, sending and judging the request. Must not touch: scheduling and
//! thresholds ([`super::runner`]) or certificate policy ([`super::tls`]).

use super::tls::tls_client_config;
use super::{error_chain, AbortOnDrop, DIAL_BOUND, OUTPUT_MAX_SIZE};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use registry_api::types::{CRITICAL, PASSING, WARNING};
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// `User-Agent` of HTTP checks unless the definition sets one (Consul's `UserAgent`).
const USER_AGENT: &str = "Consul Health Check";

/// `Accept` of HTTP checks unless the definition sets one (as Consul sends).
const DEFAULT_ACCEPT: &str = "text/plain, text/*, */*";

/// Redirects an HTTP check follows, Go's `http.Client` default that Consul inherits.
const MAX_REDIRECTS: usize = 10;

/// An HTTP check's prepared request.
pub(super) struct HttpProbe {
    /// The URL as configured, for output (Consul prints the configured URL).
    url_text: String,
    /// The method as configured, for output.
    method_text: String,
    /// The parsed URL, or why it does not parse (reported on every run, like Go's error).
    url: Result<url::Url, String>,
    /// Parsed method.
    method: Method,
    /// Configured headers plus Consul's defaults.
    headers: HeaderMap,
    /// Request body.
    body: Bytes,
    /// TLS for `https` URLs (and redirects to them). An error is kept rather
    /// than failing the check's registration: plain-http checks must work on a
    /// host without CA certificates (a FROM-scratch image).
    tls: Result<tokio_rustls::TlsConnector, String>,
}

impl HttpProbe {
    /// Validates method and headers once; errors become the check's critical output.
    pub(super) fn new(
        url: &str,
        method: &str,
        headers: &BTreeMap<String, Vec<String>>,
        body: &str,
        tls_skip_verify: bool,
    ) -> Result<HttpProbe, String> {
        let method_text = if method.is_empty() { "GET" } else { method };
        let parsed_method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| format!("net/http: invalid method {method_text:?}"))?;
        let mut header_map = HeaderMap::new();
        for (name, values) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("net/http: invalid header field name {name:?}"))?;
            for value in values {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| format!("net/http: invalid header field value for {name:?}"))?;
                header_map.append(name.clone(), value);
            }
        }
        if !header_map.contains_key(http::header::USER_AGENT) {
            header_map.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        if !header_map.contains_key(http::header::ACCEPT) {
            header_map.insert(
                http::header::ACCEPT,
                HeaderValue::from_static(DEFAULT_ACCEPT),
            );
        }
        // Consul disables keep-alives so a stale pooled connection cannot fail a check.
        header_map.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let tls = tls_client_config(tls_skip_verify, b"http/1.1")
            .map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)));
        Ok(HttpProbe {
            url_text: url.to_owned(),
            method_text: method_text.to_owned(),
            url: url::Url::parse(url).map_err(|e| format!("parse {url:?}: {e}")),
            method: parsed_method,
            headers: header_map,
            body: Bytes::from(body.to_owned()),
            tls,
        })
    }

    /// One check: the request (following redirects), then Consul's status mapping and output.
    pub(super) async fn run(&self) -> (&'static str, String) {
        let prefix = format!("HTTP {} {}", self.method_text, self.url_text);
        let (status, body) = match self.fetch().await {
            Ok(result) => result,
            Err(e) => return (CRITICAL, format!("{prefix}: {e}")),
        };
        let health = if status.is_success() {
            PASSING
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            // 429 Too Many Requests (RFC 6585): the service is up but shedding load.
            WARNING
        } else {
            CRITICAL
        };
        (health, format!("{prefix}: {status} Output: {body}"))
    }

    /// Output of a run that hit its timeout.
    pub(super) fn timeout_output(&self, timeout: Duration) -> String {
        format!(
            "HTTP {} {}: timed out after {timeout:?}",
            self.method_text, self.url_text
        )
    }

    /// Sends the request, following redirects as Go's client does, and reads the start of
    /// the final response's body.
    async fn fetch(&self) -> Result<(StatusCode, String), String> {
        let mut url = self.url.clone()?;
        let mut method = self.method.clone();
        let mut body = self.body.clone();
        let mut headers = self.headers.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (mut response, _connection) =
                self.send(&url, &method, &headers, body.clone()).await?;
            let status = response.status();
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let next = match (status.is_redirection(), location) {
                (true, Some(location)) => url
                    .join(location)
                    .map_err(|e| format!("bad Location {location:?}: {e}"))?,
                // Go returns a 3xx without Location as the response.
                _ => {
                    let text = read_body_prefix(response.body_mut(), OUTPUT_MAX_SIZE).await;
                    return Ok((status, text));
                }
            };
            // Go's redirect rules: 301/302/303 turn into a body-less GET (HEAD stays HEAD);
            // 307/308 repeat the request as it was.
            if matches!(status.as_u16(), 301..=303) && method != Method::HEAD {
                method = Method::GET;
                body = Bytes::new();
            }
            // Go drops credentials when a redirect leaves the original host.
            if next.host_str() != url.host_str() {
                for name in ["authorization", "www-authenticate", "cookie", "cookie2"] {
                    headers.remove(name);
                }
            }
            url = next;
        }
        Err(format!("stopped after {MAX_REDIRECTS} redirects"))
    }

    /// One HTTP/1.1 exchange on a fresh connection (plain or TLS by the URL's scheme).
    async fn send(
        &self,
        url: &url::Url,
        method: &Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), String> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported protocol scheme {other:?}")),
        };
        let host = url.host().ok_or_else(|| "missing host in URL".to_owned())?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "missing port in URL".to_owned())?;
        let (tcp, server_name) = match host {
            // A name through the pure-Rust resolver: the static binary's glibc cannot resolve.
            url::Host::Domain(name) => (
                registry_api::resolve::connect(&format!("{name}:{port}"), DIAL_BOUND).await,
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("invalid host {name:?}: {e}")),
            ),
            url::Host::Ipv4(ip) => (
                TcpStream::connect((ip, port)).await,
                Ok(ServerName::from(std::net::IpAddr::V4(ip))),
            ),
            url::Host::Ipv6(ip) => (
                TcpStream::connect((ip, port)).await,
                Ok(ServerName::from(std::net::IpAddr::V6(ip))),
            ),
        };
        let tcp = tcp.map_err(|e| format!("dial tcp {}: {e}", authority(url)))?;

        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
            .body(Full::new(body))
            .map_err(|e| format!("building request: {e}"))?;
        *request.headers_mut() = headers.clone();
        // A configured Host header wins, as in Consul (`req.Host = header Host`).
        if !request.headers().contains_key(http::header::HOST) {
            let host =
                HeaderValue::from_str(&authority(url)).map_err(|e| format!("invalid host: {e}"))?;
            request.headers_mut().insert(http::header::HOST, host);
        }

        if https {
            let server_name = server_name?;
            let tls = self
                .tls
                .as_ref()
                .map_err(|e| format!("TLS setup: {e}"))?
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http1_exchange(tls, request).await
        } else {
            http1_exchange(tcp, request).await
        }
    }
}

/// `host[:port]` of a URL as it goes into `Host`, port omitted when it is the default.
fn authority(url: &url::Url) -> String {
    url[url::Position::BeforeHost..url::Position::AfterPort].to_owned()
}

/// Sends one request over `io`; returns the response with a streaming body and the task that
/// drives the connection, which must be kept while the body is read.
///
/// HTTP/1.1 itself is hyper's (`client::conn::http1`); ours are only the dial (TCP, then
/// rustls with the check's own verifier, [`super::tls`]), Go's redirect rules
/// ([`HttpProbe::fetch`]) and the 4 KiB body prefix. hyper-util's legacy `Client` would not
/// shorten this: it needs the same dial written as a connector (a `Service<Uri>` whose stream,
/// plain or TLS, implements its `Connection` trait), brings a connection pool that Consul's
/// checks turn off (`Connection: close`), follows no redirects, and reports a failed dial as
/// `client error (Connect)`, which would change the check output users see (Consul's
/// `dial tcp <addr>: connection refused`).
async fn http1_exchange<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> Result<(http::Response<hyper::body::Incoming>, AbortOnDrop), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| error_chain(&e))?;
    // The connection must be driven while the body is read; the guard ends it when the
    // check run is done or dropped on timeout, so no connection outlives its run.
    let driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "health check connection ended with an error");
        }
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok((response, driver))
}

/// Reads up to `limit` bytes of a body; a read error ends the read (Consul logs and keeps
/// what it has). Invalid UTF-8 is replaced, as the output is text.
async fn read_body_prefix(body: &mut hyper::body::Incoming, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let take = data.len().min(limit - buf.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "error while reading health check body");
                break;
            }
            None => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use crate::checks::test_support::*;
    use crate::checks::{CheckKind, CheckRunner, CheckSpec, OUTPUT_MAX_SIZE};
    use registry_api::types::{CRITICAL, PASSING, WARNING};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn http_status_codes_map_to_consul_statuses() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runners: Vec<CheckRunner> = [("ok", "/ok"), ("busy", "/busy"), ("error", "/error")]
            .into_iter()
            .map(|(id, path)| {
                CheckRunner::start(
                    id.to_owned(),
                    fast(http_kind(server.url(path))),
                    CRITICAL.to_owned(),
                    tx.clone(),
                )
            })
            .collect();
        let mut first = BTreeMap::new();
        while first.len() < 3 {
            let update = next_update(&mut rx).await;
            first.entry(update.check_id.clone()).or_insert(update);
        }
        assert_eq!(first["ok"].status, PASSING);
        assert_eq!(
            first["ok"].output,
            format!("HTTP GET {}: 200 OK Output: fine", server.url("/ok"))
        );
        assert_eq!(first["busy"].status, WARNING);
        assert_eq!(
            first["busy"].output,
            format!(
                "HTTP GET {}: 429 Too Many Requests Output: slow down",
                server.url("/busy")
            )
        );
        assert_eq!(first["error"].status, CRITICAL);
        assert_eq!(
            first["error"].output,
            format!(
                "HTTP GET {}: 500 Internal Server Error Output: boom",
                server.url("/error")
            )
        );
    }

    #[tokio::test]
    async fn http_output_keeps_the_first_4_kib_of_the_body() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "big".into(),
            fast(http_kind(server.url("/big"))),
            CRITICAL.into(),
            tx,
        );
        let update = next_update(&mut rx).await;
        assert_eq!(
            update.output,
            format!(
                "HTTP GET {}: 200 OK Output: {}",
                server.url("/big"),
                "x".repeat(OUTPUT_MAX_SIZE)
            )
        );
    }

    #[tokio::test]
    async fn http_check_follows_redirects() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "redir".into(),
            fast(http_kind(server.url("/redirect"))),
            CRITICAL.into(),
            tx,
        );
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, PASSING);
        assert_eq!(
            update.output,
            format!("HTTP GET {}: 200 OK Output: fine", server.url("/redirect"))
        );
    }

    #[tokio::test]
    async fn http_timeout_is_critical() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let spec = CheckSpec {
            timeout: Duration::from_millis(200),
            ..fast(http_kind(server.url("/hang")))
        };
        let _runner = CheckRunner::start("hang".into(), spec, PASSING.into(), tx);
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, CRITICAL);
        assert_eq!(
            update.output,
            format!("HTTP GET {}: timed out after 200ms", server.url("/hang"))
        );
    }

    #[tokio::test]
    async fn http_check_sends_method_headers_and_body() {
        let server = HttpServer::start(vec![200]).await;
        let (tx, mut rx) = mpsc::channel(16);
        let kind = CheckKind::Http {
            url: server.url("/echo"),
            method: "PUT".into(),
            headers: BTreeMap::from([("X-Test".to_owned(), vec!["a".to_owned(), "b".to_owned()])]),
            body: "hello".into(),
            tls_skip_verify: false,
        };
        let _runner = CheckRunner::start("echo".into(), fast(kind), CRITICAL.into(), tx);
        let update = next_update(&mut rx).await;
        assert_eq!(update.status, PASSING);
        assert_eq!(
            update.output,
            format!(
                "HTTP PUT {}: 200 OK Output: PUT x-test=a,b ua=Consul Health Check accept=text/plain, text/*, */* body=hello",
                server.url("/echo")
            )
        );
    }

    #[tokio::test]
    async fn http_check_goes_critical_when_server_stops_and_recovers_on_restart() {
        let server = HttpServer::start(vec![200]).await;
        let addr = server.addr;
        let url = server.url("/ok");
        let (tx, mut rx) = mpsc::channel(16);
        let _runner = CheckRunner::start(
            "web".into(),
            fast(http_kind(url.clone())),
            CRITICAL.into(),
            tx,
        );
        wait_for_status(&mut rx, PASSING).await;

        server.shutdown().await;
        let down = wait_for_status(&mut rx, CRITICAL).await;
        assert!(
            down.output
                .starts_with(&format!("HTTP GET {url}: dial tcp {addr}: ")),
            "{}",
            down.output
        );

        let listener = TcpListener::bind(addr).await.expect("rebind the same port");
        let _restarted = HttpServer::serve(
            listener,
            Arc::new(Script {
                statuses: vec![200],
                hits: AtomicUsize::new(0),
            }),
        );
        let up = wait_for_status(&mut rx, PASSING).await;
        assert_eq!(up.output, format!("HTTP GET {url}: 200 OK Output: fine"));
    }

    /// An HTTPS server that answers every request `200 secure`.
    async fn serve_https() -> SocketAddr {
        let acceptor = self_signed_acceptor(b"http/1.1");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_check_verifies_certificates_unless_told_to_skip() {
        let addr = serve_https().await;
        let url = format!("https://{addr}/health");
        let https = |skip| CheckKind::Http {
            url: url.clone(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: String::new(),
            tls_skip_verify: skip,
        };
        let first = first_updates(
            vec![("skip", https(true)), ("verify", https(false))],
            CRITICAL,
        )
        .await;
        assert_eq!(first["skip"].status, PASSING, "{}", first["skip"].output);
        assert_eq!(
            first["skip"].output,
            format!("HTTP GET {url}: 200 OK Output: secure")
        );
        assert_eq!(first["verify"].status, CRITICAL);
        assert!(
            first["verify"].output.contains("TLS handshake"),
            "{}",
            first["verify"].output
        );
    }
}
