//! The one HTTP client every delivery goes through.
//!
//! One pooled hyper-util client is shared by all workers, so keep-alive connections are reused
//! across deliveries to the same receiver; that, not anything per request, is what makes tens of
//! thousands of POSTs a second possible. Every limit a receiver could abuse is enforced here:
//! connect and whole-request timeouts, no redirects (hyper never follows them), at most
//! [`MAX_BODY`] of a response read, and the SSRF guard under the connector. Failures come back as
//! [`SendError`] variants chosen from the error's type and source chain, never its text, so the
//! retry decision in `outcome` can rely on them.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use tokio::time::{timeout_at, Instant};

use super::guard::{GuardError, GuardedConnector};
use crate::tls::{self, TlsSetupError};

/// The most of a response body kept for the attempt log; the rest is never read.
const MAX_BODY: usize = 64 * 1024;

/// The longest request timeout the config accepts: RabbitMQ's `consumer_timeout` (30 min by
/// default) closes a channel that holds a delivery longer, and a request holds its delivery.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What the client is allowed and how long it waits. Built by the caller from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Networks opened through the SSRF guard (tests allow 127.0.0.0/8).
    pub allow_networks: Vec<IpNet>,
    /// A PEM file of private CAs trusted in addition to the bundled web PKI roots.
    pub extra_ca_file: Option<PathBuf>,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Why an attempt got no HTTP response. Display is one line and never includes the URL, which
/// may carry a receiver's token.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("request timed out")]
    Timeout,
    #[error("cut off unanswered: the endpoint stalled and its circuit opened")]
    Stalled,
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("destination {addr} is refused by the SSRF guard")]
    Blocked { addr: IpAddr },
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("request failed: {0}")]
    Other(String),
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub retry_after: Option<RetryAfter>,
    /// At most 64 KiB of the body, kept for the attempt log.
    pub body: Bytes,
}

/// A receiver's `Retry-After`, in either of its two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfter {
    Delay(Duration),
    At(SystemTime),
}

type HttpClient = legacy::Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Cheap to clone: every clone shares one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    request_timeout: Duration,
}

impl Client {
    pub fn new(settings: ClientSettings) -> Result<Client, ClientError> {
        let connector =
            GuardedConnector::new(settings.allow_networks.into(), settings.connect_timeout);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(
                "delivery.extra_ca_file",
                settings.extra_ca_file.as_deref(),
            )?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = legacy::Client::builder(TokioExecutor::new())
            // Without a timer the pool never evicts idle connections a receiver has long closed.
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                request_timeout: settings.request_timeout,
            }),
        })
    }

    /// POSTs `body` to `url` with `headers`. Redirects are returned, not followed; the whole
    /// exchange, reading the body included, ends by the request timeout.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, SendError> {
        let uri = parse_url(url)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        // Config bounds the timeout far below the clock's range; checked all the same, since a
        // panic here would take the whole consumer down.
        let now = Instant::now();
        let deadline = now
            .checked_add(self.inner.request_timeout)
            .unwrap_or(now + MAX_REQUEST_TIMEOUT);
        let response = match timeout_at(deadline, self.inner.http.request(request)).await {
            Err(_elapsed) => return Err(SendError::Timeout),
            Ok(Err(error)) => return Err(send_error(&error)),
            Ok(Ok(response)) => response,
        };
        let (parts, incoming) = response.into_parts();
        let retry_after = parts.headers.get(RETRY_AFTER).and_then(parse_retry_after);

        // Once the status is in, it decides the outcome: a body that stalls or breaks off only
        // shortens what the attempt log keeps, and turning it into a retry would re-send an
        // event the receiver has already accepted.
        let mut body = CappedBody::default();
        if timeout_at(deadline, body.read(incoming)).await.is_err() {
            tracing::debug!("response body cut off at the request deadline");
        }
        Ok(Response {
            status: parts.status,
            retry_after,
            body: body.into_bytes(),
        })
    }
}

