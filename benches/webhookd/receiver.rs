//! The webhook receiver: hyper on 127.0.0.1:0 in this process, answering 200 at once, except on
//! [`HANG_PATH`], which never answers while the receiver lives.
//!
//! It keeps counters, not a log: at 200,000 requests a run, a log of requests would cost the
//! receiver more than webhookd's side of the work. First and last receipt are atomics, so the
//! throughput of a run is measured where the deliveries land, from the first to the last, without
//! webhookd's start-up in it. Stamped bodies (see `events`) add their publish-to-receipt latency
//! to a list the latency scenario reads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::{now_ns, read_stamp};

/// Requests to this path hang until the receiver is dropped: a receiver that never answers.
pub const HANG_PATH: &str = "/hang";

/// Deliveries that were answered, and when the first and last arrived (see [`now_ns`]).
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// TCP connections accepted: a sender that reuses its keep-alive connections opens about as
    /// many as it has requests in flight at once, not one per delivery.
    pub connections: u64,
}

#[derive(Default)]
struct State {
    answered: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    hung: AtomicU64,
    connections: AtomicU64,
    /// (sent, latency) of each stamped body, nanoseconds.
    stamped: Mutex<Vec<(u64, u64)>>,
}

/// Stops serving (and releases every hanging request) when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let state = Arc::new(State {
            first_ns: AtomicU64::new(u64::MAX),
            ..State::default()
        });
        let receiver = Receiver {
            addr: listener.local_addr()?,
            state: state.clone(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(serve(listener, state, receiver.stop.clone()));
        Ok(receiver)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answered deliveries so far (hanging ones are not answered, so not counted).
    pub fn tally(&self) -> Tally {
        Tally {
            count: self.state.answered.load(Ordering::Acquire),
            first_ns: self.state.first_ns.load(Ordering::Acquire),
            last_ns: self.state.last_ns.load(Ordering::Acquire),
            connections: self.state.connections.load(Ordering::Acquire),
        }
    }

    /// Requests that arrived on [`HANG_PATH`].
    pub fn hung(&self) -> u64 {
        self.state.hung.load(Ordering::Acquire)
    }

    /// (publish time, publish-to-receipt latency) of every stamped body received so far.
    pub fn stamped(&self) -> Vec<(u64, u64)> {
        self.state
            .stamped
            .lock()
            .map(|list| list.clone())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        state.connections.fetch_add(1, Ordering::AcqRel);
        let _ = stream.set_nodelay(true);
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(|request| {
                let (state, stop) = (state.clone(), stop.clone());
                async move { Ok::<_, Infallible>(answer(&state, &stop, request).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

async fn answer(
    state: &State,
    stop: &CancellationToken,
    request: Request<Incoming>,
) -> Response<Empty<Bytes>> {
    let hang = request.uri().path() == HANG_PATH;
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let at = now_ns();
    if hang {
        state.hung.fetch_add(1, Ordering::AcqRel);
        stop.cancelled().await;
    } else {
        state.first_ns.fetch_min(at, Ordering::AcqRel);
        state.last_ns.fetch_max(at, Ordering::AcqRel);
        state.answered.fetch_add(1, Ordering::AcqRel);
        if let Some(sent) = read_stamp(&body) {
            if let Ok(mut list) = state.stamped.lock() {
                list.push((sent, at.saturating_sub(sent)));
            }
        }
    }
    Response::new(Empty::new())
}
