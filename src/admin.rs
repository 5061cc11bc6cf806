//! The admin HTTP server: health and readiness for the supervisor, metrics for Prometheus, and
//! the `/v1` webhook API that `webhookd webhooks …` talks to.
//!
//! The daemon holds sled's exclusive lock on the store, so this API is the one way to change the
//! registry while it runs. Routing is a match on method and path segments: a dozen routes do not
//! need a router crate. Health, readiness and metrics stay open so probes need no secret.
//!
//! `/v1` can register a webhook, which makes webhookd POST to a URL of the caller's choosing, so
//! it is closed unless deliberately opened: with `admin.token` every request needs that bearer
//! token (compared in constant time); without one `/v1` refuses everything, unless
//! `admin.insecure_no_auth` is set, which config validation accepts on a loopback listener only.
//! Bodies are capped, and every refusal is JSON whose `field` names what to fix.
//!
//! The listener must survive clients that never finish: each one holds a file descriptor, and a
//! daemon out of descriptors can no longer open delivery connections either. So request headers
//! must arrive within [`HEADER_READ_TIMEOUT`] (an idle keep-alive connection gets the same time
//! for its next request) and a body within [`BODY_READ_TIMEOUT`], or the connection is closed; at
//! most [`MAX_CONNECTIONS`] are served at once, and one over that is closed as soon as it is
//! accepted (with a 503 if its socket takes it) rather than left waiting in the kernel's backlog,
//! where it would still count against the descriptor limit once accepted. A failing `accept` (out
//! of descriptors) pauses accepting with a growing delay and is logged once per episode, instead
//! of spinning on the error and flooding the journal.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{AdminConfig, Secret};
use crate::console::{self, Console};
use crate::delivery::sign::generate_secret;
use crate::health::Circuits;
use crate::health::Readiness;
use crate::lifecycle::{check_event, send_test, Monitor, Trial, WebhookView, DEFAULT_TEST_EVENT};
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};
use crate::store::{Cursor, NewWebhook, StoreError, Webhook, WebhookPatch};

/// Request bodies above this are refused: a webhook definition is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Webhooks in one page of `GET /v1/webhooks` unless `limit` says fewer; also the most it takes.
const MAX_PAGE: usize = 1000;

/// How long a client has to send a request's headers, from connecting or from the end of the
/// previous response. A local client (a probe, the CLI) needs milliseconds.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a whole request body (at most 64 KiB).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. Probes, Prometheus and the CLI use a handful; the rest of the
/// daemon's descriptors belong to deliveries.
pub const MAX_CONNECTIONS: usize = 64;

/// The pause after the first failed `accept`; it doubles on each failure in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a connection over [`MAX_CONNECTIONS`] is told before it is closed.
const BUSY_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
    content-length: 27\r\nconnection: close\r\n\r\ntoo many admin connections\n";

pub struct AdminState {
    pub registry: Registry,
    pub access: Access,
    /// How long a rotated-out secret keeps signing (`delivery.secret_rotation_grace`).
    pub secret_rotation_grace: Duration,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Which webhook URLs have their circuit open.
    pub circuits: Arc<dyn Circuits>,
    /// The console's sessions and settings.
    pub console: Console,
    /// The running daemon's view of its webhooks: health, and the client a test is sent with.
    pub monitor: Arc<dyn Monitor>,
}

/// Who a request acts for, once its credentials are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The admin token (or an open `/v1`): every account, and the admin-only routes.
    Operator,
    /// An account token: this account's webhooks, attempts and dead letters, nothing else.
    Account(u64),
}

impl Principal {
    /// Whether this principal may see what belongs to `account_id`.
    pub fn sees(self, account_id: u64) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Account(own) => own == account_id,
        }
    }

    /// The account a listing is narrowed to: the principal's own, or for the operator the one
    /// asked for (if any).
    pub fn scope(self, asked: Option<u64>) -> Option<u64> {
        match self {
            Principal::Operator => asked,
            Principal::Account(own) => Some(own),
        }
    }
}