/// Only absolute http(s) URLs with a host; the message says what is wrong without echoing the
/// URL.
fn parse_url(url: &str) -> Result<Uri, SendError> {
    let uri = Uri::try_from(url).map_err(|_| SendError::InvalidUrl("not a valid URI".into()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(SendError::InvalidUrl("scheme is not http or https".into())),
        None => return Err(SendError::InvalidUrl("not an absolute URL".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(SendError::InvalidUrl("no host".into()));
    }
    Ok(uri)
}

/// Integer seconds or an HTTP-date (RFC 9110 §10.2.3); anything else is ignored, as if absent.
fn parse_retry_after(value: &HeaderValue) -> Option<RetryAfter> {
    let value = value.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(RetryAfter::Delay(Duration::from_secs(seconds)));
    }
    httpdate::parse_http_date(value).ok().map(RetryAfter::At)
}

/// Names the failure by the types in its source chain, most specific first: the guard's
/// refusal, a TLS alert or certificate error, a timeout, then connecting at all.
fn send_error(error: &legacy::Error) -> SendError {
    let chain = || causes(error);
    if let Some(addr) = chain().find_map(|e| match e.downcast_ref::<GuardError>() {
        Some(GuardError::Refused { addr }) => Some(*addr),
        _ => None,
    }) {
        return SendError::Blocked { addr };
    }
    if let Some(tls) = chain().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return SendError::Tls(describe_tls(tls));
    }
    if chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    }) {
        return SendError::Timeout;
    }
    if error.is_connect() {
        return SendError::Connect(describe(error));
    }
    SendError::Other(describe(error))
}

/// The error and everything it wraps, outermost first. An `io::Error`'s `source` skips the
/// error it wraps (and hyper-rustls wraps tokio-rustls' `io::Error`, which wraps the
/// `rustls::Error`, in another one), so the walk steps into `get_ref` instead.
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| {
        match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn StdError + 'static)),
            None => e.source(),
        }
    })
}

/// rustls' own words, which name the certificate problem, without hyper's wrapping around them;
/// an untrusted issuer, the one an operator can fix in config, says how.
fn describe_tls(error: &rustls::Error) -> String {
    let mut text = error.to_string();
    if matches!(
        error,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    ) {
        text.push_str(
            " (the certificate's issuer is not a trusted CA; a private CA belongs in \
             delivery.extra_ca_file)",
        );
    }
    text.retain(|c| c != '\n' && c != '\r');
    text
}

