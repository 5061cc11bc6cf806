//! An in-process HTTP (or https) receiver on 127.0.0.1:0 whose answers a test scripts per path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status answered; `None` while the reply hangs.
    pub status: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("request to {} has no {name} header", self.path))
    }

    /// Asserts that the request carries the Standard Webhooks signature of `secret` alone.
    #[track_caller]
    pub fn assert_signed_with(&self, secret: &str) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("whsec_ secret is base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        let (id, ts) = (self.header("webhook-id"), self.header("webhook-timestamp"));
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&self.body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(self.header("webhook-signature"), format!("v1,{signature}"));
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// How long the receiver works before it answers.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The reply, after `delay` of work.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Never answer (the client's timeout must fire).
    pub fn hang() -> Reply {
        Reply::status(200).after(Duration::from_secs(3600))
    }
}

/// Decides the reply from the path and how many requests that path already had.
pub type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    scheme: &'static str,
    log: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub async fn ok() -> Receiver {
        Receiver::scripted(|_, _| Reply::status(200)).await
    }

    pub async fn scripted(
        script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::serve(Arc::new(script), None).await
    }

    /// A receiver that answers 200 to everything over TLS with `tls`'s certificate; a
    /// connection whose handshake fails is never logged as a request.
    pub async fn https(tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::serve(Arc::new(|_: &str, _| Reply::status(200)), Some(tls.into())).await
    }

    async fn serve(script: Script, tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let receiver = Receiver {
            addr: listener.local_addr().expect("receiver address"),
            scheme: if tls.is_some() { "https" } else { "http" },
            log: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let serving = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let serving = serving.clone();
                        async move { Ok::<_, Infallible>(serving.answer(request).await) }
                    });
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        receiver
    }

    /// Changes the answers from now on (a receiver "fixed" by its owner).
    pub fn rescript(&self, script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().expect("script lock") = Arc::new(script);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Every request so far, to any path.
    pub fn all(&self) -> Vec<Received> {
        self.log.lock().expect("log lock").clone()
    }

    /// How many requests so far match `filter` (no copies: cheap enough to poll).
    pub fn count(&self, filter: impl Fn(&Received) -> bool) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|r| filter(r))
            .count()
    }

    /// How many distinct keys `key` gives the requests so far (counting those it gives one).
    pub fn distinct(&self, key: impl Fn(&Received) -> Option<String>) -> usize {
        let log = self.log.lock().expect("log lock");
        log.iter()
            .filter_map(key)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Every request so far to `path`.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let headers = request.headers().clone();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (seen, index) = {
            let mut log = self.log.lock().expect("log lock");
            let seen = log.iter().filter(|r| r.path == path).count();
            log.push(Received {
                path: path.clone(),
                headers,
                body,
                at: Instant::now(),
                status: None,
            });
            (seen, log.len() - 1)
        };
        let script = self.script.lock().expect("script lock").clone();
        let reply = script(&path, seen);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        self.log.lock().expect("log lock")[index].status = Some(reply.status);
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        *response.status_mut() = StatusCode::from_u16(reply.status).expect("valid status");
        for (name, value) in reply.headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        response
    }
}