impl AdminState {
    /// Who `token` speaks for: the admin token (compared in constant time) or a live account
    /// token; `None` for anything else.
    pub fn principal_of(&self, token: &str) -> Option<Principal> {
        if let Access::Token(admin) = &self.access {
            if bool::from(token.as_bytes().ct_eq(admin.expose().as_bytes())) {
                return Some(Principal::Operator);
            }
        }
        match self.registry.store().token_account(token) {
            Ok(account) => account.map(Principal::Account),
            Err(error) => {
                warn!(%error, "reading an account token failed");
                None
            }
        }
    }

    /// The webhook `id` if `principal` may see it: another account's webhook is as absent as
    /// one that does not exist.
    pub fn webhook_for(
        &self,
        principal: Principal,
        id: &str,
    ) -> Result<Option<Webhook>, StoreError> {
        Ok(self
            .registry
            .store()
            .get(id)?
            .filter(|webhook| principal.sees(webhook.account_id)))
    }
}

/// Who may use `/v1`.
pub enum Access {
    /// Every request must carry this bearer token.
    Token(Secret),
    /// No token is configured: `/v1` refuses every request.
    Closed,
    /// `admin.insecure_no_auth`: anyone who reaches the (loopback) listener.
    Open,
}

impl Access {
    /// Validation has already refused `insecure_no_auth` with a token or off loopback.
    pub fn from_config(admin: &AdminConfig) -> Access {
        match (admin.token(), admin.insecure_no_auth) {
            (Some(token), _) => Access::Token(token.clone()),
            (None, true) => Access::Open,
            (None, false) => Access::Closed,
        }
    }
}

/// Serves until `shutdown`; connections already open finish their current request.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    match state.access {
        Access::Token(_) => {}
        Access::Closed => {
            info!("admin /v1 API is off: set admin.token (or admin.token_file) to manage webhooks through it");
        }
        Access::Open => {
            warn!("admin /v1 API requires no token (admin.insecure_no_auth = true): anyone who can reach the listener can register webhooks");
        }
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failing = AcceptFailures::default();
    let mut refusing = false;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failing.recovered();
                    stream
                }
                Err(error) => {
                    let pause = failing.failed(&error);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refusing {
                warn!(
                    max = MAX_CONNECTIONS,
                    "admin connections at their cap: closing new ones until some finish"
                );
                refusing = true;
            }
            refuse(&stream);
            continue;
        };
        if refusing {
            info!("admin connections below their cap again");
            refusing = false;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Tells a connection over the cap why it is closed, if its socket takes the few bytes at once;
/// it is closed either way, without waiting for it.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(BUSY_REPLY);
}

/// A run of failed `accept`s: the first is logged, each one pauses accepting for twice as long
/// as the one before (up to [`ACCEPT_BACKOFF_MAX`]), and the first success afterwards logs how
/// long it lasted.
#[derive(Default)]
struct AcceptFailures {
    count: u32,
    since: Option<Instant>,
}

impl AcceptFailures {
    /// Records a failure and returns how long to pause before accepting again.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        if self.count == 0 {
            warn!(%error, "admin accept failed (out of file descriptors?); pausing accepts with backoff until it succeeds");
            self.since = Some(Instant::now());
        }
        self.count = self.count.saturating_add(1);
        let doublings = self.count.saturating_sub(1).min(16);
        (ACCEPT_BACKOFF_MIN * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX)
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            info!(
                failed_accepts = self.count,
                lasted = ?since.elapsed(),
                "admin accepting connections again"
            );
        }
        self.count = 0;
    }
}

pub(crate) type Reply = Response<Full<Bytes>>;