/// The chain's messages on one line, `outer: inner: …`. This follows `source` alone: an
/// `io::Error` already displays the error it wraps.
fn describe(error: &legacy::Error) -> String {
    let mut text = String::new();
    let sources = std::iter::successors(Some(error as &(dyn StdError + 'static)), |&e| e.source());
    for cause in sources {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
    }
    text.retain(|c| c != '\n' && c != '\r');
    text
}

/// The first [`MAX_BODY`] bytes of a response. A body that arrives in one chunk (the common
/// case) is kept as that chunk, without copying.
#[derive(Default)]
struct CappedBody {
    first: Bytes,
    joined: Option<Vec<u8>>,
}

impl CappedBody {
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), Vec::len)
    }

    /// Reads until the end or the cap; stopping early drops the body, and with it the
    /// connection, which is cheaper than draining a receiver's megabytes.
    async fn read(&mut self, mut incoming: Incoming) {
        while self.len() < MAX_BODY {
            let chunk = match incoming.frame().await {
                None => return,
                Some(Err(error)) => {
                    tracing::debug!(%error, "response body broke off");
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => chunk,
                    Err(_trailers) => continue,
                },
            };
            let room = MAX_BODY - self.len();
            let chunk = if chunk.len() > room {
                chunk.slice(..room)
            } else {
                chunk
            };
            self.push(chunk);
        }
    }

    fn push(&mut self, chunk: Bytes) {
        if let Some(joined) = &mut self.joined {
            joined.extend_from_slice(&chunk);
        } else if self.first.is_empty() {
            self.first = chunk;
        } else if !chunk.is_empty() {
            let mut joined = Vec::with_capacity(MAX_BODY.min(self.first.len() + chunk.len() * 2));
            joined.extend_from_slice(&self.first);
            joined.extend_from_slice(&chunk);
            self.joined = Some(joined);
        }
    }

    fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::sign::{attempt_headers, delivery_id, Signing};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// What the test receiver saw of one request.
    struct Seen {
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    /// A receiver on 127.0.0.1:0 answering every request with `respond(path)` and reporting
    /// each request on the returned channel before answering.
    async fn receiver<F, Fut>(respond: F) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>)
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let respond = respond.clone();
                let seen_tx = seen_tx.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let respond = respond.clone();
                    let seen_tx = seen_tx.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let _ = seen_tx.send(Seen {
                            path: path.clone(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, Infallible>(respond(path).await)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen_rx)
    }

    fn reply(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: Bytes,
    ) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn client(allow: &[&str], request_timeout: Duration) -> Client {
        Client::new(ClientSettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout,
            allow_networks: allow
                .iter()
                .map(|n| n.parse().expect("test network parses"))
                .collect(),
            extra_ca_file: None,
        })
        .expect("client builds")
    }

    fn loopback_client() -> Client {
        client(&["127.0.0.0/8"], Duration::from_secs(5))
    }

    #[tokio::test]
    async fn post_delivers_body_byte_identical_with_all_headers() {
        let (addr, mut seen) = receiver(|_| async { reply(204, &[], Bytes::new()) }).await;
        let body = Bytes::from_static(
            b"{\"event\":\"message_created\",\"content\":\"h\xc3\xa9 \\u0000\"}\n",
        );
        let headers = attempt_headers(
            &delivery_id("e", "w"),
            1_700_000_000,
            &body,
            Signing {
                current: Some("whsec_c2VjcmV0"),
                previous: None,
            },
        );
        let response = loopback_client()
            .post(
                &format!("http://{addr}/hook"),
                headers.clone(),
                body.clone(),
            )
            .await
            .expect("delivered");
        assert_eq!(response.status, StatusCode::NO_CONTENT);
        let request = seen.try_recv().expect("receiver saw the request");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.body, body);
        assert_eq!(headers.len(), 8);
        for (name, value) in &headers {
            assert_eq!(request.headers.get(name), Some(value), "{name}");
        }
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let (addr, mut seen) = receiver(|path| async move {
            if path == "/hook" {
                reply(302, &[("location", "/elsewhere")], Bytes::new())
            } else {
                reply(200, &[], Bytes::new())
            }
        })
        .await;
        let response = loopback_client()
            .post(
                &format!("http://{addr}/hook"),
                HeaderMap::new(),
                Bytes::from_static(b"{}"),
            )
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::FOUND);
        assert_eq!(
            seen.try_recv().map(|s| s.path).ok().as_deref(),
            Some("/hook")
        );
        assert!(
            seen.try_recv().is_err(),
            "the redirect target was requested"
        );
    }

    #[tokio::test]
    async fn large_response_body_is_cut_at_64_kib() {
        let big: Bytes = (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let served = big.clone();
        let (addr, _seen) = receiver(move |_| {
            let served = served.clone();
            async move { reply(500, &[], served) }
        })
        .await;
        let response = loopback_client()
            .post(&format!("http://{addr}/"), HeaderMap::new(), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.body.len(), MAX_BODY);
        assert_eq!(response.body, big.slice(..MAX_BODY));
    }

    #[tokio::test]
    async fn retry_after_header_is_parsed() {
        let (addr, _seen) =
            receiver(|_| async { reply(429, &[("retry-after", "7")], Bytes::new()) }).await;
        let response = loopback_client()
            .post(&format!("http://{addr}/"), HeaderMap::new(), Bytes::new())
            .await
            .expect("answered");
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.retry_after,
            Some(RetryAfter::Delay(Duration::from_secs(7)))
        );
    }

    #[tokio::test]
    async fn receiver_that_never_answers_times_out_within_request_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        // Accepts and holds connections, never writing a byte.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let result = client(&["127.0.0.0/8"], timeout)
            .post(&format!("http://{addr}/"), HeaderMap::new(), Bytes::new())
            .await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(SendError::Timeout)), "{result:?}");
        assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        holder.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let result = loopback_client()
            .post(&format!("http://{addr}/"), HeaderMap::new(), Bytes::new())
            .await;
        assert!(matches!(result, Err(SendError::Connect(_))), "{result:?}");
    }

    #[tokio::test]
    async fn tls_handshake_failure_is_a_tls_error() {
        // Answers a ClientHello with plain HTTP: rustls rejects it as a corrupt record.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let result = loopback_client()
            .post(&format!("https://{addr}/"), HeaderMap::new(), Bytes::new())
            .await;
        assert!(matches!(result, Err(SendError::Tls(_))), "{result:?}");
    }

    #[tokio::test]
    async fn loopback_is_blocked_without_allow_networks_by_literal_and_by_name() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let guarded = client(&[], Duration::from_secs(5));
        let localhost = IpAddr::from([127, 0, 0, 1]);

        let literal = guarded
            .post(
                &format!("http://127.0.0.1:{port}/"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(literal, Err(SendError::Blocked { addr }) if addr == localhost),
            "{literal:?}"
        );
        let mapped = guarded
            .post(
                &format!("http://[::ffff:127.0.0.1]:{port}/"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(mapped, Err(SendError::Blocked { .. })),
            "{mapped:?}"
        );
        let named = guarded
            .post(
                &format!("http://localhost:{port}/"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(named, Err(SendError::Blocked { addr }) if addr.is_loopback()),
            "{named:?}"
        );
        // Nothing reached the socket: a connection would be waiting in the backlog.
        assert!(
            tokio::time::timeout(Duration::ZERO, listener.accept())
                .await
                .is_err(),
            "the guard let a connection through"
        );
    }

    #[tokio::test]
    async fn loopback_is_reachable_by_literal_and_by_name_when_allowed() {
        let (addr, _seen) = receiver(|_| async { reply(200, &[], Bytes::new()) }).await;
        let allowed = loopback_client();
        for url in [
            format!("http://{addr}/"),
            format!("http://localhost:{}/", addr.port()),
        ] {
            let response = allowed.post(&url, HeaderMap::new(), Bytes::new()).await;
            assert!(
                matches!(response, Ok(ref r) if r.status == StatusCode::OK),
                "{url}: {response:?}"
            );
        }
    }

    #[tokio::test]
    async fn unusable_urls_are_invalid_before_anything_is_sent() {
        let client = loopback_client();
        for url in [
            "not a url",
            "/relative/path",
            "ftp://127.0.0.1/",
            "http://:80/",
            "mailto:a@b",
        ] {
            let result = client.post(url, HeaderMap::new(), Bytes::new()).await;
            assert!(
                matches!(result, Err(SendError::InvalidUrl(_))),
                "{url}: {result:?}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_http_dates() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let cases = [
            ("120", Some(RetryAfter::Delay(Duration::from_secs(120)))),
            (" 0 ", Some(RetryAfter::Delay(Duration::ZERO))),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(RetryAfter::At(at))),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in cases {
            let header = HeaderValue::from_static(value);
            assert_eq!(parse_retry_after(&header), expected, "{value:?}");
        }
    }

    #[test]
    fn capped_body_keeps_single_chunks_and_joins_many_up_to_the_cap() {
        let mut one = CappedBody::default();
        let chunk = Bytes::from_static(b"ok");
        one.push(chunk.clone());
        let kept = one.into_bytes();
        assert_eq!(kept, chunk);
        assert_eq!(kept.as_ptr(), chunk.as_ptr(), "a single chunk was copied");

        let mut many = CappedBody::default();
        for part in [&b"a"[..], b"", b"bc", b"d"] {
            many.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(many.into_bytes(), Bytes::from_static(b"abcd"));
    }
}