async fn route(state: &AdminState, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["readyz"]) => match state.readiness.reason() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, ["metrics"]) => {
            let mut reply = text(StatusCode::OK, &state.metrics.render());
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            reply
        }
        (_, ["ui", ..]) => console::route(state, request).await,
        (_, ["v1", ..]) => {
            let principal = match authorize(state, &request) {
                Ok(principal) => principal,
                Err(refusal) => return *refusal,
            };
            let query = request.uri().query().unwrap_or("").to_owned();
            match api(state, principal, &method, &segments[1..], &query, request).await {
                Ok(reply) => reply,
                Err(error) => error.into_reply(),
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such route", None),
    }
}

/// Who a `/v1` request acts for, or the 401 that refuses it. An account token works whatever
/// `admin.token` is; without one, an open `/v1` acts as the operator.
fn authorize(state: &AdminState, request: &Request<Incoming>) -> Result<Principal, Box<Reply>> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if let Some(principal) = state.principal_of(given) {
        return Ok(principal);
    }
    match &state.access {
        Access::Open => Ok(Principal::Operator),
        Access::Closed => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "the /v1 API is off: no token is configured (admin.token, admin.token_file)",
            Some("admin.token"),
        ))),
        Access::Token(_) => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            Some("authorization"),
        ))),
    }
}

/// The credentials of an `Authorization: Bearer …` header; the scheme name is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Why an API request failed, as the client should see it. `field` names the request field (or
/// config key) to fix, when there is one.
pub(crate) enum ApiError {
    BadRequest(String, Option<String>),
    TooLarge,
    /// The body did not arrive within [`BODY_READ_TIMEOUT`].
    BodyTimeout,
    NotFound,
    /// An account token asked for an operator's route.
    Forbidden,
    /// The change lost a race with another change to the same webhook.
    Conflict(String),
    /// The registry log cannot take or apply the change now.
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    fn bad_request(message: impl Into<String>, field: &str) -> ApiError {
        ApiError::BadRequest(message.into(), Some(field.to_owned()))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Invalid { field, message } => ApiError::bad_request(message, field),
            StoreError::Conflict => ApiError::Conflict(error.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        match error {
            RegistryError::Store(error) => error.into(),
            unavailable => ApiError::Unavailable(unavailable.to_string()),
        }
    }
}

impl ApiError {
    pub(crate) fn into_reply(self) -> Reply {
        match self {
            ApiError::BadRequest(message, field) => {
                json_error(StatusCode::BAD_REQUEST, &message, field.as_deref())
            }
            ApiError::TooLarge => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is over {MAX_REQUEST_BYTES} bytes"),
                None,
            ),
            ApiError::BodyTimeout => {
                let mut reply = json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "request body not received within {}",
                        humantime::format_duration(BODY_READ_TIMEOUT)
                    ),
                    None,
                );
                // The rest of the body may still be on its way: the connection cannot be reused.
                reply.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                reply
            }
            ApiError::NotFound => json_error(StatusCode::NOT_FOUND, "no such webhook", None),
            ApiError::Forbidden => json_error(
                StatusCode::FORBIDDEN,
                "this route is for the admin token only",
                Some("authorization"),
            ),
            ApiError::Conflict(message) => json_error(StatusCode::CONFLICT, &message, None),
            ApiError::Unavailable(message) => {
                warn!(%message, "admin API write not applied");
                json_error(StatusCode::SERVICE_UNAVAILABLE, &message, None)
            }
            ApiError::Internal(message) => {
                warn!(%message, "admin API request failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, &message, None)
            }
        }
    }
}

async fn api(
    state: &AdminState,
    principal: Principal,
    method: &Method,
    segments: &[&str],
    query: &str,
    request: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let registry = &state.registry;
    let store = registry.store();
    // The webhook a route names, if this principal may see it.
    let owned = |id: &str| state.webhook_for(principal, id)?.ok_or(ApiError::NotFound);
    match (method, segments) {
        (&Method::GET, ["webhooks"]) => {
            let asked = match query_param(query, "account_id") {
                Some(value) => Some(positive(value, "account_id")?),
                None => None,
            };
            if asked.is_some_and(|account| !principal.sees(account)) {
                return Err(ApiError::NotFound);
            }
            let limit = match query_param(query, "limit") {
                Some(value) => usize::try_from(positive(value, "limit")?)
                    .unwrap_or(MAX_PAGE)
                    .min(MAX_PAGE),
                None => MAX_PAGE,
            };
            let cursor = query_param(query, "cursor")
                .map(str::parse::<Cursor>)
                .transpose()?;
            let (page, next) = store.page(principal.scope(asked), cursor.as_ref(), limit)?;
            let list: Vec<_> = page.iter().map(Webhook::masked).collect();
            let mut reply = json(StatusCode::OK, &list);
            if let Some(next) = next {
                // The next page, as GitHub's API links it (RFC 8288); the body stays a list.
                let account = asked
                    .map(|a| format!("&account_id={a}"))
                    .unwrap_or_default();
                let link =
                    format!("</v1/webhooks?limit={limit}{account}&cursor={next}>; rel=\"next\"");
                if let Ok(value) = header::HeaderValue::from_str(&link) {
                    reply.headers_mut().insert(header::LINK, value);
                }
            }
            Ok(reply)
        }
        (&Method::POST, ["webhooks"]) => {
            let (mut fields, generate) = read_json(request).await?;
            if generate {
                fields.insert("secret".into(), Value::String(generate_secret()));
            }
            if let Principal::Account(own) = principal {
                let named = fields.entry("account_id").or_insert(Value::from(own));
                if named.as_u64() != Some(own) {
                    return Err(ApiError::NotFound);
                }
            }
            let new: NewWebhook = from_fields(fields, &REQUIRED_TO_CREATE)?;
            let webhook = registry.create(new).await?;
            // The secret is shown once, in the reply that set it.
            Ok(json(StatusCode::CREATED, &webhook))
        }
        (&Method::GET, ["webhooks", id]) => {
            let webhook = owned(id)?;
            Ok(json(
                StatusCode::OK,
                &WebhookView {
                    health: Some(state.monitor.health(&webhook)),
                    webhook: webhook.masked(),
                },
            ))
        }
        (&Method::POST, ["webhooks", id, "test"]) => {
            let event = query_param(query, "event").unwrap_or(DEFAULT_TEST_EVENT);
            check_event(event).map_err(|message| ApiError::bad_request(message, "event"))?;
            let trial = send_test_event(state, &owned(id)?, event).await;
            Ok(json(StatusCode::OK, &trial))
        }
        (&Method::PATCH, ["webhooks", id]) => {
            owned(id)?;
            let (mut fields, generate) = read_json(request).await?;
            if generate {
                fields.insert("secret".into(), Value::String(generate_secret()));
            }
            let secret_changed = fields.contains_key("secret");
            let patch: WebhookPatch = from_fields(fields, &[])?;
            match registry.update(id, &patch).await? {
                Some(webhook) if secret_changed => Ok(json(StatusCode::OK, &webhook.revealed())),
                Some(webhook) => Ok(json(StatusCode::OK, &webhook.masked())),
                None => Err(ApiError::NotFound),
            }
        }
        (&Method::POST, ["webhooks", id, "rotate-secret"]) => {
            owned(id)?;
            let rotated = rotate_secret(state, id).await?.ok_or(ApiError::NotFound)?;
            Ok(json(StatusCode::OK, &rotated.revealed()))
        }
        (&Method::DELETE, ["webhooks", id]) => {
            owned(id)?;
            if registry.delete(id).await? {
                state.monitor.deleted(id);
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::NotFound)
            }
        }
        (&Method::GET, ["webhooks", id, "attempts"]) => {
            owned(id)?;
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            Ok(json(StatusCode::OK, &store.attempts(id, limit)?))
        }
        (_, ["tokens", ..]) if principal != Principal::Operator => Err(ApiError::Forbidden),
        (&Method::GET, ["tokens"]) => Ok(json(StatusCode::OK, &store.tokens()?)),
        (&Method::POST, ["tokens"]) => {
            let (fields, _) = read_json(request).await?;
            let new: NewToken = from_fields(fields, &["account_id"])?;
            let issued = registry.issue_token(new.account_id, new.name).await?;
            info!(token_id = %issued.record.id, account_id = new.account_id, "account token created");
            // The token is shown once, in this reply; only its hash is kept.
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({ "token": issued.token, "record": issued.record }),
            ))
        }
        (&Method::DELETE, ["tokens", id]) => {
            if registry.revoke_token(id).await? {
                info!(token_id = %id, "account token revoked");
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Ok(json_error(StatusCode::NOT_FOUND, "no such token", None))
            }
        }
        _ => Ok(json_error(StatusCode::NOT_FOUND, "no such route", None)),
    }
}

/// Gives webhook `id` a new generated secret, the old one signing on for the configured grace.
pub(crate) async fn rotate_secret(
    state: &AdminState,
    id: &str,
) -> Result<Option<Webhook>, RegistryError> {
    let rotated = state
        .registry
        .rotate_secret(id, generate_secret(), state.secret_rotation_grace)
        .await?;
    if rotated.is_some() {
        info!(webhook_id = %id, grace = %humantime::format_duration(state.secret_rotation_grace), "webhook secret rotated");
    }
    Ok(rotated)
}

/// Sends `webhook` a sample `event` (checked by [`check_event`]) now, with the delivery client in
/// force, and logs it: `POST /v1/webhooks/{id}/test` and the console's **Send test event**.
pub(crate) async fn send_test_event(state: &AdminState, webhook: &Webhook, event: &str) -> Trial {
    let store = state.registry.store();
    let trial = send_test(&state.monitor.client(), store, webhook, event).await;
    info!(webhook_id = %webhook.id, event, status = trial.status, error = trial.error.as_deref(), "test delivery sent");
    trial
}

/// The body of `POST /v1/tokens`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    account_id: u64,
    #[serde(default)]
    name: Option<String>,
}

/// A query parameter that must be a positive integer.
fn positive(value: &str, field: &str) -> Result<u64, ApiError> {
    value.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::bad_request(
            format!("{field} must be a positive integer, got {value:?}"),
            field,
        )
    })
}

/// The fields a new webhook must have. serde reports a missing field at the object itself, with
/// no path to name it by, so they are checked here first.
const REQUIRED_TO_CREATE: [&str; 2] = ["account_id", "url"];

/// A request type from the body's fields. A field serde refuses (wrong type, unknown name) is
/// named by the first segment of its path: `events[0]` is the field `events`.
fn from_fields<T: DeserializeOwned>(
    fields: serde_json::Map<String, Value>,
    required: &[&str],
) -> Result<T, ApiError> {
    if let Some(missing) = required.iter().find(|key| !fields.contains_key(**key)) {
        return Err(ApiError::bad_request("is required", missing));
    }
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|error| {
        let field = error
            .path()
            .to_string()
            .split(['.', '['])
            .next()
            .filter(|field| !field.is_empty())
            .map(str::to_owned);
        ApiError::BadRequest(error.into_inner().to_string(), field)
    })
}

/// Reads a request body, at most [`MAX_REQUEST_BYTES`] within [`BODY_READ_TIMEOUT`].
pub(crate) async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let reading = Limited::new(request.into_body(), MAX_REQUEST_BYTES).collect();
    Ok(tokio::time::timeout(BODY_READ_TIMEOUT, reading)
        .await
        .map_err(|_| ApiError::BodyTimeout)?
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("request body unreadable: {e}"), None)
            }
        })?
        .to_bytes())
}

/// Reads a JSON object body (capped), returning its fields and whether it asked for a generated
/// secret (`"generate_secret": true`, which is not a field of the webhook itself).
async fn read_json(
    request: Request<Incoming>,
) -> Result<(serde_json::Map<String, Value>, bool), ApiError> {
    let bytes = read_body(request).await?;
    let mut fields = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return Err(ApiError::BadRequest(
                "body must be a JSON object".into(),
                None,
            ))
        }
        Err(e) => return Err(ApiError::BadRequest(format!("body is not JSON: {e}"), None)),
    };
    let generate = match fields.remove("generate_secret") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "generate_secret must be true or false",
                "generate_secret",
            ))
        }
    };
    Ok((fields, generate))
}

pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, "application/json", body.into()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

fn json_error(status: StatusCode, message: &str, field: Option<&str>) -> Reply {
    let body = serde_json::json!({ "error": message, "field": field });
    with_body(status, "application/json", body.to_string().into())
}

fn text(status: StatusCode, body: &str) -> Reply {
    with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn empty(status: StatusCode) -> Reply {
    with_body(status, "text/plain", Bytes::new())
}

pub(crate) fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: Value) -> serde_json::Map<String, Value> {
        match value {
            Value::Object(fields) => fields,
            _ => serde_json::Map::new(),
        }
    }

    fn refused_field<T: DeserializeOwned>(value: Value, required: &[&str]) -> Option<String> {
        match from_fields::<T>(fields(value), required) {
            Err(ApiError::BadRequest(_, field)) => field,
            _ => None,
        }
    }

    #[test]
    fn required_to_create_are_exactly_the_fields_new_webhook_cannot_default() {
        let complete = serde_json::json!({ "account_id": 1, "url": "https://e.com/" });
        assert!(serde_json::from_value::<NewWebhook>(complete.clone()).is_ok());
        for key in REQUIRED_TO_CREATE {
            let mut without = fields(complete.clone());
            without.remove(key);
            assert!(
                serde_json::from_value::<NewWebhook>(Value::Object(without.clone())).is_err(),
                "{key} has a default"
            );
            assert_eq!(
                refused_field::<NewWebhook>(Value::Object(without), &REQUIRED_TO_CREATE).as_deref(),
                Some(key)
            );
        }
    }

    #[test]
    fn refused_fields_are_named_by_their_path() {
        let cases = [
            (
                serde_json::json!({ "account_id": "1", "url": "x" }),
                "account_id",
            ),
            (
                serde_json::json!({ "account_id": 1, "url": "x", "events": [1] }),
                "events",
            ),
            (
                serde_json::json!({ "account_id": 1, "url": "x", "evnets": [] }),
                "evnets",
            ),
            (
                serde_json::json!({ "account_id": 1, "url": "x", "inbox_id": -1 }),
                "inbox_id",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(
                refused_field::<NewWebhook>(body.clone(), &REQUIRED_TO_CREATE).as_deref(),
                Some(field),
                "{body}"
            );
        }
        let patch = serde_json::json!({ "enabled": "yes" });
        assert_eq!(
            refused_field::<WebhookPatch>(patch, &[]).as_deref(),
            Some("enabled")
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_credentials() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn failed_accepts_back_off_doubling_to_a_cap_and_start_over_after_a_success() {
        let error = std::io::Error::from_raw_os_error(24);
        let mut failures = AcceptFailures::default();
        let pauses: Vec<Duration> = (0..8).map(|_| failures.failed(&error)).collect();
        let millis: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        failures.recovered();
        assert_eq!(failures.failed(&error), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn the_busy_reply_is_one_complete_response() {
        let text = std::str::from_utf8(BUSY_REPLY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }

    #[test]
    fn query_params_are_found_by_exact_name() {
        assert_eq!(query_param("account_id=7&limit=3", "limit"), Some("3"));
        assert_eq!(query_param("xaccount_id=7", "account_id"), None);
        assert_eq!(query_param("", "account_id"), None);
    }
}
